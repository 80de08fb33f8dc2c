"""The local process pool: ``workers`` processes on this machine, short runs solo.

Workers are spawned (no lock is inherited from the parent's threads), start with the stop
signals blocked in every thread but their main one, and report each payload through a
result queue the moment it is final.

A worker never outlives the run's process: on Linux the kernel kills it when its parent
dies (``PR_SET_PDEATHSIG``), and everywhere a watchdog thread ends it within a second of
finding itself orphaned, so a killed run never leaves workers holding its output pipe.

A worker that dies (SIGKILL from the out-of-memory killer, a crash in a library) breaks
the pool; the pool is rebuilt and the batch goes on. Each worker says which chunk it holds
before it starts on it, so the chunk it died with is known: its items are tried again one
by one in fresh workers, and an item whose worker dies a second time fails alone with the
cause (``Task.lost``). Chunks that other workers held when the pool broke are run again as
they were (their reported items may run twice; a result's path keeps its latest record).
"""

from __future__ import annotations

import ctypes
import fnmatch
import itertools
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdharm_cli.errors import UsageError
from svdharm_cli.files.safety import (
    ignore_signals_in_worker,
    quiet_libraries,
    signals_deferred,
)
from svdharm_cli.run.executors import (
    Accept,
    Feed,
    Sized,
    Task,
    available_cpus,
    set_blas_threads,
    take_chunk,
)

_WORKER: dict[str, Any] = {}

PR_SET_PDEATHSIG = 1
"""Linux ``prctl`` option: the signal a process gets when its parent thread ends."""


def _init_worker(task: Task, results: Any, parent: int) -> None:
    _end_with_parent(parent)  # while the stop signals are still blocked: see below
    ignore_signals_in_worker()
    quiet_libraries()
    _WORKER.update(task=task, results=results)


def _end_with_parent(parent: int) -> None:
    """Make sure this worker ends when the run's process does: the kernel's parent-death
    signal on Linux, and a watchdog thread everywhere (started while the stop signals are
    blocked, so that it never takes them: see :func:`ignore_signals_in_worker`)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
            pass
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="svdharm-orphan-watch", daemon=True).start()


WATCHDOG_SECONDS = 1.0
"""How often a worker checks that the run's process is still its parent."""


def _worker_task(items: list[Any], threads: int, token: int) -> int:
    """Run the task on ``items``; say first which chunk this worker holds (``token``),
    then each payload goes to the parent through the result queue the moment it is final
    (not when the whole chunk ends)."""
    results = _WORKER["results"]
    results.put(("holds", os.getpid(), token))
    _crash_for_tests(items)
    set_blas_threads(threads)
    _WORKER["task"](items, threads, lambda payload: results.put(("payload", payload)))
    return len(items)


CRASH_FOR_TESTS = "SVDHARM_TEST_CRASH"
"""Test-only switch: a worker given an input whose first file matches this glob kills itself
with SIGKILL (what the out-of-memory killer does) before processing it; with
``SVDHARM_TEST_CRASH_ONCE`` naming a file, only while that file does not exist (it is
created first), so that the retry succeeds. Never set in use."""


def _crash_for_tests(items: list[Any]) -> None:
    pattern = os.environ.get(CRASH_FOR_TESTS)
    if not pattern:
        return
    for item in items:
        files = getattr(getattr(item, "inp", item), "files", ())
        if files and fnmatch.fnmatch(files[0], pattern):
            once = os.environ.get(f"{CRASH_FOR_TESTS}_ONCE")
            if once:
                try:
                    os.close(os.open(once, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    return
            os.kill(os.getpid(), signal.SIGKILL)


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
        """Run ``task`` on ``items`` in ``workers`` worker processes, rebuilding the pool
        when a worker dies (see the module)."""
        context = multiprocessing.get_context("spawn")
        queue = context.SimpleQueue()
        holds: dict[int, int] = {}  # worker pid -> the token of the chunk it works on
        chunks: dict[int, Attempt] = {}  # token -> what it runs
        again: deque[Attempt] = deque()
        tokens = itertools.count()

        def new_pool() -> ProcessPoolExecutor:
            self.started += workers
            return ProcessPoolExecutor(workers, context, _init_worker, (task, queue, os.getpid()))

        def drain() -> None:
            while not queue.empty():
                with signals_deferred():  # taken from the queue means recorded
                    message = queue.get()
                    if message[0] == "holds":
                        holds[message[1]] = message[2]
                    else:
                        accept(message[1])

        pool = new_pool()
        processes: dict[int, Any] = {}
        try:
            running: dict[Future[int], int] = {}
            while pending or again or running:
                while (pending or again) and len(running) < workers:
                    busy = min(workers, len(pending) + len(again) + len(running))
                    attempt = again.popleft() if again else Attempt(take_chunk(pending, workers))
                    token = next(tokens)
                    chunks[token] = attempt
                    threads = max(1, cpus // busy)
                    with signals_deferred():  # workers start with the stop signals blocked
                        future = pool.submit(_worker_task, attempt.items, threads, token)
                    running[future] = token
                    processes.update(getattr(pool, "_processes", None) or {})
                done, _ = wait(running, timeout=0.05, return_when=FIRST_COMPLETED)
                drain()
                broken = False
                for future in done:
                    try:
                        future.result()  # a worker's bug surfaces here with its traceback
                    except BrokenProcessPool:
                        broken = True
                    else:
                        chunks.pop(running.pop(future))
                if not broken:
                    continue
                wait(running)  # every future of a broken pool fails
                drain()
                self._recover(task, running, chunks, holds, processes, again, accept)
                running.clear()
                holds.clear()
                processes.clear()
                pool.shutdown(wait=True)
                pool = new_pool()
            drain()
        except BaseException:
            with signals_deferred(drop=True):
                _terminate(pool, drain)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _recover(
        self,
        task: Task,
        running: dict[Future[int], int],
        chunks: dict[int, Attempt],
        holds: dict[int, int],
        processes: dict[int, Any],
        again: deque[Attempt],
        accept: Accept,
    ) -> None:
        """After the pool broke: the chunk each dead worker held is tried again item by
        item (an item that already killed a worker fails alone), the others as they were."""
        for process in processes.values():
            process.join(timeout=5)
        dead = {
            pid: p.exitcode
            for pid, p in processes.items()
            if p.exitcode is not None and p.exitcode not in (0, -signal.SIGTERM)
        }
        culprits = {holds[pid]: code for pid, code in dead.items() if pid in holds}
        for token in running.values():
            attempt = chunks.pop(token)
            # A chunk ended by the pool's breaking, not its cause, runs again as it was;
            # one caught in three breaks without its worker being named counts as a cause.
            if token not in culprits and attempt.caught < 3:
                again.append(Attempt(attempt.items, attempt.deaths, attempt.caught + 1))
                continue
            chunk = attempt.items
            cause = _death(culprits.get(token))
            lone = len(chunk) == 1
            names = ", ".join(_name(item) for item in chunk[:3])
            self.warnings.append(
                f"a worker died ({cause}) while processing {names}"
                + (" and others" if len(chunk) > 3 else "")
                + ("" if lone and attempt.deaths else "; tried again in a fresh worker")
            )
            if lone and attempt.deaths:
                with signals_deferred():
                    accept(task.lost(chunk[0], f"its worker died twice ({cause})"))
                continue
            again.extend(Attempt([item], 1) for item in chunk)


@dataclass(frozen=True)
class Attempt:
    """A chunk to run: its items, how many workers died holding it (as a lone item), and
    how many pool breaks it was caught in without being the cause."""

    items: list[Any]
    deaths: int = 0
    caught: int = 0


def _name(item: Any) -> str:
    """How a warning names an item: its first file (an input, or an input with its root)."""
    files = getattr(getattr(item, "inp", item), "files", None)
    return str(files[0]) if files else type(item).__name__


def _death(exitcode: int | None) -> str:
    """What ended a worker, from its exit code, for messages."""
    if exitcode is None:
        return "it ended without an exit status"
    if exitcode == -signal.SIGKILL:
        return "killed by SIGKILL, most likely by the out-of-memory killer"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


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
