"""What became of each input file: statuses, results, and the worker's failure boundary.

A :class:`FileResult` is a frozen value that pickles cleanly and goes straight into the run
log; :func:`outcome_of` turns any exception raised while an input was processed into its
files' outcome, so that no bad file ends a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli.errors import ImageError, SkipImage, SvdharmError, exception_name, exception_record
from svdharm_cli.files.plan import Input
from svdharm_cli.files.provenance import Identity


class Status(str, Enum):
    """A file's outcome, as the log and the terminal spell it."""

    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


OK, SKIPPED, FAILED = Status.OK, Status.SKIPPED, Status.FAILED

ALREADY_DONE = "outputs are up to date (--skip-existing)"
"""The reason of a file skipped because an earlier run made its outputs from the same
input, reference and parameters (:mod:`svdharm_cli.files.provenance`)."""

INTERNAL = "internal error"
"""How a failure that no bad input explains (a bug in svdharm) begins its message."""


@dataclass(frozen=True)
class OutputRecord:
    """One written file: its path relative to OUT, and what made it."""

    path: str
    seed: int | None = None
    coefficients: list[list[float | None]] | None = None


@dataclass(frozen=True)
class FileResult:
    """The outcome for one input file; ``volume`` names its series, if it belongs to one."""

    path: str
    status: Status
    reason: str | None = None
    outputs: tuple[OutputRecord, ...] = ()
    seconds: float = 0.0
    volume: str | None = None
    foreground: float | None = None
    error: dict[str, Any] | None = None
    """The exception behind a failure (:func:`~svdharm_cli.errors.exception_record`: type
    and frames, no message), when one was raised; the run log keeps it."""
    fallback: str | None = None
    """Why an input meant for the device was computed on the CPU, when it was."""
    identity: Identity | None = None
    """The input file's size, modification time and SHA-256 as it was read (an OK
    result; None when it changed while it was read): what the provenance record keeps."""
    mask_identity: Identity | None = None
    """The same for its mask file under ``--mask-dir``."""
    redone: str | None = None
    """Why ``--skip-existing`` made this file again (set by the run, not the worker)."""
    kind: str = ""
    """The input's kind (:mod:`svdharm_cli.files.kinds`), when it was read."""
    columns: Mapping[str, str] | None = None
    """Its manifest row's cells, when a table listed it (set by the run)."""


Report = Callable[[list[FileResult]], None]
Stop = Callable[[], bool]


class Stopped(Exception):
    """The run was asked to stop (a cluster run's client got SIGINT or SIGTERM): the input
    is abandoned before its outputs reach their final names."""


def walk_results(
    root: Path, unlisted: Sequence[tuple[str, str]], notes: Sequence[str]
) -> list[FileResult]:
    """What the walk found besides images, as records: a folder that could not be listed
    fails (the run exits 1; its files were never seen), and what was left out for what it
    is (a FIFO, another run's output folder) is a skip whose reason says so."""
    failed = [FileResult(rel, FAILED, f"{root / rel}: {why}") for rel, why in unlisted]
    skipped = [FileResult(n.split(": ", 1)[0], SKIPPED, n) for n in notes]
    return failed + skipped


@dataclass(frozen=True)
class Outcome:
    """What an exception raised while processing an input means for its files."""

    status: Status
    reason: str
    error: dict[str, Any] | None = None


def outcome_of(exc: Exception, item: Input, first: Path) -> Outcome:
    """The input's outcome when processing it raised ``exc`` (this is the worker's
    boundary: every exception becomes the input's result, none ends the batch).

    A skip or a bad file (:class:`SkipImage`, :class:`ImageError`, raised by the formats
    or the checks) keeps its message; a decomposition that did not converge, memory
    exhaustion and OS errors (writing outputs) are named; anything else is a bug in
    svdharm's own code and says so (``internal error``), its type and frames kept in the
    log record's ``error`` so that it stays visible without stopping the batch.
    """
    error = None if isinstance(exc, SvdharmError) else exception_record(exc)
    if isinstance(exc, SkipImage):
        return Outcome(SKIPPED, in_volume(exc.message, item))
    if isinstance(exc, ImageError):
        return Outcome(FAILED, in_volume(exc.message, item), exc.error)
    if isinstance(exc, SvdharmError):
        return Outcome(FAILED, in_volume(exc.message, item))
    if isinstance(exc, np.linalg.LinAlgError):
        message = f"{first}: the decomposition did not converge"
    elif isinstance(exc, MemoryError):
        message = f"{first}: not enough memory to process it"
    elif isinstance(exc, OSError):
        where = exc.filename2 or exc.filename or first  # a failed rename: its destination
        message = f"{where}: {exc.strerror or exception_name(exc)}"
    else:
        message = (
            f"{first}: {INTERNAL} ({exception_name(exc)}), a bug in svdharm; the run log's "
            "record of this file says where it was raised"
        )
    return Outcome(FAILED, in_volume(message, item), error)


def in_volume(message: str, item: Input) -> str:
    """``message`` about a series' file, saying that the whole series was left unwritten."""
    if item.volume is None:
        return message
    return f"{message} ({item.volume}: none of its {len(item.files)} files was written)"
