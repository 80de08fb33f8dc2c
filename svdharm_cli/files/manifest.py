"""Inputs as a table (``--manifest TABLE``): a CSV or TSV file with a header, one row per
image file, instead of (or beside) folders.

Columns: ``path`` (required: the file, relative to the table's folder, or absolute; a DICOM
series is its files, one row each), and optionally ``mask`` (a mask file, the same way),
``site`` (the group ``compare`` puts the row in) and any others (labels, covariates, IDs),
which the run log carries in each file's record. Column names are matched as written,
``path``/``mask``/``site`` also in other letter cases.

The table's *root* is its own folder when every listed file lies under it, else the
deepest folder that holds them all: outputs are written at each file's path relative to
the root, as a folder run writes them relative to IN. A table that cannot be read, has no
``path`` column, an empty path or the same file twice is a usage error (nothing is
written); a listed file that is missing or is no image fails alone in the run.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from svdharm_cli.errors import UsageError
from svdharm_cli.files.atomic import atomic_path
from svdharm_cli.files.formats import handler_for
from svdharm_cli.files.plan import Folder

MAX_BYTES = 256 * 2**20
"""A larger table is refused (about a million rows of long paths)."""


@dataclass(frozen=True)
class Row:
    """One row: its file (absolute), its path relative to the table's root (POSIX), its
    mask file (absolute) and every column as written."""

    file: Path
    rel: str
    mask: Path | None
    values: Mapping[str, str]

    @property
    def site(self) -> str | None:
        return _pick(self.values, "site") or None


@dataclass(frozen=True)
class Manifest:
    """A table of inputs (see the module)."""

    source: Path
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    root: Path
    delimiter: str = ","

    @cached_property
    def by_rel(self) -> dict[str, Row]:
        """The rows by their relative paths."""
        return {row.rel: row for row in self.rows}

    @property
    def masks(self) -> dict[str, Path]:
        """Each row's mask file by relative path (rows with one)."""
        return {row.rel: row.mask for row in self.rows if row.mask is not None}

    def column(self, name: str) -> str:
        """The column called ``name`` (as :func:`_column` matches it); a usage error naming
        the table's columns when there is none."""
        column = _column(self.columns, name)
        if column is not None:
            return column
        raise UsageError(
            f"{self.source}: no column {name!r} (its columns: {', '.join(self.columns)})"
        )

    def folders(self) -> Iterator[Folder]:
        """The rows as a walk gives folders (:func:`svdharm_cli.files.plan.walk`): per
        folder, in path order, the images (DICOM sniffed, so that a series' rows become
        one input) and, as failures, the listed files that are missing or no image."""
        groups: dict[str, list[Row]] = {}
        for row in sorted(self.rows, key=lambda r: r.rel):
            groups.setdefault(row.rel.rpartition("/")[0], []).append(row)
        for _, rows in sorted(groups.items()):
            images, dicom, unlisted = [], set(), []
            for row in rows:
                if not row.file.is_file():
                    unlisted.append((row.rel, "does not exist (listed in the manifest)"))
                    continue
                handler = handler_for(row.file)
                if handler is None:
                    why = "not a PNG, JPEG, TIFF, NIfTI or DICOM file (listed in the manifest)"
                    unlisted.append((row.rel, why))
                    continue
                images.append(row.rel)
                if handler.name == "dicom":
                    dicom.add(row.rel)
            yield Folder(images, [], frozenset(dicom), unlisted, [])


def write_output_table(manifest: Manifest, records: Iterable[dict[str, Any]], target: Path) -> int:
    """The table of what a run made, at ``target`` (in OUT, beside the log): a row per
    output, the input row's cells with ``path`` now the output (relative to OUT, where the
    table is, so that the next command reads it as a manifest), ``input`` the input file
    (absolute), ``mask`` made absolute, and ``copy`` (augment's copy index). Inputs that
    made nothing (failed, skipped) have no row: the log says why. Returns the row count."""
    columns = [c for c in manifest.columns if c not in ("input", "copy")]
    header = columns + ["input", "copy"]
    rows = []
    for record in records:
        row = manifest.by_rel.get(record.get("path", ""))
        if row is None or record.get("status") != "ok":
            continue
        for copy, output in enumerate(record.get("outputs") or []):
            values = dict(row.values)
            values[manifest.column("path")] = output["path"]
            if row.mask is not None:
                values[manifest.column("mask")] = str(row.mask)
            values.update(input=str(row.file), copy=str(copy))
            rows.append([values.get(c, "") for c in header])
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=manifest.delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)


def check_listed(manifest: Manifest, out: Path) -> None:
    """Refuse an OUT that holds a listed file (an output could overwrite an input)."""
    rout = out.resolve()
    for row in manifest.rows:
        if rout in row.file.parents:
            raise UsageError(
                f"{row.file} (listed in {manifest.source}) lies inside output {out}; outputs "
                "could overwrite inputs"
            )


def read_manifest(path: Path) -> Manifest:
    """Read and check a table (see the module); :class:`UsageError` says what is wrong."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UsageError(f"manifest {path}: larger than {MAX_BYTES // 2**20} MiB")
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"manifest {path}: cannot read it ({exc})") from exc
    first = text.split("\n", 1)[0]
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") or "\t" in first else ","
    try:
        records = list(csv.reader(text.splitlines(), delimiter=delimiter, strict=True))
    except csv.Error as exc:
        raise UsageError(f"manifest {path}: not a valid table ({exc})") from exc
    if not records or not any(records[0]):
        raise UsageError(f"manifest {path}: empty; it needs a header with a 'path' column")
    columns = tuple(c.strip() for c in records[0])
    if _column(columns, "path") is None:
        raise UsageError(
            f"manifest {path}: no 'path' column (its columns: {', '.join(columns)})",
            hint="the first line names the columns: path,site,diagnosis",
        )
    if len(set(columns)) != len(columns):
        raise UsageError(f"manifest {path}: a column name repeats")
    folder = path.resolve().parent
    listed: list[tuple[Path, Path | None, dict[str, str]]] = []
    seen: dict[Path, int] = {}
    for number, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue  # a blank line
        if len(record) != len(columns):
            raise UsageError(
                f"manifest {path}, line {number}: {len(record)} cells for {len(columns)} columns"
            )
        values = dict(zip(columns, (cell.strip() for cell in record)))
        given = _pick(values, "path")
        if not given:
            raise UsageError(f"manifest {path}, line {number}: empty path")
        file = Path(os.path.normpath(folder / given))
        if file in seen:
            raise UsageError(
                f"manifest {path}, line {number}: {given} is listed already (line {seen[file]})"
            )
        seen[file] = number
        mask = _pick(values, "mask")
        listed.append((file, Path(os.path.normpath(folder / mask)) if mask else None, values))
    if not listed:
        raise UsageError(f"manifest {path}: no rows")
    root = _root(folder, [file for file, _, _ in listed])
    rows = tuple(
        Row(file, file.relative_to(root).as_posix(), mask, values) for file, mask, values in listed
    )
    return Manifest(path, columns, rows, root, delimiter)


def _root(folder: Path, files: list[Path]) -> Path:
    """The table's folder when it holds every file, else the deepest common folder."""
    if all(folder in file.parents for file in files):
        return folder
    return Path(os.path.commonpath([str(file.parent) for file in files]))


def _column(columns: Iterable[str], name: str) -> str | None:
    """The column called ``name``: exactly, else in another letter case."""
    columns = list(columns)
    if name in columns:
        return name
    return next((c for c in columns if c.lower() == name.lower()), None)


def _pick(values: Mapping[str, str], name: str) -> str:
    """The value of the column ``name`` (as :func:`_column` finds it), or ``""``."""
    column = _column(values, name)
    return "" if column is None else values[column]
