"""The commands' tasks and the helpers that collect their payloads, for any executor.

:class:`ProcessInputs` is what harmonize and augment run (:func:`run_inputs` collects its
results in input order); :class:`Rooted` items and :func:`gather` serve fit-reference and
compare, whose tasks (:mod:`svdharm_cli.run.fitting`, :mod:`svdharm_cli.run.sampling`)
take inputs under several roots and report numbered payloads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from svdharm_cli.files.plan import Input
from svdharm_cli.files.safety import (
    Interrupted,
)
from svdharm_cli.run.executors import Accept, Executor, Task, run_tasks
from svdharm_cli.run.results import FAILED, OK, FileResult, Status, Stop
from svdharm_cli.run.worker import JobConfig, process_inputs


@dataclass(frozen=True)
class Rooted:
    """An input under its own root (fit-reference and compare take several
    folders), numbered so that results can be put back in input order. ``root`` is where
    workers read (absolute for a cluster), ``shown`` how the user spelled it: results name
    files that way, wherever they were read."""

    index: int
    root: Path
    inp: Input
    shown: Path

    @property
    def size(self) -> int:
        return self.inp.size

    def results(
        self,
        status: Status,
        reason: str | None = None,
        seconds: float = 0.0,
        error: dict[str, Any] | None = None,
    ) -> list[FileResult]:
        """One result per file of the input."""
        return [
            FileResult(
                str(self.shown / rel), status, reason, (), seconds, self.inp.volume, error=error
            )
            for rel in self.inp.files
        ]

    def lost(self, reason: str) -> list[FileResult]:
        """The results of an input whose workers died every time it was tried."""
        return self.results(FAILED, f"{self.shown / self.inp.files[0]}: {reason}")


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
    :class:`Interrupted` when a signal stopped the run. A payload keeps only its files'
    problems (results that are not ``ok``): what fit-reference and compare report."""
    payloads: dict[int, Numbered] = {}

    def accept(payload: Numbered) -> None:
        for res in payload.results:
            on_result(res)
        # Only the problems are kept: a file that went well needs no record here.
        problems = [r for r in payload.results if r.status != OK]
        payloads[payload.index] = dataclasses.replace(payload, results=problems)  # type: ignore[type-var]

    interrupted = run_tasks(executor, task, items, accept)
    if interrupted is not None:
        raise Interrupted(interrupted)
    return [payloads[i] for i in sorted(payloads)]


@dataclass(frozen=True)
class ProcessInputs:
    """The task of harmonize and augment: :func:`~svdharm_cli.run.worker.process_inputs`; a
    payload is a list of FileResults (one input's, or several small images' at once)."""

    config: JobConfig

    def __call__(
        self, items: Sequence[Input], threads: int, report: Accept, stop: Stop | None = None
    ) -> None:
        process_inputs(items, self.config, threads, report, stop)

    def lost(self, item: Input, reason: str) -> list[FileResult]:
        where = self.config.in_root / item.files[0]
        return [
            FileResult(rel, FAILED, f"{where}: {reason}", volume=item.volume) for rel in item.files
        ]


@dataclass(frozen=True)
class BatchOutcome:
    """The files that finished (in input order), and the signal that stopped the run, if any."""

    results: list[FileResult]
    interrupted: int | None = None


def run_inputs(
    executor: Executor,
    inputs: Iterable[Input],
    config: JobConfig,
    on_result: Callable[[FileResult], None] = lambda r: None,
    sink: Callable[[FileResult], None] | None = None,
) -> BatchOutcome:
    """Process ``inputs`` (any iterable: a walk is read a window ahead), calling
    ``on_result`` here as each file finishes; return the signal that stopped the run, if
    any, and, without a ``sink``, the files that finished in path order. With a ``sink``
    (the run log's :class:`~svdharm_cli.run.runlog.Spill`) each result goes there instead and
    none is kept here.

    Workers report an input only after its outputs are in place, so every output on disk
    after a stop is among the results.
    """
    results: dict[str, FileResult] = {}

    def accept(batch: list[FileResult]) -> None:
        for res in batch:
            if sink is None:
                results[res.path] = res
            else:
                sink(res)
            on_result(res)

    interrupted = run_tasks(executor, ProcessInputs(config), inputs, accept)
    return BatchOutcome([results[r] for r in sorted(results)], interrupted)
