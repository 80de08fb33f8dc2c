"""Runs on a GPU: this process owns the device; ``workers`` threads read, decode, encode and
write around it.

Each thread takes a chunk of items and runs the task on it; the task reads its files on the
CPU, computes each input on the device one input at a time (:data:`svdharm_cli.core.device.LOCK`)
and writes on the CPU, so reading and writing of other inputs overlap the device's work.
Threads rather than processes: a second process would need a CUDA context (and GPU memory)
of its own, while decoding and encoding (zlib, libjpeg, pydicom's handlers) and the copies
to and from the device release the GIL for most of their time. Small images still travel in
chunks and are stacked on the device. A stop (SIGINT/SIGTERM) is passed to the tasks, which
check it between inputs and slices; what finished is collected.

:func:`device_check` is the safety net of a device run: before anything is written, the
first input that reads is computed on the device and on the CPU path and compared against
:data:`~svdharm_cli.core.device.BOUND`. The fallback to the CPU when the device's solver
fails is :func:`svdharm_cli.core.device.on_device`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli.core.device import BOUND, Device
from svdharm_cli.files.plan import Input
from svdharm_cli.run.executors import Accept, Feed, Sized, Task, take_chunk
from svdharm_cli.run.prepared import JobConfig, prepare
from svdharm_cli.run.worker import input_values, stacked_values


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


def device_check(
    inputs: Sequence[Input], config: JobConfig, tries: int = 5
) -> dict[str, Any] | None:
    """The safety net of a device run: the first input that reads (of the first ``tries``)
    computed on the device and on the CPU path, before anything is written. Returns the
    largest difference, in normalized units (relative to the input's value range for HU
    and raw data), against :data:`svdharm_cli.core.device.BOUND`; None when no input could be
    computed both ways (each input then still falls back or fails on its own)."""
    device = config.on
    on_cpu = replace(config, device="cpu")
    for inp in inputs[:tries]:
        prepared = prepare(inp, config, lambda done: None)
        if prepared is None:
            continue
        try:
            if prepared.stackable:
                ours = [copy[0] for copy in stacked_values([prepared], config)[0]]
                theirs = [copy[0] for copy in stacked_values([prepared], on_cpu)[0]]
            else:
                ours = [v for copy in input_values(prepared, config, device=device) for v in copy]
                theirs = [v for copy in input_values(prepared, on_cpu) for v in copy]
        except Exception:
            continue
        if prepared.fallback is not None:
            continue  # the device did not compute it: nothing to compare
        image = prepared.images[0]
        if image.unit in ("normalized",):
            scale, what = 1.0, "normalized units"
        else:
            values = np.concatenate([im.frames.ravel() for im in prepared.images])
            scale, what = float(np.ptp(values)) or 1.0, f"relative to the {image.unit} range"
        worst = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(ours, theirs))
        return {
            "unit": str(config.in_root / inp.files[0]) if inp.volume is None else inp.volume,
            "largest_difference": worst / scale,
            "bound": BOUND,
            "scale": what,
            "passed": worst / scale <= BOUND,
        }
    return None
