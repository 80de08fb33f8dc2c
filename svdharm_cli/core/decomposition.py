"""A volume's decomposition computed once and kept as data (METHOD.md section 7b).

An image's components and their pooled moments do not depend on the coefficients, so a
training pipeline may decompose each image once (a cached dataset) and draw new
coefficients every epoch: every method is then one weighted sum of the kept components plus
a constant per channel (METHOD.md sections 4-6), with no decomposition at all.

:func:`decompose_volume` is that one decomposition: each slice split by
:func:`~svdharm_cli.core.methods.decompose_channels` (the function the CLI's
:func:`~svdharm_cli.core.volume.transform_volume` calls for a file's N copies), its moments taken
over its mask and pooled over the slices (:func:`~svdharm_cli.core.methods.pool`), the
components formed explicitly and stored, by default, in float32. :class:`Decomposition` holds
the result and :meth:`Decomposition.combine` applies coefficients.

Storage. The components are kept as ``(C, n, *spatial)`` in the input's own spatial layout,
with one change: the last slot holds the input ``X`` itself rather than the finest band
``c_{n-1} = X - sum_{i<n-1} c_i``. Since ``sum_i a_i c_i = a_{n-1} X + sum_{i<n-1} (a_i -
a_{n-1}) c_i``, a weighted sum costs the same either way, but the pixels outside a mask (which
every method returns unchanged) and an input returned undrawn come back exactly. A weighted
sum is one matrix-vector product per channel, ``(n,) @ (n, voxels)``, on the components'
device (a CUDA tensor's decomposition recombines on the GPU).

Accuracy. Kept in float64 (``dtype="float64"``), results equal those from the image to float
rounding (about 1e-15). Kept in float32 (the default, half the memory), the components carry
float32 rounding (relative 6e-8), and a result differs from the image's by at most 1e-5 in
normalized units (measured largest 1e-7 on the test images; HU and raw results, relative to
their value range, alike). The cost: ``n`` times the float32 image (4x with the paper's cuts).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from svdharm_cli.core.backend import NUMPY, Array, Backend, backend_of, compute_view, like
from svdharm_cli.core.methods import (
    Moments,
    decompose_channels,
    method_map,
    pool,
    slice_moments,
)

STORAGE_DTYPES = ("float32", "float64")


@dataclass(frozen=True, eq=False)
class Decomposition:
    """An image's or volume's components and pooled moments, ready for any coefficients.

    Immutable: NumPy storage is read-only, and a deep copy (MONAI's ``CacheDataset`` copies
    each cached item before its random transforms; TorchIO copies every subject) returns the
    same object, so a cached decomposition is never copied per sample.

    Attributes
    ----------
    components
        ``(C, n, *spatial)`` in the storage dtype, on the input's device; slot ``n - 1``
        holds the input itself (see the module).
    moments
        Per-channel, per-component mean and population std ``(C, n)``, float64, pooled over
        all slices and the mask (what harmonization matches to a reference).
    fractions
        The band cuts.
    unit
        The input's unit (``"normalized"``, ``"HU"`` or ``"raw"``).
    mask
        Boolean ``spatial`` mask (statistics over its True pixels, others returned
        unchanged), or None.
    slice_axis
        The input axis of a volume's slices (1, 2 or 3), or None for a 2-D image.
    template
        An empty array of the input's type, dtype and device: what results are given back as
        (a framework adapter may keep its own type here: MONAI's ``MetaTensor`` with the
        input's meta).

    Pickling (DataLoader workers, MONAI's ``PersistentDataset`` and ``LMDBDataset``) goes
    through :func:`restore` with the arrays as torch tensors whenever torch is loaded, so
    that ``torch.load(..., weights_only=True)`` reads it once :func:`allow_torch_load` has
    registered :func:`restore` (the MONAI and TorchIO adapters do on import).
    """

    components: Array
    moments: Moments
    fractions: tuple[float, ...]
    unit: str
    mask: Array | None
    slice_axis: int | None
    template: Array

    @property
    def channels(self) -> int:
        return int(self.components.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[1])

    @cached_property
    def shape(self) -> tuple[int, ...]:
        """The shape of the input (and of every result): ``(C, *spatial)``."""
        return (self.channels, *(int(s) for s in self.components.shape[2:]))

    @property
    def dtype(self) -> str:
        """The storage dtype of the components (``"float32"`` or ``"float64"``)."""
        return str(self.components.dtype).replace("torch.", "")

    @property
    def nbytes(self) -> int:
        """Memory held: the components and the mask (the moments are a few numbers)."""
        xp = backend_of(self.components)
        mask = 0 if self.mask is None else xp.nbytes(self.mask)
        return xp.nbytes(self.components) + mask

    def __deepcopy__(self, memo: dict[int, Any]) -> Decomposition:
        return self

    def __copy__(self) -> Decomposition:
        return self

    def with_template(self, template: Array) -> Decomposition:
        """The same decomposition (sharing the components) giving results back as
        ``template``'s type (an adapter's own, such as a ``MetaTensor`` with meta)."""
        return Decomposition(
            self.components,
            self.moments,
            self.fractions,
            self.unit,
            self.mask,
            self.slice_axis,
            template,
        )

    def __repr__(self) -> str:
        return (
            f"Decomposition(shape={self.shape}, unit={self.unit!r}, fractions={self.fractions}, "
            f"dtype={self.dtype}, masked={self.mask is not None}, nbytes={self.nbytes})"
        )

    def affine(
        self,
        *,
        reference: tuple[np.ndarray, np.ndarray] | None = None,
        coefficients: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The map of a method as per-component scales ``(C, n)`` and per-channel offsets
        ``(C,)`` (None for de-harmonization: no offset), formed by
        :func:`~svdharm_cli.core.methods.method_map` as on every other path: harmonize with
        only ``reference`` (means, stds), de-harmonize with only ``coefficients``, harmonize
        the base and scale the bands with both."""
        return method_map(
            self.channels,
            self.n_components,
            reference=reference,
            coefficients=coefficients,
            own=self.moments,
        )

    def combine(self, scales: np.ndarray, offsets: np.ndarray | None = None) -> Array:
        """``sum_i scales[:, i] c_i + offsets`` per channel, in the storage dtype on the
        components' device, shaped like the input (unclipped; pixels outside the mask are
        the input's)."""
        xp = self._xp
        flat = self._flat
        c, n = flat.shape[:2]
        a = np.asarray(scales, dtype=np.float64)
        if a.shape != (c, n):
            raise ValueError(f"scales must have shape {(c, n)}, got {a.shape}")
        # Slot n - 1 is X: sum a_i c_i = a_last X + sum_{i < last} (a_i - a_last) c_i.
        weights = a - a[:, -1:]
        weights[:, -1] = a[:, -1]
        if xp is NUMPY:
            out = np.matmul(weights[:, None].astype(flat.dtype), flat)
        else:
            out = xp.matmul(xp.asarray_like(weights[:, None], flat), flat)
        out = out.reshape(self.shape)
        shift = None if offsets is None else np.asarray(offsets, dtype=np.float64)
        if shift is not None and shift.any():
            out += xp.asarray_like(shift.reshape(c, *[1] * (out.ndim - 1)), out)
        if self.mask is not None:
            outside = ~self.mask
            out[:, outside] = self.components[:, -1][:, outside]
        return out

    def describes(self, data: Array, samples: int = 4096) -> bool:
        """Whether ``data`` (the input's type, any dtype) is still the input decomposed: the
        same shape, and the same values at ``samples`` evenly strided voxels (a cheap check
        that catches a flip, a crop or an intensity change made after the decomposition)."""
        if tuple(int(s) for s in data.shape) != self.shape:
            return False
        xp = backend_of(self.components)
        kept = self.image().reshape(-1)
        step = max(1, kept.shape[0] // samples)
        ours = xp.numpy(kept[::step]).astype(np.float64)
        view = compute_view(data)
        theirs = backend_of(view).numpy(view.reshape(-1)[::step]).astype(np.float64)
        scale = max(1.0, float(np.abs(ours).max(initial=0.0)))
        return bool(np.allclose(ours, theirs, rtol=0.0, atol=1e-6 * scale))

    def image(self) -> Array:
        """The input as it was decomposed (in the storage dtype): a read-only view."""
        return self.components[:, -1]

    def input(self) -> Array:
        """The input as it was decomposed, a new array of its type, dtype and device (exact
        when the storage dtype holds the input's values: float32 holds 8- and 16-bit
        integers and float32 data)."""
        return self.give_back(backend_of(self.components).copy(self.image()), clip=False)

    def give_back(self, values: Array, clip: bool) -> Array:
        """``values`` (from :meth:`combine`) as an array of the input's type, dtype and
        device, clipped to [0, 1] first when ``clip``."""
        if self._xp is NUMPY:
            if clip:
                values.clip(0.0, 1.0, out=values)
            if self._same_dtype:  # no conversion: the array itself, or a tensor on its memory
                return values if isinstance(self.template, np.ndarray) else _from_numpy(values)
        elif clip:
            values = self._xp.clip_(values, 0.0, 1.0)
        return like(values, self.template)

    # Derived once per object (not pickled: see __getstate__), for the per-draw path.

    @cached_property
    def _xp(self) -> Backend:
        return backend_of(self.components)

    @cached_property
    def _flat(self) -> Array:
        return self.components.reshape(self.channels, self.n_components, -1)

    @cached_property
    def _same_dtype(self) -> bool:
        """Whether a CPU result in the storage dtype needs no conversion for the template."""
        if isinstance(self.template, np.ndarray):
            return bool(self.template.dtype == self.components.dtype)
        return (
            self.template.device.type == "cpu"
            and str(self.template.dtype).replace("torch.", "") == self.dtype
        )

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        torch = sys.modules.get("torch")
        on_host = self._xp is NUMPY
        template = self.template
        if isinstance(template, np.ndarray):
            template = template.dtype.str
        arrays = [self.components, self.moments.means, self.moments.stds, self.mask]
        if torch is not None:  # tensors and plain values only: weights_only loads read it
            arrays = [
                a if a is None or not isinstance(a, np.ndarray) else _tensor(a) for a in arrays
            ]
        components, means, stds, mask = arrays
        return restore, (
            components,
            int(self.moments.count),
            means,
            stds,
            tuple(float(f) for f in self.fractions),
            self.unit,
            mask,
            self.slice_axis,
            template,
            on_host,
        )


def _from_numpy(values: np.ndarray) -> Array:
    import torch

    return torch.from_numpy(values)


def _tensor(values: np.ndarray) -> Array:
    """A NumPy array as a CPU tensor (a copy: pickling writes it out anyway)."""
    import torch

    return torch.from_numpy(np.array(values))


def restore(
    components: Array,
    count: int,
    means: Array,
    stds: Array,
    fractions: tuple[float, ...],
    unit: str,
    mask: Array | None,
    slice_axis: int | None,
    template: Array | str,
    on_host: bool,
) -> Decomposition:
    """Rebuild a pickled :class:`Decomposition` (see its ``__reduce__``)."""

    def host(a: Any) -> Any:
        return a if a is None or isinstance(a, np.ndarray) else a.numpy()

    if on_host:
        components, mask = host(components), host(mask)
    if isinstance(template, str):
        template = np.empty(0, dtype=np.dtype(template))
    return Decomposition(
        components=freeze(components),
        moments=Moments(count, np.asarray(host(means)), np.asarray(host(stds))),
        fractions=tuple(fractions),
        unit=unit,
        mask=None if mask is None else freeze(mask),
        slice_axis=slice_axis,
        template=template,
    )


def allow_torch_load() -> None:
    """Let ``torch.load(..., weights_only=True)`` (MONAI's ``PersistentDataset`` and
    ``LMDBDataset``) read pickled decompositions: registers :func:`restore`, which builds
    one from tensors and plain values only."""
    import torch

    torch.serialization.add_safe_globals([restore])


def decompose_volume(
    slices: Sequence[Array],
    fractions: Sequence[float],
    masks: Sequence[Array | None] | None = None,
    dtype: str = "float32",
) -> tuple[Array, Moments]:
    """Decompose every slice ``(C, h, w)`` and pool the moments of all slices.

    Returns
    -------
    components, moments
        ``(S, C, n, h, w)`` in ``dtype`` on the slices' device, slot ``n - 1`` holding each
        slice itself; the moments pooled over all slices (over their masks' True pixels).
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(STORAGE_DTYPES)}, not {dtype!r}")
    if masks is None:
        masks = [None] * len(slices)
    moments, stacks = [], []
    for plane, mask in zip(slices, masks):
        bands = decompose_channels(plane, fractions, mask)
        moments.append(slice_moments(bands))
        xp = bands[0].xp
        parts = xp.stack([b.components() for b in bands])  # (C, n, h, w) float64
        parts[:, -1] = xp.float64(plane)
        stacks.append(xp.cast(parts, dtype))
        del parts
    xp = backend_of(stacks[0])
    return xp.stack(stacks), pool(moments)


def freeze(x: Array) -> Array:
    """``x`` made read-only where its library allows (NumPy); a tensor is returned as it is."""
    if isinstance(x, np.ndarray):
        x.flags.writeable = False
    return x
