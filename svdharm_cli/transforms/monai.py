"""The SVD band transforms as MONAI transforms (``pip install 'svdharm[monai]'``).

Array transforms :class:`SVDHarmonize` (a ``Transform``: deterministic, so
``CacheDataset`` caches its output), :class:`RandSVDDeharmonize` and
:class:`RandSVDHarmonizeDeharmonize` (``RandomizableTransform``: ``prob``, draws from
``self.R``, so ``set_random_state``, ``monai.utils.set_determinism`` and MONAI's
``DataLoader`` workers seed them as they seed MONAI's own), and their dictionary versions
:class:`SVDHarmonized`, :class:`RandSVDDeharmonized`, :class:`RandSVDHarmonizeDeharmonized`
(``keys``, ``allow_missing_keys``; one draw per sample, shared by all its keys, as MONAI's
``RandGaussianNoised`` shares its noise).

Inputs are channel-first arrays or tensors, ``(C, H, W)`` or ``(C, H, W, D)`` (slices along
the last axis unless ``slice_axis`` says otherwise), in the stated ``unit`` (normalized:
``ScaleIntensity`` first). A ``MetaTensor`` comes back a ``MetaTensor`` with its meta
(affine, filename, applied operations); NumPy arrays come back NumPy arrays; the dtype and
device are the input's. The computation is :mod:`svdharm_cli.transforms`' (float64).
A random transform that is not applied (``prob``) returns its input as a tensor, as MONAI's
own random intensity transforms do; :class:`RandSVDHarmonizeDeharmonize` still harmonizes it.

Decompose once (METHOD.md section 7b): :class:`SVDDecompose` and its dictionary version
:class:`SVDDecomposed` are deterministic, so ``CacheDataset``, ``PersistentDataset`` and
``LMDBDataset`` cache their output, a
:class:`~svdharm_cli.core.decomposition.Decomposition` that carries the ``MetaTensor``'s meta.
Every transform here accepts it in place of the image and returns a ``MetaTensor`` with
that meta, at the cost of one weighted sum instead of a decomposition (``PersistentDataset``
reads it back with ``weights_only``: importing this module registers it as safe)::

    CacheDataset(items, Compose([LoadImaged("img"), EnsureChannelFirstd("img"),
                                 ScaleIntensityd("img"), SVDDecomposed("img"),
                                 RandSVDDeharmonized("img")]))

The decomposition fixes the mask (``mask``/``mask_key`` of :class:`SVDDecomposed`); nothing
between it and the SVD transforms may change the image (put spatial augmentations after).
A decomposition is immutable and a deep copy of it is itself, so ``CacheDataset``'s
``copy_cache`` costs nothing for it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends

from svdharm_cli import transforms as core
from svdharm_cli.core.bands import DEFAULT_FRACTIONS, validate_fractions
from svdharm_cli.core.decomposition import Decomposition, allow_torch_load
from svdharm_cli.core.methods import DEFAULT_HIGH, DEFAULT_LOW
from svdharm_cli.transforms._inputs import kind_for
from svdharm_cli.transforms._monai_items import (
    as_is,
    channel_count,
    mask_for,
    mask_of,
    of_kind,
    run_on,
    shared_draw,
)

__all__ = [
    "RandSVDDeharmonize",
    "RandSVDDeharmonized",
    "RandSVDHarmonizeDeharmonize",
    "RandSVDHarmonizeDeharmonized",
    "SVDDecompose",
    "SVDDecomposed",
    "SVDHarmonize",
    "SVDHarmonized",
]

_BACKEND = [TransformBackends.TORCH, TransformBackends.NUMPY]

allow_torch_load()  # PersistentDataset and LMDBDataset load their cache with weights_only


class SVDDecompose(Transform):
    """The decomposition of the input as data (deterministic: cached by MONAI's datasets);
    see :class:`svdharm_cli.transforms.SVDDecompose` for the parameters. A ``MetaTensor``'s
    meta and applied operations travel with the decomposition and come back on every
    result computed from it."""

    backend = _BACKEND

    def __init__(
        self,
        *,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        unit: str = "normalized",
        mask: core.MaskLike = None,
        slice_axis: int = -1,
        dtype: str = "float32",
    ) -> None:
        self.transform = core.SVDDecompose(
            fractions=fractions, unit=unit, mask=mask, slice_axis=slice_axis, dtype=dtype
        )

    def __call__(self, img: Any, mask: core.MaskLike = None) -> Decomposition:
        if isinstance(img, MetaTensor):
            d = self.transform(img.as_tensor(), mask=mask)
            template = MetaTensor(
                d.template,
                meta=dict(img.meta),
                applied_operations=list(img.applied_operations),
            )
            return d.with_template(template)
        return self.transform(img, mask=mask)


class SVDDecomposed(MapTransform):
    """Dictionary version of :class:`SVDDecompose`: each of ``keys`` replaced by its
    decomposition; ``mask_key`` names an item holding each sample's mask."""

    backend = _BACKEND

    def __init__(
        self,
        keys: KeysCollection,
        *,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        unit: str = "normalized",
        mask: core.MaskLike = None,
        mask_key: Hashable | None = None,
        slice_axis: int = -1,
        dtype: str = "float32",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.decompose = SVDDecompose(
            fractions=fractions, unit=unit, mask=mask, slice_axis=slice_axis, dtype=dtype
        )
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = mask_of(d, self.mask_key)
        for key in self.key_iterator(d):
            d[key] = self.decompose(d[key], mask)
        return d


class SVDHarmonize(Transform):
    """Match every band of the input to a reference; see
    :class:`svdharm_cli.transforms.SVDHarmonize` for the parameters."""

    backend = _BACKEND

    def __init__(
        self,
        reference: core.ReferenceLike,
        *,
        kind: str = "",
        unit: str = "normalized",
        mask: core.MaskLike = None,
        slice_axis: int = -1,
    ) -> None:
        self.transform = core.SVDHarmonize(
            reference, kind=kind, unit=unit, mask=mask, slice_axis=slice_axis
        )

    def __call__(self, img: Any, mask: core.MaskLike = None, kind: str | None = None) -> Any:
        """``kind`` (a dictionary transform's, per key) replaces the transform's own."""
        return run_on(of_kind(self.transform, kind), img, mask)


class _Draw(RandomizableTransform):
    """Coefficients drawn from ``self.R``: ``prob`` first (MONAI's ``randomize``), then one
    row of ``Uniform[low, high]`` (or one per channel)."""

    def __init__(
        self, low: float, high: float, per_channel: bool, prob: float, n_components: int
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if not low <= high:
            raise ValueError(f"low ({low}) must not exceed high ({high})")
        self.low, self.high = float(low), float(high)
        self.per_channel = per_channel
        self.n_components = n_components
        self.coefficients: np.ndarray | None = None
        """The last draw, ``(channels, n_components)``; None when it was not applied."""

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            self.coefficients = None
            return
        channels = 1 if data is None else channel_count(data)
        n = self.n_components
        if self.per_channel:
            self.coefficients = self.R.uniform(self.low, self.high, size=(channels, n))
        else:
            self.coefficients = np.tile(self.R.uniform(self.low, self.high, size=n), (channels, 1))


class RandSVDDeharmonize(_Draw):
    """De-harmonization as an augmentation; see
    :class:`svdharm_cli.transforms.RandSVDDeharmonize` for the parameters (``prob`` is
    MONAI's, its default 1.0)."""

    backend = _BACKEND

    def __init__(
        self,
        low: float = DEFAULT_LOW,
        high: float = DEFAULT_HIGH,
        *,
        per_channel: bool = False,
        prob: float = 1.0,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        unit: str = "normalized",
        mask: core.MaskLike = None,
        slice_axis: int = -1,
    ) -> None:
        self.fractions = validate_fractions(fractions)
        super().__init__(low, high, per_channel, prob, len(self.fractions) + 1)
        self.unit, self.mask, self.slice_axis = unit, mask, slice_axis
        core.SVDDeharmonize(  # checks the arguments now rather than at the first sample
            np.ones(self.n_components), fractions=fractions, unit=unit, slice_axis=slice_axis
        )

    def __call__(self, img: Any, mask: core.MaskLike = None, randomize: bool = True) -> Any:
        if randomize:
            self.randomize(img)
        if self.coefficients is None:
            return as_is(img)
        fn = core.SVDDeharmonize(
            self.coefficients,
            fractions=self.fractions,
            unit=self.unit,
            mask=self.mask,
            slice_axis=self.slice_axis,
        )
        return run_on(fn, img, mask)


class RandSVDHarmonizeDeharmonize(_Draw):
    """The paper's best method as an augmentation; see
    :class:`svdharm_cli.transforms.RandSVDHarmonizeDeharmonize` for the parameters."""

    backend = _BACKEND

    def __init__(
        self,
        reference: core.ReferenceLike,
        low: float = DEFAULT_LOW,
        high: float = DEFAULT_HIGH,
        *,
        per_channel: bool = False,
        prob: float = 1.0,
        kind: str = "",
        unit: str = "normalized",
        mask: core.MaskLike = None,
        slice_axis: int = -1,
    ) -> None:
        self.harmonize = core.SVDHarmonize(
            reference, kind=kind, unit=unit, mask=mask, slice_axis=slice_axis
        )
        n = self.harmonize.reference.n_components
        super().__init__(low, high, per_channel, prob, n)

    def __call__(
        self,
        img: Any,
        mask: core.MaskLike = None,
        randomize: bool = True,
        kind: str | None = None,
    ) -> Any:
        if randomize:
            self.randomize(img)
        coefficients = self.coefficients  # None: not drawn, harmonized only
        if coefficients is not None:
            coefficients = coefficients.copy()
            coefficients[:, 0] = 1.0
        h = self.harmonize
        fn = core.SVDHarmonize(
            h.reference,
            kind=h.kind if kind is None else kind,
            coefficients=coefficients,
            unit=h.unit,
            mask=h.mask,
            slice_axis=h.slice_axis,
        )
        return run_on(fn, img, mask)


class SVDHarmonized(MapTransform):
    """Dictionary version of :class:`SVDHarmonize`: ``keys`` harmonized, other items (a
    label) untouched; ``mask_key`` names an item holding each sample's mask."""

    backend = _BACKEND

    def __init__(
        self,
        keys: KeysCollection,
        reference: core.ReferenceLike,
        *,
        kind: str | Mapping[Hashable, str] = "",
        unit: str = "normalized",
        mask: core.MaskLike = None,
        mask_key: Hashable | None = None,
        slice_axis: int = -1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.harmonizer = SVDHarmonize(reference, unit=unit, mask=mask, slice_axis=slice_axis)
        self.kind = kind
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = mask_of(d, self.mask_key)
        for key in self.key_iterator(d):
            mine = mask_for(d[key], mask, self.mask_key)
            d[key] = self.harmonizer(d[key], mine, kind=kind_for(self.kind, key))
        return d


class _SharedDraw(RandomizableTransform, MapTransform):
    """A dictionary transform whose array transform (``self.array``) draws once per sample
    for all its keys; seeding it seeds both."""

    array: Any
    harmonize_always = False
    """Whether a sample not drawn is still harmonized (harmonize + de-harmonize)."""

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> _SharedDraw:
        super().set_random_state(seed, state)
        self.array.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return shared_draw(self, self.array, data, self.harmonize_always)


class RandSVDDeharmonized(_SharedDraw):
    """Dictionary version of :class:`RandSVDDeharmonize`: one draw per sample, shared by
    all its ``keys`` (which must have the same number of channels)."""

    backend = _BACKEND

    def __init__(
        self,
        keys: KeysCollection,
        low: float = DEFAULT_LOW,
        high: float = DEFAULT_HIGH,
        *,
        per_channel: bool = False,
        prob: float = 1.0,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        unit: str = "normalized",
        mask: core.MaskLike = None,
        mask_key: Hashable | None = None,
        slice_axis: int = -1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.array = RandSVDDeharmonize(
            low,
            high,
            per_channel=per_channel,
            prob=1.0,
            fractions=fractions,
            unit=unit,
            mask=mask,
            slice_axis=slice_axis,
        )
        self.mask_key = mask_key


class RandSVDHarmonizeDeharmonized(_SharedDraw):
    """Dictionary version of :class:`RandSVDHarmonizeDeharmonize`: one draw per sample,
    shared by all its ``keys``; a sample not drawn (``prob``) is harmonized only."""

    backend = _BACKEND
    harmonize_always = True

    def __init__(
        self,
        keys: KeysCollection,
        reference: core.ReferenceLike,
        low: float = DEFAULT_LOW,
        high: float = DEFAULT_HIGH,
        *,
        per_channel: bool = False,
        prob: float = 1.0,
        kind: str | Mapping[Hashable, str] = "",
        unit: str = "normalized",
        mask: core.MaskLike = None,
        mask_key: Hashable | None = None,
        slice_axis: int = -1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.kind = kind
        self.array = RandSVDHarmonizeDeharmonize(
            reference,
            low,
            high,
            per_channel=per_channel,
            prob=1.0,
            unit=unit,
            mask=mask,
            slice_axis=slice_axis,
        )
        self.mask_key = mask_key
