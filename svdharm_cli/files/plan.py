"""From an input tree to inputs: which files, grouped how, written where.

An input is one file (a 2-D image, a multi-frame DICOM, a NIfTI file, a TIFF stack)
or one DICOM *series*: the single-frame DICOM files of one folder that share a Series
Instance UID, have distinct SOP Instance UIDs and one slice size (files that repeat an
instance, such as one image saved in several encodings, or that differ in size, are taken
one by one), in slice order (by Image Position (Patient) along the slice normal when every
file has a position and orientation, else by Instance Number when every file has one, else
by path). An input is a volume: its slices' statistics are pooled and one coefficient set is
drawn per output copy. Header values (the Series Instance UID) are used to group and to key
seeds, and are never put in a label, a message or the log.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svdharm_cli.errors import UsageError
from svdharm_cli.files.atomic import TEMP_MARKER
from svdharm_cli.files.formats import handler_by_name, handler_for
from svdharm_cli.files.safety import LOCK_NAME


@dataclass(frozen=True)
class Input:
    """One input: the unit of work, what is processed together.

    Attributes
    ----------
    files
        Relative paths (POSIX form) under the input root, in slice order for a series.
    key
        What output seeds derive from (METHOD.md section 7): the file's relative path, or
        for a series its folder and a digest of its Series Instance UID.
    volume
        How the log names the volume: ``folder/[series N]`` for a series, else None.
    size
        The files' total size in bytes: how tasks are sized.
    """

    files: tuple[str, ...]
    key: str
    volume: str | None = None
    size: int = 0


def check_roots(inp: Path, out: Path) -> None:
    """Refuse runs that could overwrite inputs: OUT equal to IN, or IN inside OUT."""
    if not inp.exists():
        raise UsageError(f"input {inp} does not exist")
    rin, rout = inp.resolve(), out.resolve()
    if rin == rout:
        raise UsageError(f"output {out} is the input itself; choose another folder")
    if rout in rin.parents:
        raise UsageError(f"input {inp} lies inside output {out}; outputs could overwrite inputs")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder")


@dataclass(frozen=True)
class Folder:
    """What one folder of a walk holds: its images and the files no format takes (ignored;
    named in the run log and counted in the summary), relative POSIX paths, sorted; which
    images are DICOM (None when not sniffed: a single file given directly); the folders
    that could not be listed (``(relative path/, reason)``: failures) and what was left out
    for what it is (notes: FIFOs, sockets, devices, another run's output folder)."""

    images: list[str]
    ignored: list[str]
    dicom: frozenset[str] | None = None
    unlisted: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Found(Folder):
    """What a whole walk found (every folder's :class:`Folder` together), under ``root``."""

    root: Path = field(kw_only=True)


@dataclass(frozen=True)
class Listing:
    """One folder as the walk lists it: its regular files (and links to them), what is
    there but is no regular file, and why it could not be listed (None when it could)."""

    path: str
    prefix: str
    files: list[str]
    special: list[tuple[str, str]] = field(default_factory=list)
    problem: str | None = None
    left_out: str | None = None
    """Why this folder and its subfolders were left out (another svdharm run's output
    folder), when they were; its files are then not listed."""


def walk(
    inp: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    skip_dirs: Sequence[Path] = (),
    include_hidden: bool = False,
) -> Iterator[Folder]:
    """The images under ``inp``, one folder at a time, in walk order (a folder, then its
    subfolders by name): memory is bounded by the largest folder, not by the tree.

    A file given directly is taken as it is. In a folder: hidden files and folders (names
    starting with ``.``) are skipped unless ``include_hidden``; symbolic links to folders
    are not followed (so link loops cannot hang a run); files no format recognizes (by
    extension or first bytes) are ignored; globs are matched against the relative path
    (``*`` also matches ``/``), and a file is taken when it matches some ``include`` (or
    none are given) and no ``exclude``.

    Only regular files (and links to them) are opened: a FIFO, a socket or a device is left
    out with a note (opening a FIFO to sniff it would wait for a writer forever), as is a
    subfolder that holds another svdharm run's output (its lock or run logs: a nightly
    ``harmonize in in/harmonized`` must not feed tomorrow's ``augment in ...``). A folder
    that cannot be listed is reported in ``unlisted`` (a failure, never silence).
    """
    if inp.is_file():
        yield Folder([inp.name], [])
        return
    for listing in _folders(inp, skip_dirs, include_hidden):
        dirpath, prefix = listing.path, listing.prefix
        found, ignored, dicom = [], [], []
        notes = [
            _note(prefix + name, what)
            for name, what in listing.special
            if _candidate(prefix, name, include, exclude, include_hidden) is not None
        ]
        if listing.left_out is not None:
            notes.append(_note(prefix, listing.left_out))
        unlisted = [] if listing.problem is None else [(prefix or "./", listing.problem)]
        for name in sorted(listing.files):
            rel = _candidate(prefix, name, include, exclude, include_hidden)
            if rel is None:
                continue
            handler = handler_by_name(name) or handler_for(Path(dirpath, name))
            if handler is None:
                ignored.append(rel)
                continue
            found.append(rel)
            if handler.name == "dicom":
                dicom.append(rel)
        if found or ignored or notes or unlisted:
            yield Folder(found, ignored, frozenset(dicom), unlisted, notes)


def _note(rel: str, what: str) -> str:
    return f"{rel}: {what}; left out"


def _candidate(
    prefix: str, name: str, include: Sequence[str], exclude: Sequence[str], hidden: bool
) -> str | None:
    """The relative path of a file the walk considers (names and globs only), or None."""
    if name.startswith(".") and not hidden:
        return None
    if name.endswith(TEMP_MARKER) or name == LOCK_NAME:
        return None
    rel = prefix + name
    if include and not any(fnmatch.fnmatch(rel, g) for g in include):
        return None
    if any(fnmatch.fnmatch(rel, g) for g in exclude):
        return None
    return rel


def count_candidates(
    inp: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    skip_dirs: Sequence[Path] = (),
    include_hidden: bool = False,
) -> int:
    """How many files :func:`walk` will consider (by names and globs; nothing is opened):
    the progress bar's total before the walk is done. It counts the files that will turn
    out not to be images too, so it is an upper bound of the images."""
    if inp.is_file():
        return 1
    return sum(
        _candidate(listing.prefix, name, include, exclude, include_hidden) is not None
        for listing in _folders(inp, skip_dirs, include_hidden)
        for name in listing.files
    )


RUN_LOG_PREFIXES = ("svdharm-harmonize-", "svdharm-augment-")
"""How the run logs of harmonize and augment are named in their OUT (:mod:`runlog`)."""


def holds_a_run(names: Collection[str]) -> bool:
    """Whether a folder with these entries is another svdharm run's output folder."""
    return LOCK_NAME in names or any(
        n.startswith(RUN_LOG_PREFIXES) and n.endswith(".json") for n in names
    )


def _folders(inp: Path, skip_dirs: Sequence[Path], include_hidden: bool) -> Iterator[Listing]:
    """Every folder the walks visit, depth first, subfolders by name: hidden folders
    (unless ``include_hidden``), ``skip_dirs`` and other runs' output folders left out,
    links to folders not followed. One ``scandir`` per folder and no ``stat`` for a regular
    file (the folder's entry types say what it is), so an archive of 100,000 files is
    listed without a read of any file."""
    skip = {os.path.realpath(p) for p in skip_dirs}
    stack = [(os.fspath(inp), "")]
    while stack:
        path, prefix = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            yield Listing(path, prefix, [], problem=_listing_problem(exc))
            continue
        if prefix and holds_a_run([e.name for e in entries]):  # IN itself is never left out
            why = "another svdharm run's output folder (its lock or logs)"
            yield Listing(path, prefix, [], left_out=why)
            continue
        files: list[str] = []
        special: list[tuple[str, str]] = []
        subfolders: list[str] = []
        for entry in entries:
            kind = _kind(entry)
            if kind == "folder":
                subfolders.append(entry.name)
            elif kind == "file":
                files.append(entry.name)
            elif kind is not None:
                special.append((entry.name, kind))
        below = []
        for name in sorted(subfolders):
            if not include_hidden and name.startswith("."):
                continue
            full = os.path.join(path, name)
            if os.path.realpath(full) in skip:
                continue
            below.append((full, f"{prefix}{name}/"))
        yield Listing(path, prefix, files, special)
        stack.extend(reversed(below))


def _kind(entry: os.DirEntry[str]) -> str | None:
    """``file`` (a regular file, a link to one, or a link to nothing, which then fails
    alone with its message when it is read), ``folder`` (not a link), None for a link to a
    folder (never followed), or what the entry is instead (a FIFO, a socket, a device)."""
    try:
        if entry.is_dir(follow_symlinks=False):
            return "folder"
        if entry.is_file():
            return "file"
        if entry.is_symlink():
            if entry.is_dir():
                return None
            if not os.path.exists(entry.path):
                return "file"
        mode = entry.stat().st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    return "not a regular file"


def _listing_problem(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    return f"the folder could not be listed ({reason}); its files were not processed"


def discover(
    inp: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    skip_dirs: Sequence[Path] = (),
    include_hidden: bool = False,
) -> Found:
    """The input root, the images under it and the files ignored there, all at once
    (:func:`walk`'s folders gathered; for trees of a size that fits in memory)."""
    root = inp.parent if inp.is_file() else inp
    if inp.is_file():
        return Found([inp.name], [], root=root)
    found: list[str] = []
    ignored: list[str] = []
    dicom: set[str] = set()
    unlisted: list[tuple[str, str]] = []
    notes: list[str] = []
    for folder in walk(
        inp, include=include, exclude=exclude, skip_dirs=skip_dirs, include_hidden=include_hidden
    ):
        found.extend(folder.images)
        ignored.extend(folder.ignored)
        dicom.update(folder.dicom or ())
        unlisted.extend(folder.unlisted)
        notes.extend(folder.notes)
    return Found(sorted(found), sorted(ignored), frozenset(dicom), unlisted, notes, root=root)


def plan_inputs(
    root: Path, rels: Sequence[str], dicom: Collection[str] | None = None
) -> list[Input]:
    """Group ``rels`` into inputs: DICOM series of several files become one input each, in
    slice order; every other file is an input of its own. Units come in path order (a series
    at its first file's place). ``dicom`` names the DICOM files among ``rels`` when the
    walk already knows (:attr:`Found.dicom`), so that no file is sniffed twice."""
    series: dict[tuple[str, str], list[tuple[str, Any]]] = {}
    singles: list[str] = []
    for rel in rels:
        if dicom is None:
            header = _series_header(root / rel)
        else:
            header = _series_header(root / rel, known_dicom=True) if rel in dicom else None
        if header is None:
            singles.append(rel)
        else:
            folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
            series.setdefault((folder, str(header.SeriesInstanceUID)), []).append((rel, header))
    top = os.fspath(root)
    inputs = [Input((rel,), rel, size=_size(os.path.join(top, rel))) for rel in singles]
    numbering: dict[str, int] = {}
    for (folder, uid), members in sorted(series.items(), key=lambda kv: min(r for r, _ in kv[1])):
        if not _is_series(members):
            inputs.extend(Input((rel,), rel) for rel, _ in members)
            continue
        numbering[folder] = numbering.get(folder, 0) + 1
        digest = hashlib.sha256(uid.encode()).hexdigest()[:32]
        label = (
            f"{folder}/[series {numbering[folder]}]" if folder else f"[series {numbering[folder]}]"
        )
        files = tuple(rel for rel, _ in _slice_order(members))
        size = sum(_size(os.path.join(top, rel)) for rel in files)
        inputs.append(Input(files, f"{folder}\x00series\x00{digest}", label, size))
    return sorted(inputs, key=lambda u: min(u.files))


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def output_paths(rel: str, method_harmonize: bool, copies: int) -> list[str]:
    """Relative output paths for one input: the same path, or ``<stem>_aug<j><suffix>``
    (``.nii.gz`` kept whole)."""
    if method_harmonize:
        return [rel]
    p = Path(rel)
    name = p.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else p.suffix
    stem = name[: len(name) - len(suffix)] if suffix else name
    return [(p.parent / f"{stem}_aug{j}{suffix}").as_posix() for j in range(copies)]


def _series_header(path: Path, known_dicom: bool = False) -> Any | None:
    """The grouping attributes of a single-frame DICOM image file, or None for anything
    else; read inside the format layer's boundary, so a damaged header never stops the
    plan (that file is read, and reported, on its own)."""
    from svdharm_cli.files.formats.dicom import DICOM, series_header

    if not known_dicom and handler_for(path) is not DICOM:
        return None
    return series_header(path)


def _is_series(members: list[tuple[str, Any]]) -> bool:
    """Several distinct instances of one slice size."""
    instances = {str(ds.get("SOPInstanceUID", rel)) for rel, ds in members}
    sizes = {(str(ds.get("Rows")), str(ds.get("Columns"))) for _, ds in members}
    return len(members) > 1 and len(instances) == len(members) and len(sizes) == 1


def _slice_order(members: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Sort by position along the slice normal, else Instance Number, else path."""
    by_path = sorted(members, key=lambda m: m[0])
    try:
        orientation = [float(v) for v in by_path[0][1].ImageOrientationPatient]
        row, col = orientation[:3], orientation[3:6]
        normal = (
            row[1] * col[2] - row[2] * col[1],
            row[2] * col[0] - row[0] * col[2],
            row[0] * col[1] - row[1] * col[0],
        )
        positions = {
            rel: sum(float(p) * n for p, n in zip(ds.ImagePositionPatient, normal))
            for rel, ds in by_path
        }
        return sorted(by_path, key=lambda m: (positions[m[0]], m[0]))
    except (AttributeError, TypeError, ValueError, IndexError):
        pass
    try:
        numbers = {rel: int(ds.InstanceNumber) for rel, ds in by_path}
        return sorted(by_path, key=lambda m: (numbers[m[0]], m[0]))
    except (AttributeError, TypeError, ValueError):
        return by_path
