"""The Dask executor: the same tasks on the workers of a Dask cluster (``--scheduler``).

Only paths travel: each worker reads its inputs and writes its outputs itself, on a
filesystem it shares with the client, so the client checks first, on every worker, that
the input folders are readable, the output folder writable and svdharm the same version.
The task and the seeds are those of local runs, so outputs are byte-identical to them.

- **Bounded**: at most ``2 x threads + 2`` tasks are in flight, whatever the tree's size
  (threads recounted every 2 s: workers that join during a run get work);
  small files travel in chunks (:func:`~svdharm_cli.run.executors.take_chunk`).
- **Faults**: the scheduler re-runs a task whose worker died on another worker (outputs are
  renamed into place whole, so a re-run is safe, and only the client's copy of a result is
  logged, so a file is logged once). When a chunk has killed workers the scheduler's
  ``allowed-failures`` times, its items are tried one by one, and an item that still kills
  them fails alone with a message.
- **Stops**: a task cannot be killed from the client, so a stop sets a Dask ``Event`` that
  every task asks (at most twice a second) before each item, between slices and before it
  renames outputs. The client then waits for the tasks in flight, collects what they
  finished, and only then writes the log: no task is left writing into OUT.
- **Threads**: a task uses the worker's CPU budget divided by its thread count: one BLAS
  thread per task by default, since Dask's nanny sets ``OMP_NUM_THREADS=1`` on the workers
  it starts (raise it with ``distributed.nanny.pre-spawn-environ`` to let one-thread
  workers spread a volume's slices over more cores).

Dask is an optional extra (``pip install 'svdharm[dask]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from svdharm_cli import __version__
from svdharm_cli.errors import UsageError
from svdharm_cli.files.atomic import forget_folders
from svdharm_cli.files.safety import quiet_libraries, signals_deferred
from svdharm_cli.run.executors import (
    Accept,
    Feed,
    Sized,
    Task,
    available_cpus,
    set_blas_threads,
    take_chunk,
)

CONNECT_TIMEOUT = 5.0
"""Seconds to reach the scheduler before giving up (a usage error, exit 2)."""
WORKER_TIMEOUT = 30.0
"""Seconds to wait for a first worker to join the scheduler."""
STOP_TIMEOUT = 300.0
"""Seconds a stop waits for the tasks in flight to end."""
STOP_POLL = 0.5
"""Seconds between two looks of a task at the run's stop event."""


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError(
            "--scheduler needs Dask, an optional part of svdharm",
            hint="pip install 'svdharm[dask]'",
        ) from None
    return distributed


class DaskExecutor:
    """Runs tasks on a Dask cluster's workers; use as a context manager (closes the
    client, never the cluster)."""

    remote = True

    def __init__(self, client: Any, address: str) -> None:
        self.client = client
        self.address = address
        self.warnings: list[str] = []
        self.device = "cpu"
        self._alone: set[int] = set()
        self._described: dict[str, Any] | None = None
        self._asked, self._slots = -2.0, 1

    @classmethod
    def connect(cls, address: str | None, scheduler_file: Path | None = None) -> DaskExecutor:
        """Connect to the scheduler at ``address`` or named in ``scheduler_file``; a
        missing extra, file or scheduler, or a cluster without workers, is a usage error."""
        distributed = _distributed()
        import dask

        # Its retries (a result lost with its worker) are this module's business, not the user's.
        logging.getLogger("distributed.client").setLevel(logging.ERROR)
        if scheduler_file is not None:
            try:
                address = json.loads(scheduler_file.read_text(encoding="utf-8"))["address"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UsageError(
                    f"--scheduler-file {scheduler_file}: not a scheduler file written by "
                    f"dask scheduler --scheduler-file ({exc})"
                ) from None
        where = f"the Dask scheduler at {address}"
        settings = {"distributed.comm.timeouts.connect": f"{CONNECT_TIMEOUT}s"}
        try:
            with dask.config.set(settings):
                client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise UsageError(
                f"cannot reach {where}: {exc}",
                hint="start it with dask scheduler, or check the address and port",
            ) from None
        try:
            client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
        except (OSError, TimeoutError):
            client.close()
            raise UsageError(
                f"no worker joined {where} within {WORKER_TIMEOUT:.0f} s",
                hint=f"start workers with: dask worker {address}",
            ) from None
        return cls(client, str(address))

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def worker_path(self, path: Path) -> Path:
        return path.absolute()

    def describe(self) -> dict[str, Any]:
        """The cluster as the run found it (asked once: the log is written even when the
        scheduler has gone away since)."""
        if self._described is None:
            threads = self.client.nthreads()
            self._described = {
                "kind": "dask",
                "scheduler": self.address,
                "workers": len(threads),
                "threads": sum(threads.values()),
            }
        return self._described

    def check(self, readable: Sequence[Path], writable: Sequence[Path]) -> None:
        """Refuse (exit 2) unless every worker runs this svdharm version, reads each of
        ``readable`` and writes into each of ``writable``, at the same paths."""
        answers = self.client.run(
            _preflight,
            list(readable),
            list(writable),
            __version__,
            self.device,
            on_error="return",
        )
        problems = []
        for worker, answer in sorted(answers.items()):
            if isinstance(answer, BaseException):
                problems.append(f"worker {worker}: svdharm cannot run there ({answer!r})")
            else:
                problems.extend(f"worker {worker}: {problem}" for problem in answer)
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise UsageError(
                "; ".join(problems[:5]) + more,
                hint="workers must see IN and OUT at the same paths (a shared filesystem) "
                f"and run svdharm {__version__}",
            )

    def execute(self, task: Task, items: Iterable[Sized], accept: Accept) -> None:
        distributed = _distributed()
        client = self.client
        self.describe()
        run = uuid.uuid4().hex[:12]
        self._alone.clear()
        stop = distributed.Event(f"svdharm-stop-{run}", client=client)
        keys = itertools.count()
        pending = Feed(items)
        inflight: dict[Any, list[Any]] = {}
        finished = distributed.as_completed(loop=client.loop)

        def submit(chunk: list[Any]) -> None:
            future = client.submit(
                _run_chunk, task, chunk, stop.name, key=f"svdharm-{run}-{next(keys)}", pure=False
            )
            inflight[future] = chunk
            finished.add(future)

        def top_up() -> None:
            slots = self._threads()  # workers may join (or leave) during the run
            while pending and len(inflight) < 2 * slots + 2:
                submit(take_chunk(pending, slots))

        try:
            top_up()
            for future in finished:
                # Still in flight until collected: a stop that comes while its payloads
                # are fetched or accepted finds it there, and _stop accepts them (again:
                # a path's latest record is the one the log keeps).
                self._collect(task, future, inflight[future], accept, submit)
                del inflight[future]
                top_up()
        except BaseException:
            with signals_deferred(drop=True):
                self._stop(stop, inflight, accept)
            raise
        finally:
            with contextlib.suppress(Exception):  # the scheduler may be gone
                stop.clear()

    def _threads(self) -> int:
        """Worker threads the cluster has now, asked at most every 2 seconds."""
        now = time.monotonic()
        if now - self._asked >= 2.0:
            self._asked = now
            self._slots = max(1, sum(self.client.nthreads().values()))
        return self._slots

    def _collect(
        self, task: Task, future: Any, chunk: list[Any], accept: Accept, submit: Any
    ) -> None:
        from distributed import KilledWorker

        try:
            payloads = future.result()
        except KilledWorker:
            # The scheduler blames every task queued on a dying worker, not only the one
            # that killed it: try each item of a chunk on its own, and a lone item once more.
            if len(chunk) > 1 or id(chunk[0]) not in self._alone:
                for item in chunk:
                    self._alone.add(id(item))
                    submit([item])
                return
            payloads = [
                task.lost(
                    chunk[0],
                    "every worker that processed it died (out of memory, or a crash in a "
                    "library), as many times as the scheduler allows (allowed-failures)",
                )
            ]
        for payload in payloads:
            with signals_deferred():  # taken from the future means recorded
                accept(payload)

    def _stop(self, stop: Any, inflight: dict[Any, list[Any]], accept: Accept) -> None:
        """Ask every task to stop, wait for those in flight, accept what they finished."""
        stop.set()
        futures = list(inflight)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(not f.done() for f in futures) and time.monotonic() < deadline:
            time.sleep(0.05)
        not_done = [f for f in futures if not f.done()]
        for future in futures:
            if future.status == "finished":
                for payload in future.result():
                    accept(payload)
        if not_done:
            self.warnings.append(
                f"{len(not_done)} task(s) on the cluster did not stop within "
                f"{STOP_TIMEOUT:.0f} s of the stop; outputs they finish later are not in "
                "this log (run again with --skip-existing)"
            )


# -- on the workers ----------------------------------------------------------------------


def _preflight(
    readable: list[Path], writable: list[Path], version: str, device: str = "cpu"
) -> list[str]:
    """What keeps this worker from taking part (runs on each worker)."""
    problems = []
    if version != __version__:
        problems.append(f"runs svdharm {__version__}, the client {version}")
    if device != "cpu":
        from svdharm_cli.core.device import resolve
        from svdharm_cli.errors import UsageError

        try:
            resolve(device)
        except UsageError as exc:
            problems.append(exc.message)
    for folder in readable:
        if not (folder.exists() and os.access(folder, os.R_OK | os.X_OK)):
            problems.append(f"cannot read {folder}")
    for folder in writable:
        probe = folder / f".svdharm-probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            problems.append(f"cannot write to {folder} ({exc.strerror or exc})")
    return problems


class _StopFlag:
    """Whether the run's stop event is set, asked of the scheduler at most every
    :data:`STOP_POLL` seconds; once set, it stays set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.event: Any = None
        self.asked = -STOP_POLL
        self.set = False

    def __call__(self) -> bool:
        if not self.set and time.monotonic() - self.asked >= STOP_POLL:
            if self.event is None:
                from distributed import Event

                self.event = Event(self.name)
            self.asked = time.monotonic()
            self.set = bool(self.event.is_set())
        return self.set


def task_threads(worker_threads: int) -> int:
    """Threads for one task: the worker's CPU budget (``OMP_NUM_THREADS`` when set, as
    Dask's nanny does, else the CPUs it may use) shared among its task threads."""
    try:
        budget = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        budget = available_cpus()
    return max(1, budget // max(1, worker_threads))


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MALLOC: list[bool] = []


def _malloc_for_arrays() -> None:
    """Once per worker process, let glibc keep freed arrays of up to 32 MiB for reuse.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes
    glibc's mmap threshold: every large array is then a fresh mapping whose pages are
    faulted in again, and images took about 10 % longer per task than in local workers
    (measured with 1024 x 1024 PNGs). These are the ceilings glibc's own adaptive
    thresholds reach in a process started without that setting (a local worker); a worker
    keeps at most 64 MiB of freed memory untrimmed. Elsewhere than glibc: nothing to do.
    """
    if _MALLOC:
        return
    _MALLOC.append(True)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 * 2**20)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _run_chunk(task: Task, items: list[Any], stop_name: str) -> list[Any]:
    """Run ``task`` on ``items`` on a worker; return the payloads of those finished."""
    from distributed import get_worker

    _malloc_for_arrays()
    quiet_libraries()
    forget_folders()  # a long-lived worker: OUT may have been removed since its last run
    threads = task_threads(get_worker().state.nthreads)
    set_blas_threads(threads)
    stop = _StopFlag(stop_name)
    payloads: list[Any] = []
    try:
        task(items, threads, payloads.append, stop)
    except Exception:  # a bug: its text travels, not its frames (they may not pickle)
        raise TaskError(traceback.format_exc()) from None
    return payloads


class TaskError(RuntimeError):
    """An unexpected error in a task on a worker, with the worker's traceback as text."""
