"""Where the numeric core runs: ``cpu`` (NumPy, the default) or a CUDA device through torch.

``--device cuda`` (or ``cuda:N``) moves each unit's slices to that GPU as torch tensors,
runs the decomposition, the statistics and the combination there in float64
(:mod:`svdharm_cli.core.backend`'s torch backend), and brings the new values back; files are
read, decoded, encoded and written on the CPU. :func:`resolve` refuses, as a usage error
(exit 2, before OUT is created), a device that cannot be used: torch not installed, torch
without CUDA, no such device.

One process owns the GPU (:class:`~svdharm_cli.run.executors.gpu.DeviceExecutor`): units are
read and written by threads around it, and their compute goes to the device one unit at a
time (:data:`LOCK`), so GPU memory holds one unit at a time. A solver failure on the device
(cuSOLVER, or the device's memory exhausted) makes that unit fall back to the CPU path; the
log says so in the file's ``fallback``.

Test-only switches (environment variables, for machines without a GPU):
``SVDHARM_FAKE_CUDA=1`` makes ``cuda`` and ``cuda:0`` torch's CPU device, running the torch
backend's kernels there (the code a GPU runs); with it, ``SVDHARM_FAKE_CUDA_SKEW=x`` adds
``x`` to every value the device computes (to trip the safety net) and
``SVDHARM_FAKE_CUDA_FAIL=text`` makes the device's solver fail on units whose key contains
``text``. They are read once, when the device is resolved.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import numpy as np

from svdharm_cli.core.backend import TORCH_ON_CPU, Array
from svdharm_cli.errors import UsageError, exception_name

FAKE = "SVDHARM_FAKE_CUDA"
FAKE_SKEW = "SVDHARM_FAKE_CUDA_SKEW"
FAKE_FAIL = "SVDHARM_FAKE_CUDA_FAIL"

LOCK = threading.Lock()
"""Held while a unit computes on the device: one unit's tensors on the GPU at a time."""

BOUND = 2.0**-12
"""The safety net's bound on the device's difference from the CPU path, in normalized units
(relative to the value range for HU and raw data): METHOD.md section 2's accuracy bound at
12-bit precision (16 levels of a 16-bit image, 1/16 of an 8-bit level)."""


class DeviceFailure(Exception):
    """The device's solver failed on a unit (the unit falls back to the CPU)."""


@dataclass(frozen=True)
class Device:
    """A resolved device: ``spec`` is ``cpu`` or ``cuda:N``; ``skew`` and ``fail`` are the
    test switches, read once by :func:`resolve`."""

    spec: str
    skew: float = 0.0
    fail: str | None = None

    @property
    def is_cpu(self) -> bool:
        return self.spec == "cpu"

    def torch_device(self) -> Any:
        import torch

        return torch.device("cpu") if os.environ.get(FAKE) == "1" else torch.device(self.spec)

    def put(self, array: Array | None) -> Array | None:
        """A host array as a tensor on this device (None stays None)."""
        if array is None or self.is_cpu:
            return array
        import torch

        return torch.as_tensor(np.ascontiguousarray(array), device=self.torch_device())

    def host(self, values: Array) -> np.ndarray:
        """Device values back on the host, as a NumPy array (skewed by the test switch)."""
        if self.is_cpu:
            return np.asarray(values)
        out = values.detach().cpu().numpy()
        return out + self.skew if self.skew else out

    def check_failure(self, key: str) -> None:
        """Raise :class:`DeviceFailure` where the test switch asks for one."""
        if self.fail and self.fail in key:
            raise DeviceFailure("the device's solver failed (simulated)")

    def describe(self) -> dict[str, Any]:
        """The device for the run log: name and memory where known."""
        if self.is_cpu:
            return {"device": "cpu", "backend": "numpy"}
        import torch

        if os.environ.get(FAKE) == "1":
            return {"device": self.spec, "backend": "torch", "name": "torch CPU (test switch)"}
        props = torch.cuda.get_device_properties(torch.device(self.spec))
        return {
            "device": self.spec,
            "backend": "torch",
            "name": props.name,
            "memory_bytes": int(props.total_memory),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        }


CPU = Device("cpu")


def resolve(spec: str) -> Device:
    """The device named by ``--device``; a :class:`UsageError` when it cannot be used."""
    text = spec.strip().lower()
    if text == "cpu":
        return CPU
    if text != "cuda" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise UsageError(f"--device {spec!r}: use cpu, cuda or cuda:N")
    index = 0 if text == "cuda" else int(text[5:])
    _check_cuda(index)
    skew = float(os.environ.get(FAKE_SKEW) or 0.0) if os.environ.get(FAKE) == "1" else 0.0
    fail = os.environ.get(FAKE_FAIL) if os.environ.get(FAKE) == "1" else None
    return Device(f"cuda:{index}", skew, fail or None)


@cache
def _check_cuda(index: int) -> None:
    try:
        import torch
    except ImportError:
        raise UsageError(
            "--device cuda needs PyTorch, which is not installed",
            hint="pip install 'svdharm[torch]' with a CUDA build of torch (see the README)",
        ) from None
    if os.environ.get(FAKE) == "1":
        if index != 0:
            raise UsageError(f"--device cuda:{index}: no such device (1 CUDA device)")
        os.environ[TORCH_ON_CPU] = "1"  # the torch backend's kernels on the CPU
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build"
        raise UsageError(
            f"--device cuda: torch {torch.__version__} here is {build} and sees no CUDA device",
            hint="install a CUDA build of torch on a machine with an NVIDIA GPU, or use "
            "--device cpu",
        )
    count = torch.cuda.device_count()
    if index >= count:
        raise UsageError(f"--device cuda:{index}: no such device ({count} CUDA device(s))")


def solver_errors() -> tuple[type[BaseException], ...]:
    """What a device's solver raises when it fails on an input (the unit falls back)."""
    import torch

    return (DeviceFailure, torch.linalg.LinAlgError, torch.cuda.OutOfMemoryError)


T = TypeVar("T")


def on_device(device: Device, key: str, compute: Callable[[Device], T]) -> tuple[T, str | None]:
    """``compute(device)``; on the CPU instead when the device's solver fails (the second
    value then says why). The device computes one input at a time (:data:`device.LOCK`)."""
    if device.is_cpu:
        return compute(device), None
    try:
        with LOCK:
            device.check_failure(key)
            return compute(device), None
    except solver_errors() as exc:
        why = f"the device's solver failed ({exception_name(exc)}); computed on the CPU"
        return compute(CPU), why
