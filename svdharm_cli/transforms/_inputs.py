"""What the training-loop transforms share about their inputs: the channel-first layout of
an array or tensor, its checks, the options every transform takes, and the method applied
to an input or to a kept decomposition. Private to :mod:`svdharm_cli.transforms`."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from svdharm_cli.core.backend import Array, Backend, backend_of, compute_view, like
from svdharm_cli.core.decomposition import Decomposition
from svdharm_cli.core.reference import UNITS, Entry, describe_kind
from svdharm_cli.core.volume import transform_volume

MaskLike = Any
"""None (every pixel), ``"auto"`` (the CLI's ``--mask auto`` estimate) or a boolean array
of the input's spatial shape (with or without a leading channel axis of 1)."""

NORMALIZED_SLACK = 1e-6
"""How far outside [0, 1] a ``normalized`` input may stray (rounding of earlier steps)."""

_ONE_THREAD: set[int] = set()
"""Processes (DataLoader workers) whose BLAS was limited to one thread."""


def _one_blas_thread_in_workers() -> None:
    """In a PyTorch DataLoader worker, limit BLAS to one thread, as PyTorch limits its own
    threads there: several workers each running a threaded LAPACK oversubscribe the cores
    (an epoch of 256 128 x 128 images: 2.7 s, against 0.47 s so limited, 2 workers on 2
    cores)."""
    data = sys.modules.get("torch.utils.data")
    if data is None or os.getpid() in _ONE_THREAD or data.get_worker_info() is None:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    _ONE_THREAD.add(os.getpid())


@dataclass
class _Layout:
    """An input split into slices ``(C, h, w)``, float64 on its device, and put back."""

    xp: Backend
    original: Array
    volume: Array
    """``(S, C, h, w)``: the input with its slice axis first (a view where possible)."""
    slice_axis: int | None
    """The spatial axis of the input holding the slices (1, 2 or 3); None for 2-D."""
    extrema: tuple[float, float]

    @classmethod
    def of(cls, img: Array, slice_axis: int) -> _Layout:
        _one_blas_thread_in_workers()
        data = compute_view(img)
        xp = backend_of(data)
        if img.ndim not in (3, 4):
            raise ValueError(
                f"expected a channel-first image (C, H, W) or volume (C, X, Y, Z), got shape "
                f"{tuple(img.shape)}; add a channel axis first (MONAI's EnsureChannelFirst)"
            )
        if 0 in tuple(img.shape):
            raise ValueError(f"the input is empty (shape {tuple(img.shape)})")
        if str(img.dtype).endswith("bool"):
            raise TypeError("a boolean array is a mask, not an image")
        x = xp.float64(data)
        extrema = xp.extrema(x)
        if not all(math.isfinite(v) for v in extrema):
            raise ValueError("the input has NaN or infinite values")
        if img.ndim == 3:
            return cls(xp, img, x[None], None, extrema)
        axis = _spatial_axis(slice_axis)
        # Slices contiguous (one copy): every product of the decomposition runs faster.
        return cls(xp, img, xp.contiguous(xp.moveaxis(x, axis, 0)), axis, extrema)

    @property
    def channels(self) -> int:
        return int(self.volume.shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.original.shape)

    @property
    def slices(self) -> list[Array]:
        return [self.volume[s] for s in range(self.volume.shape[0])]

    def describe(self, unit: str) -> str:
        return f"{describe_kind(unit, self.channels)}, shape {tuple(self.original.shape)}"

    def masks(self, mask: MaskLike) -> list[Array | None] | None:
        """One boolean ``(h, w)`` mask per slice, or None."""
        if mask is None:
            return None
        if isinstance(mask, str):
            if mask != "auto":
                raise ValueError(f"mask must be None, 'auto' or a boolean array, not {mask!r}")
            from svdharm_cli.core.masks import auto_mask

            estimate = auto_mask(self.xp.numpy(self.volume))
            return list(estimate)
        m = compute_view(mask)
        spatial = tuple(self.original.shape[1:])
        if tuple(m.shape) == (1, *spatial):
            m = m[0]
        if tuple(m.shape) != spatial:
            raise ValueError(
                f"a mask of shape {tuple(mask.shape)} does not fit an input of shape "
                f"{tuple(self.original.shape)} (it needs the spatial shape {spatial})"
            )
        xp = backend_of(m)
        if self.slice_axis is None:
            return [m]
        moved = xp.moveaxis(m, self.slice_axis - 1, 0)
        return [moved[s] for s in range(moved.shape[0])]

    def assemble(self, slices: Sequence[Array], unit: str) -> Array:
        """New slices as an array of the input's type, dtype, device and layout."""
        xp = self.xp
        stacked = xp.stack(slices)
        out = stacked[0] if self.slice_axis is None else xp.moveaxis(stacked, 0, self.slice_axis)
        if unit == "normalized":
            xp.clip_(out, 0.0, 1.0)
        return like(out, self.original)


class _Input:
    """The options every transform takes about its input, checked and kept."""

    unit: str
    mask: MaskLike
    slice_axis: int

    def _input_options(self, unit: str, mask: MaskLike, slice_axis: int) -> None:
        self.unit = _check_unit(unit)
        self.mask = mask
        self.slice_axis = slice_axis
        _spatial_axis(slice_axis)

    def _source(
        self, img: Any, mask: MaskLike, fractions: Sequence[float]
    ) -> _Layout | Decomposition:
        """A kept decomposition (checked against these options and ``fractions``), or
        the input's slices."""
        if isinstance(img, Decomposition):
            _check_decomposed(img, fractions, self.unit, self.mask if mask is None else mask, self)
            return img
        return _Layout.of(img, self.slice_axis)


def _spatial_axis(slice_axis: int) -> int:
    """The input axis (1, 2 or 3) of a volume's slices; ``slice_axis`` counts from the
    first spatial axis (0, 1, 2) or from the end (-1, -2, -3)."""
    if slice_axis in (-1, -2, -3):
        return 4 + slice_axis
    if slice_axis in (0, 1, 2):
        return slice_axis + 1
    raise ValueError(f"slice_axis must be a spatial axis (0, 1, 2 or -1, -2, -3), not {slice_axis}")


def _check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {unit!r}")
    return unit


def _check_range(layout: _Layout, unit: str) -> None:
    if unit != "normalized":
        return
    low, high = layout.extrema
    if low < -NORMALIZED_SLACK or high > 1 + NORMALIZED_SLACK:
        raise ValueError(
            f"the input's values span [{low:.6g}, {high:.6g}], but unit 'normalized' means "
            "[0, 1] (scale it first, e.g. MONAI's ScaleIntensity; CT in Hounsfield units is "
            "unit='HU', other physical values unit='raw')"
        )


def _coefficient_rows(coefficients: Any, channels: int, n: int) -> np.ndarray:
    """Coefficients as ``(channels, n)``: one row shared by every channel, or one per channel."""
    c = np.array(_host(coefficients), dtype=np.float64)
    if c.shape == (n,):
        return np.tile(c, (channels, 1))
    if c.shape == (channels, n):
        return c
    raise ValueError(
        f"coefficients of shape {c.shape} do not fit {channels} channel(s) and {n} components "
        f"(give {n} values, or {channels} rows of {n})"
    )


def _host(values: Any) -> Any:
    return backend_of(values).numpy(values) if hasattr(values, "shape") else values


def _apply_decomposed(
    d: Decomposition,
    *,
    fractions: Sequence[float],
    entry: Entry | None,
    coefficients: np.ndarray | None,
    unit: str,
) -> Array:
    """A method applied to a kept decomposition: one weighted sum (METHOD.md section 7b)."""
    _one_blas_thread_in_workers()
    scales, offsets = d.affine(
        reference=None if entry is None else (entry.mean, entry.std), coefficients=coefficients
    )
    return d.give_back(d.combine(scales, offsets), clip=unit == "normalized")


def _check_decomposed(
    d: Decomposition, fractions: Sequence[float], unit: str, mask: MaskLike, owner: object
) -> None:
    """Refuse a decomposition made with other cuts or another unit, or given a mask."""
    name = type(owner).__name__
    if tuple(d.fractions) != tuple(fractions):
        raise ValueError(
            f"the decomposition was made with fractions {d.fractions}, but {name} uses "
            f"{tuple(fractions)}: decompose with SVDDecompose(fractions={tuple(fractions)})"
        )
    if d.unit != unit:
        raise ValueError(
            f"the decomposition was made with unit {d.unit!r}, but {name} has unit {unit!r}"
        )
    if mask is not None:
        raise ValueError(
            f"{name} was given a mask with a decomposition: the statistics of a decomposition "
            "are fixed when it is made, so give the mask to SVDDecompose instead"
        )


def _apply(
    source: _Layout | Decomposition,
    *,
    fractions: Sequence[float],
    entry: Entry | None,
    coefficients: np.ndarray | None,
    unit: str,
    mask: MaskLike,
) -> Array:
    """A method applied to an input (its slices decomposed) or to a kept decomposition
    (one weighted sum, its mask fixed: see :meth:`_Input._source`)."""
    if isinstance(source, Decomposition):
        return _apply_decomposed(
            source, fractions=fractions, entry=entry, coefficients=coefficients, unit=unit
        )
    layout = source
    _check_range(layout, unit)
    out = transform_volume(
        layout.slices,
        fractions,
        reference=None if entry is None else (entry.mean, entry.std),
        coefficients=[coefficients],
        masks=layout.masks(mask),
    )[0]
    return layout.assemble(out, unit)


def kind_for(kind: str | Mapping[Any, str], key: Hashable) -> str:
    """The kind of the item at ``key`` (a MONAI key, a TorchIO image name): ``kind`` itself,
    or its entry for ``key`` when it is a mapping (``""``, no kind, for a key it does not
    name)."""
    return kind.get(key, "") if isinstance(kind, Mapping) else kind
