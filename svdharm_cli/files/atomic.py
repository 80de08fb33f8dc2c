"""Outputs appear whole or not at all.

Every file svdharm creates is first written to a hidden temporary name in the destination
folder and then renamed into place (atomic on POSIX filesystems), so no reader ever sees a
half-written file at the final name, and a failure leaves no temporary behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

TEMP_MARKER = ".svdharm-tmp"


_COUNTER = itertools.count()
_MADE: set[Path] = set()


NAME_MAX = 255
"""The longest file name, in bytes, on the file systems svdharm writes to (ext4, XFS, APFS,
NTFS; ZFS and Btrfs alike)."""


def temp_name(final: Path) -> Path:
    """A hidden sibling of ``final``, unique by process and a per-process count (hidden
    files are skipped when walking inputs). When the final name leaves no room for that
    decoration (a name of 230 bytes and more), the temporary takes a short digest of it
    instead: a temporary never needs a longer name than the longest name the folder
    allows."""
    tail = f".{os.getpid()}-{next(_COUNTER)}{TEMP_MARKER}"
    name = f".{final.name}{tail}"
    if len(os.fsencode(name)) > NAME_MAX:
        digest = hashlib.sha256(os.fsencode(final.name)).hexdigest()[:16]
        name = f".{digest}{tail}"
    return final.with_name(name)


def forget_folders() -> None:
    """Forget which folders :func:`make_folder` made (a long-lived cluster worker runs
    task after task, and a folder may have been removed in between)."""
    _MADE.clear()


def make_folder(folder: Path) -> None:
    """``folder.mkdir(parents=True, exist_ok=True)``, once per folder and process."""
    if folder not in _MADE:
        folder.mkdir(parents=True, exist_ok=True)
        _MADE.add(folder)


@contextlib.contextmanager
def atomic_path(final: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes ``final``.

    With ``replace=False`` an existing ``final`` is never overwritten: :class:`FileExistsError`
    is raised instead (used for run logs, which must never destroy an earlier run's).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        yield tmp
        if replace:
            os.replace(tmp, final)
        else:
            os.link(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(final: Path, text: str, *, replace: bool = True) -> None:
    """Write ``text`` (UTF-8) atomically to ``final``."""
    with atomic_path(final, replace=replace) as tmp:
        tmp.write_text(text, encoding="utf-8")


class Staged:
    """Files that belong together (the slices and copies of one volume), written to
    temporaries first; :meth:`commit` renames them all into place."""

    def __init__(self, finals: Sequence[Path]) -> None:
        self.finals = list(finals)
        for final in self.finals:
            make_folder(final.parent)
        self.temps = [temp_name(final) for final in self.finals]
        self.renamed = 0

    def commit(self) -> None:
        for tmp, final in zip(self.temps[self.renamed :], self.finals[self.renamed :]):
            os.replace(tmp, final)
            self.renamed += 1

    def undo(self) -> None:
        """After a failed :meth:`commit`: remove the outputs it had already renamed into
        place and the temporaries it had not, so that none of the set is left."""
        for final in self.finals[: self.renamed]:
            with contextlib.suppress(FileNotFoundError):
                final.unlink()
        self.discard()

    def discard(self) -> None:
        """Remove the temporaries not renamed yet."""
        for tmp in self.temps[self.renamed :]:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def staged(finals: Sequence[Path]) -> Iterator[Staged]:
    """Like :func:`atomic_path` for several files: nothing reaches a final name until
    :meth:`Staged.commit`, and whatever was not committed is removed on the way out."""
    stage = Staged(finals)
    try:
        yield stage
    finally:
        stage.discard()
