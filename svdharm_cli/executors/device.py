"""Runs on a GPU: this process owns the device; ``workers`` threads read, decode, encode and
write around it.

Each thread takes a chunk of items and runs the task on it; the task reads its files on the
CPU, computes each unit on the device one unit at a time (:data:`svdharm_cli.device.LOCK`)
and writes on the CPU, so reading and writing of other units overlap the device's work.
Threads rather than processes: a second process would need a CUDA context (and GPU memory)
of its own, while decoding and encoding (zlib, libjpeg, pydicom's handlers) and the copies
to and from the device release the GIL for most of their time. Small images still travel in
chunks and are stacked on the device. A stop (SIGINT/SIGTERM) is passed to the tasks, which
check it between units and slices; what finished is collected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from svdharm_cli.device import Device
from svdharm_cli.executors import Accept, Feed, Sized, Task, take_chunk


class DeviceExecutor:
    """``workers`` threads in this process around one device."""

    remote = False

    def __init__(self, workers: int, device: Device) -> None:
        self.workers = max(1, workers)
        self.resolved = device
        self.device = device.spec
        self.warnings: list[str] = []
        self._stop = threading.Event()

    def worker_path(self, path: Path) -> Path:
        return path

    def check(self, readable: Sequence[Path], writable: Sequence[Path]) -> None:
        """Nothing to check: the threads are this process's."""

    def describe(self) -> dict[str, Any]:
        return {"kind": "device", "threads": self.workers, **self.resolved.describe()}

    def execute(self, task: Task, items: Iterable[Sized], accept: Accept) -> None:
        lock = threading.Lock()

        def report(payload: Any) -> None:
            with lock:
                accept(payload)

        pending = Feed(items)
        threads = min(self.workers, max(1, len(pending)))
        with ThreadPoolExecutor(threads, thread_name_prefix="svdharm-io") as pool:
            running: set[Future[None]] = set()
            try:
                while pending or running:
                    while pending and len(running) < threads:
                        chunk = take_chunk(pending, threads)
                        running.add(pool.submit(task, chunk, 1, report, self._stop.is_set))
                    done, running = wait(running, timeout=0.05, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
            except BaseException:
                self._stop.set()  # the tasks stop at their next check; wait for them
                wait(running)
                raise
