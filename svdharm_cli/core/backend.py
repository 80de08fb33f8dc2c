"""Array backends of the numeric core: NumPy (the default) and PyTorch (CPU and CUDA tensors).

The core (:mod:`~svdharm_cli.core.bands`, :mod:`~svdharm_cli.core.methods`,
:mod:`~svdharm_cli.core.volume`) is written once against the small interface below; what the two
libraries spell alike (``@``, ``*``, ``+=``, indexing, ``.T`` of a matrix, ``.sum()``,
``.mean()``) it writes directly, and what they spell differently goes through a
:class:`Backend`. This was chosen over array-api-compat because the core needs operations
that the array API standard does not have or defines differently (``einsum``, an ``out=``
for products, LAPACK's divide-and-conquer ``eigh`` through SciPy with an overwritten input),
and because the NumPy backend must make exactly the calls the core made before it existed:
the CLI's outputs are byte-identical with or without this module.

Everything the core computes is float64, on the device of its input. Small results
(per-component means and standard deviations, coefficients) are NumPy arrays whatever the
backend: they are read by Python code and logged. :func:`backend_of` chooses the backend
from an array's type; PyTorch is imported only when a tensor is given (or a device is asked
for), never by ``import svdharm_cli``.

CPU tensors are computed by the NumPy backend on the tensor's own memory
(:func:`compute_view`, no copy): on the CPU both libraries call LAPACK and BLAS, and
NumPy's calls measured faster here (torch's allocator and kernels made a band's standard
deviation 10x slower at 4 x 256 x 256, its bundled LAPACK 15 % slower at 512 x 512), so the
torch backend runs where it is needed, on CUDA tensors. Setting the environment variable
``SVDHARM_TORCH_ON_CPU=1`` runs the torch backend on CPU tensors too: the test suite uses it
to exercise, on machines without a GPU, the code that a GPU runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

Array = Any
"""A NumPy array or a torch tensor (the core accepts either)."""

_SCIPY_EIGH_ABOVE = 2048
"""Gram matrices larger than this go to SciPy's eigh, which can overwrite its input (NumPy's
copies it: 128 MiB more at 4096 x 4096); others to NumPy's. Both run LAPACK's
divide-and-conquer ``syevd`` (NumPy's was as fast or faster at every size measured, 28 to
2048), and NumPy's spares a process the 0.18 s import of ``scipy.linalg``."""


class Backend:
    """The operations the core spells differently per library (NumPy's semantics)."""

    name = "numpy"

    def float64(self, x: Array) -> Array:
        """``x`` as float64 on its device (no copy when it already is)."""
        return np.asarray(x, dtype=np.float64)

    def as_bool(self, x: Array, like: Array) -> Array:
        """``x`` (any array) as a boolean array on ``like``'s device."""
        return np.asarray(x, dtype=bool)

    def asarray(self, values: Any, like: Array) -> Array:
        """Small host values (a list, a NumPy array) as float64 on ``like``'s device."""
        return np.asarray(values, dtype=np.float64)

    def asarray_like(self, values: Any, like: Array) -> Array:
        """Small host values as an array of ``like``'s dtype, on its device."""
        return np.asarray(values, dtype=like.dtype)

    def copy(self, x: Array) -> Array:
        """A new array with ``x``'s values (writable, its own memory)."""
        return np.array(x)

    def cast(self, x: Array, dtype: str) -> Array:
        """``x`` as ``dtype`` (``"float32"``, ``"float64"``) on its device (no copy when it
        already is)."""
        return np.asarray(x, dtype=dtype)

    def numpy(self, x: Array) -> np.ndarray:
        """``x`` as a NumPy array on the host (small results: statistics, scalars)."""
        return np.asarray(x)

    def empty(self, shape: Sequence[int], like: Array) -> Array:
        return np.empty(tuple(shape))

    def contiguous(self, x: Array) -> Array:
        return np.ascontiguousarray(x)

    def permute(self, x: Array, axes: Sequence[int]) -> Array:
        return x.transpose(*axes)

    def moveaxis(self, x: Array, source: int, destination: int) -> Array:
        return np.moveaxis(x, source, destination)

    def stack(self, arrays: Sequence[Array], axis: int = 0) -> Array:
        return np.stack(arrays, axis=axis)

    def concatenate(self, arrays: Sequence[Array], axis: int = 0) -> Array:
        return np.concatenate(arrays, axis=axis)

    def flip_last(self, x: Array) -> Array:
        """``x`` with its last axis reversed."""
        return x[..., ::-1]

    def einsum(self, spec: str, *operands: Array) -> Array:
        return np.einsum(spec, *operands)

    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        return np.matmul(a, b, out=out)

    def subtract(self, a: Array, b: Array, out: Array) -> Array:
        return np.subtract(a, b, out=out)

    def mean(self, x: Array, axis: int | tuple[int, ...]) -> Array:
        return x.mean(axis=axis)

    def std(self, x: Array, axis: int | tuple[int, ...]) -> Array:
        """Population standard deviation (ddof 0)."""
        return x.std(axis=axis)

    def sqrt(self, x: Array) -> Array:
        return np.sqrt(x)

    def where(self, condition: Array, a: Array, b: Array | float) -> Array:
        return np.where(condition, a, b)

    def clip_(self, x: Array, low: float, high: float) -> Array:
        """Clip ``x`` in place."""
        return x.clip(low, high, out=x)

    def eigh_vectors(self, gram: Array) -> Array:
        """The eigenvectors of symmetric ``gram`` (``(w, w)`` or a stack ``(N, w, w)``),
        columns in ascending order of eigenvalue. ``gram`` may be overwritten."""
        w = gram.shape[-1]
        if gram.ndim == 2 and w > _SCIPY_EIGH_ABOVE:
            import scipy.linalg

            _, vecs = scipy.linalg.eigh(gram, driver="evd", overwrite_a=True, check_finite=False)
            return vecs
        return np.linalg.eigh(gram)[1]

    def nbytes(self, x: Array) -> int:
        return int(x.nbytes)

    def size(self, x: Array) -> int:
        return int(x.size)

    def extrema(self, x: Array) -> tuple[float, float]:
        """The smallest and largest value (NaN when there is one)."""
        return float(x.min()), float(x.max())

    def like_input(self, values: Array, original: Array) -> Array:
        """``values`` (float64) as an array of ``original``'s type, dtype and device;
        integer dtypes are rounded to nearest and saturated to the dtype's range."""
        dtype = np.asarray(original).dtype
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.rint(values), info.min, info.max).astype(dtype)
        if dtype == np.bool_:
            raise TypeError("boolean arrays are masks, not images")
        return np.asarray(values, dtype=dtype)


class TorchBackend(Backend):
    """PyTorch tensors, on the CPU or a CUDA device; float64 inside."""

    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def float64(self, x: Array) -> Array:
        return x.to(self.torch.float64)

    def as_bool(self, x: Array, like: Array) -> Array:
        if isinstance(x, self.torch.Tensor):
            return x.to(device=like.device, dtype=self.torch.bool)
        return self.torch.as_tensor(np.asarray(x, dtype=bool), device=like.device)

    def asarray(self, values: Any, like: Array) -> Array:
        if isinstance(values, self.torch.Tensor):
            return values.to(device=like.device, dtype=self.torch.float64)
        host = np.asarray(values, dtype=np.float64)
        return self.torch.as_tensor(host, device=like.device)

    def asarray_like(self, values: Any, like: Array) -> Array:
        return self.torch.as_tensor(np.asarray(values), dtype=like.dtype, device=like.device)

    def copy(self, x: Array) -> Array:
        return x.clone()

    def cast(self, x: Array, dtype: str) -> Array:
        return x.to(getattr(self.torch, dtype))

    def numpy(self, x: Array) -> np.ndarray:
        if isinstance(x, self.torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def empty(self, shape: Sequence[int], like: Array) -> Array:
        return self.torch.empty(tuple(shape), dtype=self.torch.float64, device=like.device)

    def contiguous(self, x: Array) -> Array:
        return x.contiguous()

    def permute(self, x: Array, axes: Sequence[int]) -> Array:
        return x.permute(*axes)

    def moveaxis(self, x: Array, source: int, destination: int) -> Array:
        return self.torch.movedim(x, source, destination)

    def stack(self, arrays: Sequence[Array], axis: int = 0) -> Array:
        return self.torch.stack(list(arrays), dim=axis)

    def concatenate(self, arrays: Sequence[Array], axis: int = 0) -> Array:
        return self.torch.cat(list(arrays), dim=axis)

    def flip_last(self, x: Array) -> Array:
        return self.torch.flip(x, dims=(-1,))

    def einsum(self, spec: str, *operands: Array) -> Array:
        return self.torch.einsum(spec, *operands)

    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        if out is None:
            return self.torch.matmul(a, b)
        return self.torch.matmul(a, b, out=out)

    def subtract(self, a: Array, b: Array, out: Array) -> Array:
        return self.torch.sub(a, b, out=out)

    def mean(self, x: Array, axis: int | tuple[int, ...]) -> Array:
        return x.mean(dim=axis)

    def std(self, x: Array, axis: int | tuple[int, ...]) -> Array:
        # Two passes as NumPy's std (torch.std was 10x slower on (4, 128, 128) stacks).
        centred = x - x.mean(dim=axis, keepdim=True)
        return self.torch.sqrt((centred * centred).mean(dim=axis))

    def sqrt(self, x: Array) -> Array:
        return self.torch.sqrt(x)

    def where(self, condition: Array, a: Array, b: Array | float) -> Array:
        return self.torch.where(condition, a, b)

    def clip_(self, x: Array, low: float, high: float) -> Array:
        return x.clamp_(low, high)

    def eigh_vectors(self, gram: Array) -> Array:
        if gram.device.type == "cpu":
            # NumPy's LAPACK on the same memory (no copy): on the machines measured it was
            # faster than torch's bundled one (512 x 512: 32 against 37 ms on one thread).
            return self.torch.from_numpy(NUMPY.eigh_vectors(gram.numpy()))
        return self.torch.linalg.eigh(gram)[1]

    def nbytes(self, x: Array) -> int:
        return int(x.element_size() * x.numel())

    def size(self, x: Array) -> int:
        return int(x.numel())

    def extrema(self, x: Array) -> tuple[float, float]:
        low, high = self.torch.aminmax(x)
        return float(low), float(high)

    def like_input(self, values: Array, original: Array) -> Array:
        torch = self.torch
        dtype = original.dtype
        if dtype == torch.bool:
            raise TypeError("boolean tensors are masks, not images")
        if not (dtype.is_floating_point or dtype.is_complex):
            info = torch.iinfo(dtype)
            values = torch.clamp(torch.round(values), info.min, info.max)
        return values.to(device=original.device, dtype=dtype)


NUMPY = Backend()
_TORCH: list[TorchBackend] = []


def torch_backend() -> TorchBackend:
    """The PyTorch backend (imports torch on first use)."""
    if not _TORCH:
        _TORCH.append(TorchBackend())
    return _TORCH[0]


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch when nobody has)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


TORCH_ON_CPU = "SVDHARM_TORCH_ON_CPU"
"""Environment variable: ``1`` runs the torch backend on CPU tensors (for tests)."""


def backend_of(x: Any) -> Backend:
    """The backend for ``x``: PyTorch for a tensor on a GPU (or on the CPU with
    :data:`TORCH_ON_CPU` set), NumPy for anything else."""
    if is_tensor(x) and (x.device.type != "cpu" or os.environ.get(TORCH_ON_CPU) == "1"):
        return torch_backend()
    return NUMPY


def compute_view(x: Array) -> Array:
    """What the core computes on for ``x``: a CPU tensor's memory as a NumPy array (no copy;
    a dtype NumPy lacks, such as bfloat16, is converted), anything else as it is."""
    if is_tensor(x) and backend_of(x) is NUMPY:
        t = x.detach()
        torch = sys.modules["torch"]
        if t.dtype in (torch.bfloat16,) or t.dtype.is_complex:
            t = t.to(torch.float64)
        return t.numpy()
    return x


def like(values: Array, original: Array) -> Array:
    """Float64 ``values`` (NumPy or torch) as an array of ``original``'s type, dtype and
    device; integer dtypes rounded to nearest and saturated to the dtype's range."""
    if is_tensor(original):
        torch = torch_backend()
        if not is_tensor(values):
            values = torch.torch.from_numpy(np.ascontiguousarray(values))
        return torch.like_input(values, original)
    return NUMPY.like_input(values, original)
