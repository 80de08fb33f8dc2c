"""Where tasks run: the executor seam (this module), the local process pool behind it
(:mod:`svdharm_cli.run.executors.local`) and the Dask cluster
(:mod:`svdharm_cli.run.executors.dask`).

A command's work is a list of *items* (inputs, :class:`~svdharm_cli.files.plan.Input`, or
an input with its root) and one picklable :class:`Task` that turns an item into a *payload*
(for harmonize and augment, the input's list of :class:`~svdharm_cli.run.worker.FileResult`).
An :class:`Executor` runs the task on every item and hands each payload to ``accept`` in
this process as it arrives; it never knows what the task does. Two implementations:

- :class:`~svdharm_cli.run.executors.local.LocalPool` (the default): ``workers`` processes on
  this machine (spawned, so no lock is inherited from the parent's threads), or this
  process alone for one worker;
- :class:`~svdharm_cli.run.executors.dask.DaskExecutor`: the workers of a Dask cluster
  (``--scheduler``).

Small items travel in chunks (sized by bytes, :func:`take_chunk`); each task is told how
many threads to use. :func:`run_tasks` turns SIGINT/SIGTERM into a clean end: nothing more
is dispatched, what finished is collected, and the signal is returned. The tasks of the
commands and the helpers that collect their payloads are in :mod:`svdharm_cli.run.executors.work`.

This package imports nothing above it (no command, no job): the layers are declared in
``pyproject.toml`` and checked by import-linter (``make lint``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from svdharm_cli.errors import UsageError
from svdharm_cli.files.safety import Interrupted, interruptible
from svdharm_cli.run.results import Stop

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
    device: str
    """Where the tasks compute: ``cpu`` or ``cuda:N`` (:mod:`svdharm_cli.core.device`)."""

    def worker_path(self, path: Path) -> Path:
        """``path`` as the workers must be given it (absolute for a cluster's workers, whose
        working folders are not this process's)."""

    def check(self, readable: Sequence[Path], writable: Sequence[Path]) -> None:
        """Refuse with a :class:`~svdharm_cli.errors.UsageError` unless the workers can
        read ``readable`` and write into ``writable`` (folders, at these paths)."""

    def execute(self, task: Task, items: Iterable[Sized], accept: Accept) -> None:
        """Run ``task`` on every item (read ahead a window at a time, :class:`Feed`),
        calling ``accept`` here with each payload as it arrives. On SIGINT/SIGTERM
        (:class:`Interrupted` or KeyboardInterrupt) it stops dispatching, makes sure no task
        is left running, accepts the payloads of those that finished, and re-raises."""

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


WINDOW = 4096
"""Items an executor reads ahead of what it dispatched (:class:`Feed`)."""


class Feed:
    """The items still to dispatch, read from an iterable (a walk of the input tree) at most
    :data:`WINDOW` ahead: a run's client holds a window of its work, never the whole tree.
    ``pop()`` takes the next item and ``feed[-1]`` looks at it (the shape of the reversed
    list the executors used to pop from); ``len(feed)`` is what is read ahead."""

    def __init__(self, items: Iterable[Sized], window: int = WINDOW) -> None:
        self._items = iter(items)
        self._ahead: deque[Sized] = deque()
        self.window = window
        self.exhausted = False
        self.ahead_size = 0
        self._fill()

    def _fill(self) -> None:
        while not self.exhausted and len(self._ahead) < self.window:
            try:
                item = next(self._items)
            except StopIteration:
                self.exhausted = True
            else:
                self._ahead.append(item)
                self.ahead_size += item.size

    def pop(self) -> Any:
        item = self._ahead.popleft()
        self.ahead_size -= item.size
        if len(self._ahead) < self.window // 2:
            self._fill()
        return item

    def __getitem__(self, index: int) -> Any:
        if index != -1:
            raise IndexError("a feed shows only its next item, as feed[-1]")
        return self._ahead[0]

    def __len__(self) -> int:
        return len(self._ahead)

    def __bool__(self) -> bool:
        return bool(self._ahead)


def take_chunk(pending: Feed | list[Any], slots: int) -> list[Any]:
    """Pop the next task's items from ``pending`` (a :class:`Feed`, or a list popped from
    its end): one item, or several small ones (up to :data:`CHUNK_BYTES` and 64 items,
    and no more than an eighth of each slot's share while many remain), since dispatching
    a task costs about as much as processing a small image."""
    limit = max(1, min(MAX_CHUNK, len(pending) // (slots * 8)))
    chunk = [pending.pop()]
    total = chunk[0].size
    while pending and len(chunk) < limit and total + pending[-1].size <= CHUNK_BYTES:
        total += pending[-1].size
        chunk.append(pending.pop())
    return chunk


_BLAS: dict[str, Any] = {}


def set_blas_threads(n: int) -> None:
    """Limit BLAS threads in this process, changing the limit only when it differs."""
    if _BLAS.get("threads") == n:
        return
    from threadpoolctl import ThreadpoolController

    controller = _BLAS.setdefault("controller", ThreadpoolController())
    controller.limit(limits=n, user_api="blas")
    _BLAS["threads"] = n


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


def run_tasks(executor: Executor, task: Task, items: Iterable[Sized], accept: Accept) -> int | None:
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


@contextlib.contextmanager
def open_executor(
    workers: int,
    scheduler: str | None = None,
    scheduler_file: Path | None = None,
    device: str = "cpu",
) -> Iterator[Executor]:
    """The local pool of ``workers`` processes, the Dask cluster whose scheduler is at
    ``scheduler`` or named in ``scheduler_file`` (connected here, closed on the way out),
    or, for a ``device`` other than the CPU without a cluster, this process on that device
    with ``workers`` threads around it. A device this machine cannot use is a usage error
    here; on a cluster each worker checks it against its own GPUs (``cuda`` is then each
    worker's first visible device, which dask-cuda's ``LocalCUDACluster`` makes its own)."""
    if scheduler is None and scheduler_file is None:
        if device != "cpu":
            from svdharm_cli.core.device import resolve
            from svdharm_cli.run.executors.gpu import DeviceExecutor

            yield DeviceExecutor(workers, resolve(device))
            return
        from svdharm_cli.run.executors.local import LocalPool

        yield LocalPool(workers)
        return
    if scheduler is not None and scheduler_file is not None:
        raise UsageError("use either --scheduler or --scheduler-file")
    from svdharm_cli.run.executors.dask import DaskExecutor

    with DaskExecutor.connect(scheduler, scheduler_file) as executor:
        executor.device = device
        yield executor
