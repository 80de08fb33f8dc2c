"""Run units of work in worker processes and collect their per-file outcomes.

The worker function is :func:`svdharm_cli.worker.process_unit`; this module only decides
where and when it runs. ``workers`` processes (spawned, so no lock inherited from the
parent's threads) are fed one unit per task, or chunks of small files (sized by bytes, up
to 64 units), and report each unit's results through a queue as soon as it is done. Each
task is told how many threads to use: one while every worker is busy (two processes each
letting BLAS use every core oversubscribe the machine badly), and the spare cores' share
once fewer units than workers remain (a volume then spreads its slices over them).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from svdharm_cli.plan import Unit
from svdharm_cli.safety import (
    Interrupted,
    ignore_signals_in_worker,
    quiet_libraries,
    signals_deferred,
)
from svdharm_cli.worker import FileResult, JobConfig, process_unit


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


# -- the pool ----------------------------------------------------------------------------

MAX_CHUNK = 64
CHUNK_BYTES = 256 * 1024
"""Units whose files add up to less than this travel together in one task (small files);
a larger unit is a task of its own."""
_WORKER: dict[str, Any] = {}
_BLAS: dict[str, Any] = {}


def _init_worker(config: JobConfig, results: Any) -> None:
    ignore_signals_in_worker()
    quiet_libraries()
    _WORKER.update(config=config, results=results)


def _set_blas_threads(n: int) -> None:
    """Limit BLAS threads in this process, changing the limit only when it differs."""
    if _BLAS.get("threads") == n:
        return
    from threadpoolctl import ThreadpoolController

    controller = _BLAS.setdefault("controller", ThreadpoolController())
    controller.limit(limits=n, user_api="blas")
    _BLAS["threads"] = n


def _worker_task(units: list[Unit], threads: int) -> int:
    """Process ``units``; each one's results go to the parent through the result queue
    the moment they are final (not when the whole task ends)."""
    _set_blas_threads(threads)
    for unit in units:
        process_unit(unit, _WORKER["config"], threads, _WORKER["results"].put)
    return len(units)


def take_chunk(pending: list[Unit], workers: int) -> list[Unit]:
    """Pop the next task's units from the end of ``pending``: one unit, or several small
    ones (up to :data:`CHUNK_BYTES` and 64 units, and no more than an eighth of each
    worker's share while many remain), since dispatching a task costs about as much as
    processing a small image."""
    limit = max(1, min(MAX_CHUNK, len(pending) // (workers * 8)))
    chunk = [pending.pop()]
    total = chunk[0].size
    while pending and len(chunk) < limit and total + pending[-1].size <= CHUNK_BYTES:
        total += pending[-1].size
        chunk.append(pending.pop())
    return chunk


@dataclass(frozen=True)
class BatchOutcome:
    """The files that finished (in input order), and the signal that stopped the run, if any."""

    results: list[FileResult]
    interrupted: int | None = None


def run_units(
    units: Sequence[Unit],
    config: JobConfig,
    workers: int,
    on_result: Callable[[FileResult], None] = lambda r: None,
) -> BatchOutcome:
    """Process ``units``, calling ``on_result`` in this process as each file finishes.

    With one worker, or one unit, everything runs in this process. When SIGINT or SIGTERM
    arrives (as :class:`Interrupted` or KeyboardInterrupt) nothing more is dispatched, the
    workers are ended, the results they reported before ending are collected, and the
    files finished so far are returned (in input order). Workers report a unit only after
    its outputs are in place, and hold signals back in between, so every output on disk
    after a stop is among the results.
    """
    results: dict[str, FileResult] = {}

    def accept(batch: list[FileResult]) -> None:
        for res in batch:
            results[res.path] = res
            on_result(res)

    interrupted = None
    try:
        _execute(units, config, workers, accept)
    except Interrupted as exc:
        interrupted = exc.signum
    except KeyboardInterrupt:
        interrupted = signal.SIGINT
    order = sorted(rel for unit in units for rel in unit.files)
    return BatchOutcome([results[r] for r in order if r in results], interrupted)


def _execute(
    units: Sequence[Unit],
    config: JobConfig,
    workers: int,
    accept: Callable[[list[FileResult]], None],
) -> None:
    cpus = available_cpus()
    workers = max(1, min(workers, len(units)))
    if workers == 1:
        # One unit at a time in this process; a volume's slices share the machine's cores.
        for unit in units:
            process_unit(unit, config, cpus, accept)
        return
    context = multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    pool = ProcessPoolExecutor(workers, context, _init_worker, (config, queue))

    def drain() -> None:
        while not queue.empty():
            with signals_deferred():  # taken from the queue means recorded
                accept(queue.get())

    try:
        pending = list(reversed(units))
        running: set[Future[int]] = set()
        while pending or running:
            while pending and len(running) < workers:
                busy = min(workers, len(pending) + len(running))
                chunk = take_chunk(pending, workers)
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
