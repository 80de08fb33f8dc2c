"""Where tasks run: the executor seam, and the local process pool behind it.

A command's work is a list of *items* (units of work, :class:`~svdharm_cli.plan.Unit`, or
a unit with its root) and one picklable :class:`Task` that turns an item into a *payload*
(for harmonize and augment, the unit's list of :class:`~svdharm_cli.worker.FileResult`).
An :class:`Executor` runs the task on every item and hands each payload to ``accept`` in
this process as it arrives; it never knows what the task does. Two implementations:

- :class:`LocalPool` (the default): ``workers`` processes on this machine (spawned, so no
  lock is inherited from the parent's threads), or this process alone for one worker;
- :class:`~svdharm_cli.cluster.DaskExecutor`: the workers of a Dask cluster
  (``--scheduler``), in :mod:`svdharm_cli.cluster`.

Small items travel in chunks (sized by bytes, :func:`take_chunk`); each task is told how
many threads to use. :func:`run_tasks` turns SIGINT/SIGTERM into a clean end: nothing more
is dispatched, what finished is collected, and the signal is returned.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from svdharm_cli.errors import UsageError
from svdharm_cli.formats import quiet_libraries
from svdharm_cli.plan import Unit
from svdharm_cli.safety import (
    Interrupted,
    ignore_signals_in_worker,
    interruptible,
    signals_deferred,
)
from svdharm_cli.worker import FAILED, FileResult, JobConfig, Stop, process_units

Accept = Callable[[Any], None]


class Sized(Protocol):
    """An item of work: its files' total size in bytes decides how items are chunked."""

    @property
    def size(self) -> int: ...


class Task(Protocol):
    """What runs on a worker: picklable, the same object for every chunk of one run."""

    def __call__(
        self, items: Sequence[Any], threads: int, report: Accept, stop: Stop | None = None
    ) -> None:
        """Process a chunk of items with ``threads`` threads, passing each payload to
        ``report`` once it is final; ask ``stop`` before each item, and report nothing
        more once it says the run is over. (A chunk lets a task share work between small
        items: harmonize and augment transform small images together.)"""

    def lost(self, item: Any, reason: str) -> Any:
        """The payload of an item whose worker died every time it was tried."""


class Executor(Protocol):
    """Runs a task on items; :class:`LocalPool` and the Dask executor implement it.

    ``remote`` executors run on other machines: paths they are given must be absolute
    (their working folder is not the client's).
    """

    remote: bool
    warnings: list[str]

    def worker_path(self, path: Path) -> Path:
        """``path`` as the workers must be given it (absolute for a cluster's workers, whose
        working folders are not this process's)."""

    def check(self, readable: Sequence[Path], writable: Sequence[Path]) -> None:
        """Refuse with a :class:`~svdharm_cli.errors.UsageError` unless the workers can
        read ``readable`` and write into ``writable`` (folders, at these paths)."""

    def execute(self, task: Task, items: Sequence[Sized], accept: Accept) -> None:
        """Run ``task`` on every item, calling ``accept`` here with each payload as it
        arrives. On SIGINT/SIGTERM (:class:`Interrupted` or KeyboardInterrupt) it stops
        dispatching, makes sure no task is left running, accepts the payloads of those that
        finished, and re-raises."""

    def describe(self) -> dict[str, Any]:
        """What ran the tasks, for the run log (kind, address, worker count)."""


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


MAX_CHUNK = 64
CHUNK_BYTES = 256 * 1024
"""Items whose files add up to less than this travel together in one task (small files);
a larger item is a task of its own."""


def take_chunk(pending: list[Any], slots: int) -> list[Any]:
    """Pop the next task's items from the end of ``pending``: one item, or several small
    ones (up to :data:`CHUNK_BYTES` and 64 items, and no more than an eighth of each
    slot's share while many remain), since dispatching a task costs about as much as
    processing a small image."""
    limit = max(1, min(MAX_CHUNK, len(pending) // (slots * 8)))
    chunk = [pending.pop()]
    total = chunk[0].size
    while pending and len(chunk) < limit and total + pending[-1].size <= CHUNK_BYTES:
        total += pending[-1].size
        chunk.append(pending.pop())
    return chunk


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


class OneByOne:
    """A task whose items are processed one at a time, by its ``one`` method."""

    def __call__(
        self, items: Sequence[Any], threads: int, report: Accept, stop: Stop | None = None
    ) -> None:
        for item in items:
            if stop is not None and stop():
                return
            self.one(item, threads, report, stop)

    def one(self, item: Any, threads: int, report: Accept, stop: Stop | None = None) -> None:
        raise NotImplementedError


# -- what harmonize and augment run ------------------------------------------------------


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


def run_tasks(executor: Executor, task: Task, items: Sequence[Sized], accept: Accept) -> int | None:
    """Run ``task`` on ``items``; return the signal that stopped the run early, or None.

    SIGINT and SIGTERM are caught for the duration (:func:`interruptible`); the executor
    has made sure that no task is still running when this returns.
    """
    try:
        with interruptible():
            executor.execute(task, items, accept)
    except Interrupted as exc:
        return exc.signum
    except KeyboardInterrupt:
        return signal.SIGINT
    return None


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


# -- the local pool ----------------------------------------------------------------------

_WORKER: dict[str, Any] = {}
_BLAS: dict[str, Any] = {}


def set_blas_threads(n: int) -> None:
    """Limit BLAS threads in this process, changing the limit only when it differs."""
    if _BLAS.get("threads") == n:
        return
    from threadpoolctl import ThreadpoolController

    controller = _BLAS.setdefault("controller", ThreadpoolController())
    controller.limit(limits=n, user_api="blas")
    _BLAS["threads"] = n


def _init_worker(task: Task, results: Any) -> None:
    ignore_signals_in_worker()
    quiet_libraries()
    _WORKER.update(task=task, results=results)


def _worker_task(items: list[Any], threads: int) -> int:
    """Run the task on ``items``; each payload goes to the parent through the result
    queue the moment it is final (not when the whole chunk ends)."""
    set_blas_threads(threads)
    _WORKER["task"](items, threads, _WORKER["results"].put)
    return len(items)


@contextlib.contextmanager
def open_executor(
    workers: int, scheduler: str | None = None, scheduler_file: Path | None = None
) -> Iterator[Executor]:
    """The local pool of ``workers`` processes, or the Dask cluster whose scheduler is at
    ``scheduler`` or named in ``scheduler_file`` (connected here, closed on the way out)."""
    if scheduler is None and scheduler_file is None:
        yield LocalPool(workers)
        return
    if scheduler is not None and scheduler_file is not None:
        raise UsageError("use either --scheduler or --scheduler-file")
    from svdharm_cli.cluster import DaskExecutor

    with DaskExecutor.connect(scheduler, scheduler_file) as executor:
        yield executor


class LocalPool:
    """``workers`` processes on this machine; one worker runs everything in this process.

    Each task is told how many threads to use: one while every worker is busy (two
    processes each letting BLAS use every core oversubscribe the machine badly), and the
    spare cores' share once fewer items than workers remain (a volume then spreads its
    slices over them). A run starts in this process and starts the workers only once
    the rest of the batch looks longer than :data:`SOLO_SECONDS`. On a stop the workers are
    ended at once (they hold signals back while they rename outputs and report them) and
    what they reported is collected.
    """

    remote = False

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.warnings: list[str] = []
        self.solo = solo_seconds()
        self.started = 0

    def worker_path(self, path: Path) -> Path:
        return path

    def check(self, readable: Sequence[Path], writable: Sequence[Path]) -> None:
        """Nothing to check: the workers are this machine's processes."""

    def describe(self) -> dict[str, Any]:
        """Kind, workers asked for, and worker processes started (none for a run that
        finished in this process)."""
        return {"kind": "local", "workers": self.workers, "processes": self.started}

    def execute(self, task: Task, items: Sequence[Sized], accept: Accept) -> None:
        cpus = available_cpus()
        workers = max(1, min(self.workers, len(items)))
        pending = list(reversed(items))
        # Chunks in this process first, as a worker would get them (a volume's slices
        # share the machine's cores), for as long as the rest looks short: see SOLO_SECONDS.
        total = sum(item.size for item in items) or 1
        done, start = 0, time.monotonic()
        while pending:
            elapsed = time.monotonic() - start
            if workers > 1 and (
                self.solo <= 0 or (done and elapsed / done * (total - done) > self.solo)
            ):
                break
            chunk = take_chunk(pending, workers)
            task(chunk, cpus, accept)
            done += sum(item.size for item in chunk) or 1
        if pending:
            self._pool(task, list(reversed(pending)), min(workers, len(pending)), cpus, accept)

    def _pool(
        self, task: Task, items: Sequence[Sized], workers: int, cpus: int, accept: Accept
    ) -> None:
        """Run ``task`` on ``items`` in ``workers`` worker processes."""
        self.started = workers
        context = multiprocessing.get_context("spawn")
        queue = context.SimpleQueue()
        pool = ProcessPoolExecutor(workers, context, _init_worker, (task, queue))

        def drain() -> None:
            while not queue.empty():
                with signals_deferred():  # taken from the queue means recorded
                    accept(queue.get())

        try:
            pending = list(reversed(items))
            running: set[Future[int]] = set()
            while pending or running:
                while pending and len(running) < workers:
                    busy = min(workers, len(pending) + len(running))
                    chunk = take_chunk(pending, workers)
                    with signals_deferred():  # workers start with the stop signals blocked
                        running.add(pool.submit(_worker_task, chunk, max(1, cpus // busy)))
                done, running = wait(running, timeout=0.05, return_when=FIRST_COMPLETED)
                drain()
                for future in done:
                    future.result()  # a worker's bug surfaces here with its traceback
            drain()
        except BaseException:
            with signals_deferred(drop=True):
                _terminate(pool, drain)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


SOLO_SECONDS = 1.0
"""Seconds of work, projected from the files done so far by their sizes, below which a
run with several workers finishes in this process without starting any: a worker process
takes about half a second of a CPU to start (a fresh interpreter importing NumPy and the
readers), more than it saves on a short batch. Projected longer, the rest goes to the
workers. The environment variable ``SVDHARM_SOLO_SECONDS`` overrides it (0: start the
workers at once)."""


def solo_seconds() -> float:
    """:data:`SOLO_SECONDS`, or ``SVDHARM_SOLO_SECONDS`` when set."""
    text = os.environ.get("SVDHARM_SOLO_SECONDS", "").strip()
    if not text:
        return SOLO_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise UsageError(f"SVDHARM_SOLO_SECONDS={text!r} is not a number of seconds (0 or more)")
    return value


def _terminate(pool: ProcessPoolExecutor, drain: Callable[[], None]) -> None:
    """End the pool's workers now (the executor has no public way before Python 3.14),
    collecting what they report until they are gone: a worker whose signals are held back
    while it renames outputs ends right after reporting them."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + 10
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        drain()
        time.sleep(0.01)
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()
    if not any(p.exitcode == -signal.SIGKILL for p in processes):
        drain()  # a killed writer could have left half a message
