"""Run units of work in worker processes and collect their per-file outcomes.

The worker function is :func:`svdharm_cli.worker.process_unit`; this module only decides
where and when it runs. ``workers`` processes (spawned, so no lock inherited from the
parent's threads) are fed one unit per task, or chunks of up to 64 when many small files
remain, and told how many threads to use for each task: one while every worker is busy
(two processes each letting BLAS use every core oversubscribe the machine badly), and the
spare cores' share once fewer units than workers remain (a volume then spreads its slices
over them).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from svdharm_cli.plan import Unit
from svdharm_cli.safety import Interrupted, ignore_signals_in_worker
from svdharm_cli.worker import FileResult, JobConfig, process_unit


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


# -- the pool ----------------------------------------------------------------------------

MAX_CHUNK = 64
_WORKER_CONFIG: JobConfig | None = None
_BLAS: dict[str, Any] = {}


def _init_worker(config: JobConfig) -> None:
    global _WORKER_CONFIG
    ignore_signals_in_worker()
    _WORKER_CONFIG = config


def _set_blas_threads(n: int) -> None:
    """Limit BLAS threads in this process, changing the limit only when it differs."""
    if _BLAS.get("threads") == n:
        return
    from threadpoolctl import ThreadpoolController

    controller = _BLAS.setdefault("controller", ThreadpoolController())
    controller.limit(limits=n, user_api="blas")
    _BLAS["threads"] = n


def _worker_task(units: list[Unit], threads: int) -> list[FileResult]:
    assert _WORKER_CONFIG is not None
    _set_blas_threads(threads)
    return [r for unit in units for r in process_unit(unit, _WORKER_CONFIG, threads)]


def chunk_size(remaining: int, workers: int) -> int:
    """Files per task: one while few remain (even load, fine progress); up to 64 when many
    do, since dispatching a task costs about as much as processing a small image."""
    return max(1, min(MAX_CHUNK, remaining // (workers * 8)))


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
    workers are terminated, and the files finished so far are returned (in input order).
    """
    results: dict[str, FileResult] = {}
    interrupted = None
    try:
        for res in _results(units, config, workers):
            results[res.path] = res
            on_result(res)
    except Interrupted as exc:
        interrupted = exc.signum
    except KeyboardInterrupt:
        interrupted = signal.SIGINT
    order = sorted(rel for unit in units for rel in unit.files)
    return BatchOutcome([results[r] for r in order if r in results], interrupted)


def _results(units: Sequence[Unit], config: JobConfig, workers: int) -> Iterator[FileResult]:
    cpus = available_cpus()
    workers = max(1, min(workers, len(units)))
    if workers == 1:
        # One unit at a time in this process; a volume's slices share the machine's cores.
        for unit in units:
            yield from process_unit(unit, config, cpus if len(unit.files) > 1 else 1)
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, context, _init_worker, (config,))
    try:
        pending = list(reversed(units))
        running: set[Future[list[FileResult]]] = set()
        while pending or running:
            while pending and len(running) < workers:
                busy = min(workers, len(pending) + len(running))
                size = chunk_size(len(pending), workers)
                chunk = [pending.pop() for _ in range(min(size, len(pending)))]
                running.add(pool.submit(_worker_task, chunk, max(1, cpus // busy)))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()
    except BaseException:
        _terminate(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """End the pool's workers now (the executor has no public way before Python 3.14)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
