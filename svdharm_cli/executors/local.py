"""The local process pool: ``workers`` processes on this machine, short runs solo.

Workers are spawned (no lock is inherited from the parent's threads), start with the stop
signals blocked in every thread but their main one, and report each payload through a
result queue the moment it is final.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from svdharm_cli.errors import UsageError
from svdharm_cli.executors import (
    Accept,
    Feed,
    Sized,
    Task,
    available_cpus,
    set_blas_threads,
    take_chunk,
)
from svdharm_cli.safety import (
    ignore_signals_in_worker,
    quiet_libraries,
    signals_deferred,
)

_WORKER: dict[str, Any] = {}


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
    device = "cpu"

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

    def execute(self, task: Task, items: Iterable[Sized], accept: Accept) -> None:
        cpus = available_cpus()
        pending = Feed(items)
        workers = max(1, min(self.workers, len(pending)))
        # Chunks in this process first, as a worker would get them (a volume's slices
        # share the machine's cores), for as long as the rest looks short: see SOLO_SECONDS.
        # The rest is what is read ahead: all of it for a short run, a window for a long one.
        done, start = 0, time.monotonic()
        while pending:
            elapsed = time.monotonic() - start
            rest = pending.ahead_size or 1
            if workers > 1 and (
                self.solo <= 0
                or not pending.exhausted
                or (done and elapsed / done * rest > self.solo)
            ):
                break
            chunk = take_chunk(pending, workers)
            task(chunk, cpus, accept)
            done += sum(item.size for item in chunk) or 1
        if pending:
            self._pool(task, pending, min(workers, max(1, len(pending))), cpus, accept)

    def _pool(self, task: Task, pending: Feed, workers: int, cpus: int, accept: Accept) -> None:
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
