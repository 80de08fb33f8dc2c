"""SVD band harmonization and de-harmonization as training-loop transforms (METHOD.md 7a).

Framework-free callables: a NumPy array or a torch tensor in, the same type, dtype, device
and shape out. Images are channel-first, ``(C, H, W)``, and volumes ``(C, X, Y, Z)`` with
their slices along ``slice_axis`` (the last by default, as MONAI and TorchIO hold them; a
TorchIO 2-D image ``(C, W, H, 1)`` is a volume of one slice). The work is the CLI's own
(:mod:`svdharm_cli.core.volume`): every slice decomposed in float64 on the input's device, the
moments pooled over the slices and the mask, one map per component applied to every slice.

- :class:`SVDDecompose`: the decomposition as data (:class:`~svdharm_cli.core.decomposition.
  Decomposition`), computed once: every transform below accepts it wherever it accepts an
  image and then costs one weighted sum, not a decomposition (see "Decompose once" below).
- :class:`SVDHarmonize`: match each band to a reference (the JSON files ``fit-reference``
  writes, or :func:`fit_reference` on arrays); with ``coefficients`` the base is matched
  and the bands are scaled (the replay of :class:`RandSVDHarmonizeDeharmonize`).
- :class:`SVDDeharmonize`: scale the components by given coefficients (a replayed draw).
- :class:`RandSVDDeharmonize`, :class:`RandSVDHarmonizeDeharmonize`: one draw of
  ``Uniform[low, high]`` coefficients per call, shared by the channels (unless
  ``per_channel``) and by every slice; ``last_coefficients`` holds it and ``replay()``
  returns the deterministic twin that reproduces the call.

Units are the CLI's, stated by the caller since an array does not carry one:
``"normalized"`` (values in [0, 1], what MONAI's ``ScaleIntensity`` gives; results are
clipped to [0, 1]), ``"HU"`` (CT in Hounsfield units) and ``"raw"`` (any other values, as
NIfTI stores them); HU and raw results are not saturated. Integer inputs are rounded to
nearest and saturated to their dtype's range.

Random state: each random transform owns a NumPy generator seeded by ``seed``. Inside a
PyTorch ``DataLoader`` worker it is re-seeded from ``seed`` and the worker's seed (which the
DataLoader derives from its own generator for every worker and epoch), so workers never
repeat each other's draws and a run with a seeded ``torch`` generator reproduces. MONAI and
TorchIO users get their framework's conventions from :mod:`svdharm_cli.transforms.monai`
and :mod:`svdharm_cli.transforms.torchio`.

Decompose once: an image's components and their pooled moments do not change between
epochs, only the coefficients do (METHOD.md section 7b). ``SVDDecompose()(img)`` returns a
:class:`~svdharm_cli.core.decomposition.Decomposition` (picklable, immutable, its size in
``nbytes``: ``n`` times the float32 image, 4x with the paper's cuts); cache it (MONAI's
``CacheDataset`` or ``PersistentDataset``, a ``Dataset`` that decomposes in ``__init__``) and
give it to the transforms in place of the image. The result equals the result from the image
within 1e-5 in normalized units (float32 storage; exactly from ``dtype="float64"``), with
the same draws for the same seed, in the original input's type, dtype, device and shape. The
decomposition fixes the fractions, the unit and the mask: a transform with other fractions or
another unit refuses it, and the mask is given to :class:`SVDDecompose`, not to the transform.

torch is imported only when a tensor is given: ``import svdharm_cli.transforms`` does not.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from svdharm_cli.core.backend import Array, backend_of, compute_view, is_tensor
from svdharm_cli.core.bands import DEFAULT_FRACTIONS, validate_fractions
from svdharm_cli.core.decomposition import STORAGE_DTYPES, Decomposition, decompose_volume, freeze
from svdharm_cli.core.methods import DEFAULT_HIGH, DEFAULT_LOW
from svdharm_cli.core.reference import Entry, Reference, describe_kind
from svdharm_cli.transforms._inputs import (
    MaskLike,
    _apply,
    _check_range,
    _coefficient_rows,
    _host,
    _Input,
    _Layout,
)
from svdharm_cli.transforms._reference import ReferenceLike, fit_reference, load_reference

__all__ = [
    "Decomposition",
    "RandSVDDeharmonize",
    "RandSVDHarmonizeDeharmonize",
    "SVDDecompose",
    "SVDDeharmonize",
    "SVDHarmonize",
    "fit_reference",
    "load_reference",
]

ImageLike = Any
"""An array or tensor (see the module), or a :class:`~svdharm_cli.core.decomposition.Decomposition`
of one made by :class:`SVDDecompose`."""


class SVDDecompose(_Input):
    """The decomposition of an image or volume, as data (METHOD.md section 7b).

    A deterministic transform: an array or tensor in, a
    :class:`~svdharm_cli.core.decomposition.Decomposition` out, which every transform of this
    module accepts in place of the image (see the module). Slices are decomposed in float64
    on the input's device, as the transforms do, and their moments pooled over the volume
    and the mask; the components are then kept in ``dtype``.

    Parameters
    ----------
    fractions
        The band cuts: a reference's (``reference.fractions``) for the harmonizing
        transforms; the paper's by default.
    unit
        The input's unit (``"normalized"``, ``"HU"`` or ``"raw"``), as for the transforms.
    mask
        None, ``"auto"`` or a boolean array: the statistics are taken over it and the pixels
        outside it come back unchanged from every transform. A ``mask`` given to the call
        replaces it for that call.
    slice_axis
        The slice axis of a volume (``-1``: the last).
    dtype
        ``"float32"`` (the default: ``n`` times the float32 image, results within 1e-5 of the
        image's) or ``"float64"`` (twice that, results equal to the image's).
    """

    def __init__(
        self,
        *,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        unit: str = "normalized",
        mask: MaskLike = None,
        slice_axis: int = -1,
        dtype: str = "float32",
    ) -> None:
        self.fractions = validate_fractions(fractions)
        self._input_options(unit, mask, slice_axis)
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(STORAGE_DTYPES)}, not {dtype!r}")
        self.dtype = dtype

    def __call__(self, img: Array, mask: MaskLike = None) -> Decomposition:
        if isinstance(img, Decomposition):
            raise TypeError("the input is already a Decomposition")
        layout = _Layout.of(img, self.slice_axis)
        _check_range(layout, self.unit)
        masks = layout.masks(self.mask if mask is None else mask)
        stacked, moments = decompose_volume(layout.slices, self.fractions, masks, self.dtype)
        xp = backend_of(stacked)
        axis = layout.slice_axis
        # (S, C, n, h, w) -> (C, n, *spatial), the input's own layout.
        components = stacked[0] if axis is None else xp.moveaxis(stacked, 0, axis + 1)
        return Decomposition(
            components=freeze(xp.contiguous(components)),
            moments=moments,
            fractions=self.fractions,
            unit=self.unit,
            mask=None if masks is None else _spatial_mask(masks, axis, stacked),
            slice_axis=axis,
            template=_template(img),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(fractions={self.fractions}, unit={self.unit!r}, "
            f"dtype={self.dtype!r})"
        )


def _spatial_mask(masks: Sequence[Any], axis: int | None, like_: Array) -> Array | None:
    """Per-slice masks as one boolean mask of the input's spatial shape (None: every pixel)."""
    xp = backend_of(like_)
    planes = [
        xp.as_bool(np.ones(like_.shape[-2:], bool) if m is None else compute_view(m), like_)
        for m in masks
    ]
    whole = planes[0] if axis is None else xp.moveaxis(xp.stack(planes), 0, axis - 1)
    if bool(whole.all()):
        return None
    return freeze(xp.contiguous(whole))


def _template(img: Array) -> Array:
    """An empty array of ``img``'s type, dtype and device."""
    if is_tensor(img):
        import torch

        return torch.empty(0, dtype=img.dtype, device=img.device)
    return np.empty(0, dtype=np.asarray(img).dtype)


class SVDHarmonize(_Input):
    """Match every band's mean and std to a reference (METHOD.md section 4).

    Parameters
    ----------
    reference
        A reference JSON path or a loaded :class:`~svdharm_cli.core.reference.Reference`; the
        entry of the input's kind, unit and channel count is used, as on the CLI.
    kind
        What the inputs are (``"T1w"``, ``"MR"``, ...: METHOD.md section 3d), to pick the
        reference's entry of that kind; ``""`` (the default) for images of no kind. A
        reference without kinds serves every kind.
    coefficients
        Optional band coefficients (``n_components`` values, or one row per channel): the
        base is matched and the bands scaled (METHOD.md section 6); the base's coefficient
        is ignored. This is what :meth:`RandSVDHarmonizeDeharmonize.replay` returns.
    unit
        ``"normalized"``, ``"HU"`` or ``"raw"``: the input's unit (see the module).
    mask
        None, ``"auto"`` or a boolean array: statistics over the mask, pixels outside it
        returned unchanged. A ``mask`` given to the call replaces it for that call.
    slice_axis
        The slice axis of a volume (``-1``: the last).
    """

    def __init__(
        self,
        reference: ReferenceLike,
        *,
        kind: str = "",
        coefficients: Any = None,
        unit: str = "normalized",
        mask: MaskLike = None,
        slice_axis: int = -1,
    ) -> None:
        self.reference = load_reference(reference)
        self.kind = kind
        self._input_options(unit, mask, slice_axis)
        self.coefficients = None if coefficients is None else np.asarray(_host(coefficients))

    def entry(self, layout: _Layout | Decomposition) -> Entry:
        """The reference's entry for the input's kind, unit and channel count."""
        found = self.reference.entry(self.unit, layout.channels, self.kind)
        if found is None:
            what = describe_kind(self.unit, layout.channels, self.kind or "of no kind")
            raise ValueError(
                f"the input is {what}, shape {tuple(layout.shape)}, but the reference has "
                f"entries only for {self.reference.kinds()}"
            )
        return found

    def __call__(self, img: ImageLike, mask: MaskLike = None) -> Array:
        n = self.reference.n_components
        layout = self._source(img, mask, self.reference.fractions)
        entry = self.entry(layout)
        rows = None
        if self.coefficients is not None:
            rows = _coefficient_rows(self.coefficients, entry.channels, n)
            rows[:, 0] = 1.0  # the base is matched, its coefficient unused
        return _apply(
            layout,
            fractions=self.reference.fractions,
            entry=entry,
            coefficients=rows,
            unit=self.unit,
            mask=self.mask if mask is None else mask,
        )

    def __repr__(self) -> str:
        extra = "" if self.coefficients is None else f", coefficients={self.coefficients.tolist()}"
        kind = f"kind={self.kind!r}, " if self.kind else ""
        return f"{type(self).__name__}({kind}unit={self.unit!r}{extra})"


class SVDDeharmonize(_Input):
    """Scale component i of every channel by ``coefficients[i]`` (METHOD.md section 5).

    ``coefficients`` holds ``len(fractions) + 1`` values shared by the channels, or one row
    per channel; the other parameters are those of :class:`SVDHarmonize`.
    """

    def __init__(
        self,
        coefficients: Any,
        *,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        unit: str = "normalized",
        mask: MaskLike = None,
        slice_axis: int = -1,
    ) -> None:
        self.fractions = validate_fractions(fractions)
        self.coefficients = np.asarray(_host(coefficients), dtype=np.float64)
        if (
            self.coefficients.ndim not in (1, 2)
            or self.coefficients.shape[-1] != len(self.fractions) + 1
        ):
            raise ValueError(
                f"coefficients of shape {self.coefficients.shape} do not fit "
                f"{len(self.fractions)} cuts ({len(self.fractions) + 1} components)"
            )
        self._input_options(unit, mask, slice_axis)

    def __call__(self, img: ImageLike, mask: MaskLike = None) -> Array:
        n = len(self.fractions) + 1
        layout = self._source(img, mask, self.fractions)
        rows = _coefficient_rows(self.coefficients, layout.channels, n)
        return _apply(
            layout,
            fractions=self.fractions,
            entry=None,
            coefficients=rows,
            unit=self.unit,
            mask=self.mask if mask is None else mask,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(coefficients={self.coefficients.tolist()})"


class _Random:
    """A generator of its own, re-seeded in each DataLoader worker (see the module)."""

    def __init__(
        self, low: float, high: float, per_channel: bool, prob: float, seed: int | None
    ) -> None:
        if not low <= high:
            raise ValueError(f"low ({low}) must not exceed high ({high})")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], not {prob}")
        self.low, self.high = float(low), float(high)
        self.per_channel = per_channel
        self.prob = float(prob)
        self.seed = seed
        self._worker: Any = None
        self._rng = np.random.default_rng(seed)
        self.last_coefficients: np.ndarray | None = None
        """The coefficients of the last call, ``(channels, n_components)``; None when that
        call did not apply them (``prob``)."""

    def set_random_state(self, seed: int | None) -> _Random:
        """Start the generator again from ``seed``."""
        self.seed = seed
        self._worker = None
        self._rng = np.random.default_rng(seed)
        return self

    def _generator(self) -> np.random.Generator:
        data = sys.modules.get("torch.utils.data")
        info = data.get_worker_info() if data is not None else None
        if info is not None and info.seed != self._worker:
            self._worker = info.seed
            key = [info.seed] if self.seed is None else [self.seed, info.seed]
            self._rng = np.random.default_rng(key)
        return self._rng

    def randomize(self, channels: int, n: int) -> np.ndarray | None:
        """Draw for one call: whether to apply (``prob``), then the coefficients (both are
        always drawn, so the stream does not depend on the outcome)."""
        rng = self._generator()
        apply = rng.random() < self.prob
        if self.per_channel:
            drawn = rng.uniform(self.low, self.high, size=(channels, n))
        else:
            drawn = rng.uniform(self.low, self.high, size=n)[None].repeat(channels, axis=0)
        self.last_coefficients = drawn if apply else None
        return self.last_coefficients


class RandSVDDeharmonize(_Random, _Input):
    """De-harmonization as an augmentation: coefficients ``~ Uniform[low, high]``, one draw
    per call (METHOD.md section 5); ``prob`` is the chance a call applies them (an input
    not drawn is returned as it is). ``replay()`` gives the :class:`SVDDeharmonize` of the
    last call."""

    def __init__(
        self,
        low: float = DEFAULT_LOW,
        high: float = DEFAULT_HIGH,
        *,
        per_channel: bool = False,
        prob: float = 1.0,
        seed: int | None = None,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        unit: str = "normalized",
        mask: MaskLike = None,
        slice_axis: int = -1,
    ) -> None:
        super().__init__(low, high, per_channel, prob, seed)
        self.fractions = validate_fractions(fractions)
        self._input_options(unit, mask, slice_axis)

    def __call__(self, img: ImageLike, mask: MaskLike = None) -> Array:
        n = len(self.fractions) + 1
        layout = self._source(img, mask, self.fractions)
        coefficients = self.randomize(layout.channels, n)
        if coefficients is None:  # not drawn: the input as it is
            return img.input() if isinstance(img, Decomposition) else img
        return _apply(
            layout,
            fractions=self.fractions,
            entry=None,
            coefficients=coefficients,
            unit=self.unit,
            mask=self.mask if mask is None else mask,
        )

    def replay(self) -> SVDDeharmonize:
        """The deterministic transform that repeats the last call."""
        if self.last_coefficients is None:
            raise ValueError("the last call applied no coefficients (or there was none)")
        return SVDDeharmonize(
            self.last_coefficients,
            fractions=self.fractions,
            unit=self.unit,
            mask=self.mask,
            slice_axis=self.slice_axis,
        )


class RandSVDHarmonizeDeharmonize(_Random):
    """The paper's best method (METHOD.md section 6): the base matched to the reference,
    the bands scaled by coefficients ``~ Uniform[low, high]`` drawn once per call.

    With ``prob`` below 1, an input not drawn is still harmonized (every component matched,
    as :class:`SVDHarmonize` does), so that every sample is in the reference's statistics,
    as the test images will be. ``last_coefficients`` holds the draw, its base column 1
    (unused), or None; ``replay()`` gives the :class:`SVDHarmonize` of the last call.
    """

    def __init__(
        self,
        reference: ReferenceLike,
        low: float = DEFAULT_LOW,
        high: float = DEFAULT_HIGH,
        *,
        per_channel: bool = False,
        prob: float = 1.0,
        seed: int | None = None,
        kind: str = "",
        unit: str = "normalized",
        mask: MaskLike = None,
        slice_axis: int = -1,
    ) -> None:
        super().__init__(low, high, per_channel, prob, seed)
        self.harmonize = SVDHarmonize(
            reference, kind=kind, unit=unit, mask=mask, slice_axis=slice_axis
        )

    @property
    def reference(self) -> Reference:
        return self.harmonize.reference

    def __call__(self, img: ImageLike, mask: MaskLike = None) -> Array:
        n = self.reference.n_components
        layout = self.harmonize._source(img, mask, self.reference.fractions)
        entry = self.harmonize.entry(layout)
        rows = self.randomize(entry.channels, n)
        if rows is not None:
            rows[:, 0] = 1.0  # the base is matched; its coefficient is not used
        return _apply(
            layout,
            fractions=self.reference.fractions,
            entry=entry,
            coefficients=rows,
            unit=self.harmonize.unit,
            mask=self.harmonize.mask if mask is None else mask,
        )

    def replay(self) -> SVDHarmonize:
        """The deterministic transform that repeats the last call."""
        return SVDHarmonize(
            self.reference,
            kind=self.harmonize.kind,
            coefficients=self.last_coefficients,
            unit=self.harmonize.unit,
            mask=self.harmonize.mask,
            slice_axis=self.harmonize.slice_axis,
        )
