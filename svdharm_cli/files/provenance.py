"""What made each output: the record that decides what ``--skip-existing`` may keep.

Every harmonize and augment run records, for each input it finished, what made its
outputs, in one SQLite database in OUT (``.svdharm-provenance.sqlite``, hidden; SQLite is
in Python's standard library and keeps a lookup cheap and the memory flat at any archive
size). A record, keyed by the input (the input's relative path; a DICOM series' folder and
Series Instance UID digest), is a JSON object:

- ``files``: ``[relative path, size, mtime_ns, sha256]`` of each input file, in slice order
  for a series (its member list);
- ``masks``: the same for each mask file under ``--mask-dir`` (empty without one);
- ``reference``: the SHA-256 of the reference file (None for augment without one);
- ``recipe``: the SHA-256 of the parameters that decide the outputs' bytes (method,
  fractions, copies, coefficient range, per-channel draws, the seed when one was given,
  write options, the pixel limit, per-slice statistics, slice axis and mask mode), with
  ``parameters`` holding them for a reader;
- ``tool_version``, ``outputs`` (paths relative to OUT), ``written`` (UTC time).

An input is kept by ``--skip-existing`` only when all of these still hold: a record exists;
its member list is the input's; the tool version, the reference and the recipe are today's;
every input and mask file has the recorded size and modification time (the quick check,
as rsync and git make it: one ``stat``), or, where they differ, the recorded SHA-256 (the
truth: a file touched but not changed is kept, and its record takes the new time); and
every output exists. Otherwise the input is made again and its log record says why
(:func:`verdict`). The input's identity is taken by the worker that processes it: size
and time, then the hash, then size and time again; a file that changed in between gets no
record, so the next run makes it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_NAME = ".svdharm-provenance.sqlite"
RECORD_VERSION = 1

Identity = tuple[int, int, str]
"""``(size, mtime_ns, sha256)`` of a file."""

_CHUNK = 1 << 20


def quick(path: Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of ``path``, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def identity(path: Path) -> Identity | None:
    """The file's size, time and hash, or None when it changed while it was hashed (still
    being written) or cannot be read."""
    before = quick(path)
    try:
        digest = sha256_of(path)
    except OSError:
        return None
    after = quick(path)
    if before is None or before != after:
        return None
    return before[0], before[1], digest


@dataclass(frozen=True)
class Recipe:
    """What decides a run's outputs besides its inputs (see the module)."""

    tool_version: str
    reference: str | None
    parameters: dict[str, Any]

    @property
    def digest(self) -> str:
        text = json.dumps(self.parameters, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class Ledger:
    """The provenance records of one OUT (see the module). Used by the run's own process
    only (the workers return identities with their results), one transaction per
    :data:`BATCH` records, so a killed run loses at most the records of its last inputs
    (which are then made again)."""

    BATCH = 256

    def __init__(self, out: Path) -> None:
        self.path = out / DB_NAME
        self.problem: str | None = None
        """Why records are no longer written (a full disk, a damaged database): the run
        goes on, and the next ``--skip-existing`` run makes those outputs again."""
        self._pending = 0
        self._lock = threading.RLock()
        self.db: sqlite3.Connection | None = None
        try:
            # The run's threads share it (a device run accepts results in its I/O threads),
            # one at a time: the lock below.
            self.db = sqlite3.connect(
                self.path, isolation_level="DEFERRED", timeout=30, check_same_thread=False
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS units (key TEXT PRIMARY KEY, record TEXT NOT NULL)"
            )
            self.db.commit()
        except sqlite3.Error as exc:
            self._fail(exc)

    def _fail(self, exc: sqlite3.Error) -> None:
        self.problem = f"{self.path}: {exc}"
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
        self.db = None

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            if self.db is None:
                return None
            try:
                row = self.db.execute(
                    "SELECT record FROM units WHERE key = ?", (_text(key),)
                ).fetchone()
            except sqlite3.Error as exc:
                self._fail(exc)
                return None
        if row is None:
            return None
        try:
            record = json.loads(row[0])
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            if self.db is None:
                return
            try:
                self.db.execute(
                    "INSERT OR REPLACE INTO units (key, record) VALUES (?, ?)",
                    (_text(key), json.dumps(record, separators=(",", ":"))),
                )
            except sqlite3.Error as exc:
                self._fail(exc)
                return
            self._pending += 1
            if self._pending >= self.BATCH:
                self.commit()

    def commit(self) -> None:
        with self._lock:
            if self.db is None:
                return
            try:
                self.db.commit()
            except sqlite3.Error as exc:
                self._fail(exc)
            self._pending = 0

    def close(self) -> None:
        with self._lock:
            self.commit()
            if self.db is not None:
                self.db.close()
                self.db = None


def _text(key: str) -> str:
    """An input key as SQLite stores it (a file name that is not UTF-8 keeps its bytes as
    backslash escapes, the same for every run)."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def record(
    files: Sequence[tuple[str, Identity]],
    masks: Sequence[tuple[str, Identity]],
    recipe: Recipe,
    outputs: Sequence[str],
    written: str,
) -> dict[str, Any]:
    """An input's record (see the module)."""
    return {
        "version": RECORD_VERSION,
        "files": [[rel, *ident] for rel, ident in files],
        "masks": [[rel, *ident] for rel, ident in masks],
        "reference": recipe.reference,
        "recipe": recipe.digest,
        "parameters": recipe.parameters,
        "tool_version": recipe.tool_version,
        "outputs": list(outputs),
        "written": written,
    }


def verdict(
    found: dict[str, Any] | None,
    files: Sequence[str],
    in_root: Path,
    out_root: Path,
    recipe: Recipe,
    mask_files: Callable[[str], Path | None] | None,
) -> tuple[str | None, dict[str, Any] | None]:
    """Whether an input's outputs are what the same command would make today.

    Returns ``(None, refreshed)`` when they are (``refreshed`` is the record with new
    modification times for files touched but unchanged, or None when nothing changed), or
    ``(why, None)`` naming the first thing that differs.
    """
    if found is None or found.get("version") != RECORD_VERSION:
        return "no record of what made its outputs", None
    try:
        recorded = [(str(f[0]), int(f[1]), int(f[2]), str(f[3])) for f in found["files"]]
        masks = [(str(f[0]), int(f[1]), int(f[2]), str(f[3])) for f in found["masks"]]
        outputs = [str(o) for o in found["outputs"]]
    except (KeyError, TypeError, ValueError, IndexError):
        return "its record could not be read", None
    if [r[0] for r in recorded] != list(files):
        return "series changed (its files are not those that made the outputs)", None
    if found.get("tool_version") != recipe.tool_version:
        return f"made by svdharm {found.get('tool_version')}", None
    if found.get("reference") != recipe.reference:
        return "reference changed", None
    if found.get("recipe") != recipe.digest:
        return "parameters changed", None
    masked = [] if mask_files is None else [rel for rel in files if mask_files(rel) is not None]
    if [m[0] for m in masks] != masked:
        return "parameters changed (mask files)", None
    touched = False
    for kind, entries in (("input", recorded), ("mask", masks)):
        for i, (rel, size, mtime, digest) in enumerate(entries):
            path = in_root / rel if kind == "input" or mask_files is None else mask_files(rel)
            assert path is not None
            now = quick(path)
            if now == (size, mtime):
                continue
            if now is None:
                return f"{kind} {rel} cannot be read", None
            if now[0] != size:
                return f"{kind} changed ({rel})", None
            try:
                same = sha256_of(path) == digest
            except OSError:
                return f"{kind} {rel} cannot be read", None
            if not same:
                return f"{kind} changed ({rel})", None
            entries[i] = (rel, now[0], now[1], digest)
            touched = True
    for rel in outputs:
        if not (out_root / rel).exists():
            return f"an output is missing ({rel})", None
    if not touched:
        return None, None
    refreshed = dict(found)
    refreshed["files"] = [list(r) for r in recorded]
    refreshed["masks"] = [list(m) for m in masks]
    return None, refreshed
