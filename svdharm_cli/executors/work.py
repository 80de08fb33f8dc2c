"""The commands' tasks and the helpers that collect their payloads, for any executor.

:class:`ProcessUnits` is what harmonize and augment run (:func:`run_units` collects its
results in input order); :class:`Rooted` items and :func:`gather` serve fit-reference and
compare, whose tasks (:mod:`svdharm_cli.fitting`, :mod:`svdharm_cli.compare`) take units
under several roots and report numbered payloads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from svdharm_cli.executors import Accept, Executor, Task, run_tasks
from svdharm_cli.plan import Unit
from svdharm_cli.safety import (
    Interrupted,
)
from svdharm_cli.worker import FAILED, FileResult, JobConfig, Stop, process_units


@dataclass(frozen=True)
class Rooted:
    """A unit of work under its own root (fit-reference and compare take several
    folders), numbered so that results can be put back in input order. ``root`` is where
    workers read (absolute for a cluster), ``shown`` how the user spelled it: results name
    files that way, wherever they were read."""

    index: int
    root: Path
    unit: Unit
    shown: Path

    @property
    def size(self) -> int:
        return self.unit.size

    def results(
        self,
        status: str,
        reason: str | None = None,
        seconds: float = 0.0,
        error: dict[str, Any] | None = None,
    ) -> list[FileResult]:
        """One result per file of the unit."""
        return [
            FileResult(
                str(self.shown / rel), status, reason, (), seconds, self.unit.volume, error=error
            )
            for rel in self.unit.files
        ]

    def lost(self, reason: str) -> list[FileResult]:
        """The results of a unit whose workers died every time it was tried."""
        return self.results(FAILED, f"{self.shown / self.unit.files[0]}: {reason}")


class Numbered(Protocol):
    """A payload that says which :class:`Rooted` item it is for, and its files' results."""

    @property
    def index(self) -> int: ...

    @property
    def results(self) -> list[FileResult]: ...


def gather(
    executor: Executor,
    task: Task,
    items: Sequence[Rooted],
    on_result: Callable[[FileResult], None],
) -> list[Any]:
    """Run ``task`` on numbered items; return the payloads in input order (whatever order
    they arrived in), passing each file's result to ``on_result`` as it comes. Raises
    :class:`Interrupted` when a signal stopped the run."""
    payloads: dict[int, Numbered] = {}

    def accept(payload: Numbered) -> None:
        payloads[payload.index] = payload
        for res in payload.results:
            on_result(res)

    interrupted = run_tasks(executor, task, items, accept)
    if interrupted is not None:
        raise Interrupted(interrupted)
    return [payloads[i] for i in sorted(payloads)]


@dataclass(frozen=True)
class ProcessUnits:
    """The task of harmonize and augment: :func:`~svdharm_cli.worker.process_units`; a
    payload is a list of FileResults (one unit's, or several small images' at once)."""

    config: JobConfig

    def __call__(
        self, items: Sequence[Unit], threads: int, report: Accept, stop: Stop | None = None
    ) -> None:
        process_units(items, self.config, threads, report, stop)

    def lost(self, item: Unit, reason: str) -> list[FileResult]:
        where = self.config.in_root / item.files[0]
        return [
            FileResult(rel, FAILED, f"{where}: {reason}", volume=item.volume) for rel in item.files
        ]


@dataclass(frozen=True)
class BatchOutcome:
    """The files that finished (in input order), and the signal that stopped the run, if any."""

    results: list[FileResult]
    interrupted: int | None = None


def run_units(
    executor: Executor,
    units: Sequence[Unit],
    config: JobConfig,
    on_result: Callable[[FileResult], None] = lambda r: None,
) -> BatchOutcome:
    """Process ``units``, calling ``on_result`` here as each file finishes; return the
    files that finished, in input order, and the signal that stopped the run, if any.

    Workers report a unit only after its outputs are in place, so every output on disk
    after a stop is among the results.
    """
    results: dict[str, FileResult] = {}

    def accept(batch: list[FileResult]) -> None:
        for res in batch:
            results[res.path] = res
            on_result(res)

    interrupted = run_tasks(executor, ProcessUnits(config), units, accept)
    order = sorted(rel for unit in units for rel in unit.files)
    return BatchOutcome([results[r] for r in order if r in results], interrupted)
