"""The SVD band transforms as TorchIO transforms (``pip install 'svdharm[torchio]'``).

:class:`SVDHarmonize` and :class:`SVDDeharmonize` are intensity transforms (label maps are
never touched); :class:`RandomSVDDeharmonize` and :class:`RandomSVDHarmonizeDeharmonize`
are random transforms that draw their coefficients with TorchIO's ``sample_uniform`` (the
``torch`` generator, so ``torch.manual_seed`` reproduces a run and DataLoader workers draw
differently) and then apply their deterministic twin. The subject's history therefore holds
the twin with the drawn coefficients, and ``subject.get_composed_history()`` replays a
sample exactly. One draw per subject is shared by all its intensity images (unless
``coefficients`` is a dict by image name, TorchIO's convention).

Images are TorchIO's ``(C, W, H, D)``; a 2-D image ``(C, W, H, 1)`` is one slice, a volume's
slices lie along the last axis unless ``slice_axis`` says otherwise. ``masking_method`` is
TorchIO's (the name of a label map in the subject, a callable, bounds, an anatomical label)
or ``"auto"`` (the CLI's automatic foreground estimate): statistics over the mask, values
outside it unchanged. Values are in ``unit`` (see :mod:`svdharm_cli.transforms`; MR from a
NIfTI file is usually ``"raw"``, CT ``"HU"``); the data keep their dtype.

Decompose once (METHOD.md section 7b): :class:`SVDDecompose` stores the decomposition of each
intensity image in the subject, under the key :data:`DECOMPOSITIONS` (a dict by image name),
and every transform here then computes from it (one weighted sum) instead of decomposing
the image again. TorchIO has no cached dataset, so decompose the subjects once, before the
``SubjectsDataset``::

    decompose = SVDDecompose(unit="raw")
    subjects = [decompose(s) for s in subjects]   # once: the expensive step
    dataset = tio.SubjectsDataset(subjects, transform=RandomSVDDeharmonize(unit="raw"))

The dataset's deep copy of each subject shares the decompositions (they are immutable). A
random transform removes :data:`DECOMPOSITIONS` from the subject it returns, so that the
loader does not carry it to the main process; its recorded twin (the history) computes
from the image. A decomposition is used only while the image still holds the values it
was made from (a sampled check); an image changed in between (a flip, a crop, an intensity
transform) is refused with a message: put such transforms after the SVD ones. The mask is
fixed by :class:`SVDDecompose`'s ``masking_method``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torchio as tio
from torchio.transforms.augmentation import RandomTransform
from torchio.transforms.intensity_transform import IntensityTransform

from svdharm_cli import transforms as core
from svdharm_cli.core.bands import DEFAULT_FRACTIONS, validate_fractions
from svdharm_cli.core.decomposition import Decomposition, allow_torch_load
from svdharm_cli.core.methods import DEFAULT_HIGH, DEFAULT_LOW
from svdharm_cli.transforms._inputs import kind_for

__all__ = [
    "DECOMPOSITIONS",
    "RandomSVDDeharmonize",
    "RandomSVDHarmonizeDeharmonize",
    "SVDDecompose",
    "SVDDeharmonize",
    "SVDHarmonize",
]

allow_torch_load()  # subjects saved with torch.save load back with weights_only

DECOMPOSITIONS = "svd_decompositions"
"""The subject's key under which :class:`SVDDecompose` keeps a dict of decompositions by
image name."""


class _Masked(IntensityTransform):
    """What the intensity transforms share: the mask of each image, the call of the core."""

    masking_method: Any
    slice_axis: int

    def _mask(self, subject: tio.Subject, image: tio.ScalarImage) -> Any:
        if (
            self.masking_method is None
            or isinstance(self.masking_method, str)
            and (self.masking_method == "auto")
        ):
            return self.masking_method
        mask = self.get_mask_from_masking_method(self.masking_method, subject, image.data)
        return mask[0] if mask.ndim == 4 else mask

    def _each(self, subject: tio.Subject, make: Any) -> tio.Subject:
        kept = _kept(subject)
        for name, image in self.get_images_dict(subject).items():
            fn = make(name)
            d = kept.get(name)
            if d is None:
                image.set_data(fn(image.data, mask=self._mask(subject, image)))
                continue
            if not d.describes(image.data):
                raise ValueError(
                    f"image {name!r} changed after SVDDecompose (its values or shape differ "
                    "from those decomposed): put spatial and intensity transforms after the "
                    "SVD transforms, or decompose again"
                )
            if self.masking_method is not None and d.mask is None:
                raise ValueError(
                    f"{self.name} has a masking_method, but image {name!r} was decomposed "
                    "without a mask: give masking_method to SVDDecompose"
                )
            image.set_data(fn(d))
        return subject


def _kept(subject: tio.Subject) -> dict[str, Decomposition]:
    """The decompositions :class:`SVDDecompose` kept in ``subject``, by image name."""
    kept: Any = dict.get(subject, DECOMPOSITIONS)
    return kept or {}


class SVDDecompose(_Masked):
    """Keep the decomposition of each intensity image in the subject (see the module);
    the images themselves are not changed. ``fractions``, ``unit``, ``masking_method``,
    ``slice_axis`` and ``dtype`` are those of :class:`svdharm_cli.transforms.SVDDecompose`
    (``masking_method`` TorchIO's, or ``"auto"``)."""

    def __init__(
        self,
        *,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        unit: str = "normalized",
        masking_method: Any = None,
        slice_axis: int = -1,
        dtype: str = "float32",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fractions = validate_fractions(fractions)
        self.unit = unit
        self.masking_method = masking_method
        self.slice_axis = slice_axis
        self.dtype = dtype
        self.decompose = core.SVDDecompose(
            fractions=fractions, unit=unit, slice_axis=slice_axis, dtype=dtype
        )
        self.args_names = ["fractions", "unit", "masking_method", "slice_axis", "dtype"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        kept = dict(_kept(subject))
        for name, image in self.get_images_dict(subject).items():
            kept[name] = self.decompose(image.data, mask=self._mask(subject, image))
        subject[DECOMPOSITIONS] = kept
        return subject


class _Consumes:
    """A random transform that drops :data:`DECOMPOSITIONS` from the subject it returns."""

    def __call__(self, data: Any) -> Any:
        out = super().__call__(data)  # type: ignore[misc]
        if isinstance(out, tio.Subject) and DECOMPOSITIONS in out:
            if out is data:  # not drawn (p): the caller's subject is left as it was
                out = copy.copy(out)
            del out[DECOMPOSITIONS]
        return out


class SVDHarmonize(_Masked):
    """Match every band to a reference (a JSON path or a loaded reference); with
    ``coefficients`` (``n_components`` values, one row per channel, or a dict of those by
    image name) the base is matched and the bands are scaled, which is what
    :class:`RandomSVDHarmonizeDeharmonize` records."""

    def __init__(
        self,
        reference: core.ReferenceLike,
        coefficients: Any = None,
        *,
        kind: str | dict[str, str] = "",
        unit: str = "normalized",
        masking_method: Any = None,
        slice_axis: int = -1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reference = core.load_reference(reference)
        self.coefficients = coefficients
        self.kind = kind
        self.unit = unit
        self.masking_method = masking_method
        self.slice_axis = slice_axis
        core.SVDHarmonize(self.reference, unit=unit, slice_axis=slice_axis)  # checks them
        self.args_names = [
            "reference",
            "coefficients",
            "kind",
            "unit",
            "masking_method",
            "slice_axis",
        ]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        def make(name: str) -> core.SVDHarmonize:
            return core.SVDHarmonize(
                self.reference,
                kind=kind_for(self.kind, name),
                coefficients=self.get_parameter(self.coefficients, name),
                unit=self.unit,
                slice_axis=self.slice_axis,
            )

        return self._each(subject, make)


class SVDDeharmonize(_Masked):
    """Scale the components by ``coefficients`` (``n_components`` values, one row per
    channel, or a dict of those by image name)."""

    def __init__(
        self,
        coefficients: Any,
        *,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        unit: str = "normalized",
        masking_method: Any = None,
        slice_axis: int = -1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.coefficients = coefficients
        self.fractions = validate_fractions(fractions)
        self.unit = unit
        self.masking_method = masking_method
        self.slice_axis = slice_axis
        self.args_names = ["coefficients", "fractions", "unit", "masking_method", "slice_axis"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        def make(name: str) -> core.SVDDeharmonize:
            return core.SVDDeharmonize(
                self.get_parameter(self.coefficients, name),
                fractions=self.fractions,
                unit=self.unit,
                slice_axis=self.slice_axis,
            )

        return self._each(subject, make)


def _draw(
    transform: RandomTransform, low: float, high: float, channels: int, n: int, per_channel: bool
) -> list[list[float]]:
    """Coefficients ``(channels, n)`` from TorchIO's ``sample_uniform`` (torch's generator)."""
    rows = channels if per_channel else 1
    drawn = [[float(transform.sample_uniform(low, high)) for _ in range(n)] for _ in range(rows)]
    return drawn if per_channel else drawn * channels


def _channels(subject: tio.Subject, transform: IntensityTransform) -> int | None:
    images = transform.get_images(subject)
    return None if not images else int(images[0].data.shape[0])


class RandomSVDDeharmonize(_Consumes, RandomTransform, IntensityTransform):
    """De-harmonization as an augmentation: ``Uniform[low, high]`` coefficients drawn once
    per subject, applied by :class:`SVDDeharmonize` (which the history records)."""

    def __init__(
        self,
        low: float = DEFAULT_LOW,
        high: float = DEFAULT_HIGH,
        *,
        per_channel: bool = False,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        unit: str = "normalized",
        masking_method: Any = None,
        slice_axis: int = -1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not low <= high:
            raise ValueError(f"low ({low}) must not exceed high ({high})")
        self.low, self.high = float(low), float(high)
        self.per_channel = per_channel
        self.fractions = validate_fractions(fractions)
        self.unit = unit
        self.masking_method = masking_method
        self.slice_axis = slice_axis

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        channels = _channels(subject, self)
        if channels is None:
            return subject
        n = len(self.fractions) + 1
        coefficients = _draw(self, self.low, self.high, channels, n, self.per_channel)
        twin = SVDDeharmonize(
            coefficients,
            fractions=self.fractions,
            unit=self.unit,
            masking_method=self.masking_method,
            slice_axis=self.slice_axis,
            **self._get_base_args(),
        )
        result = twin(subject)
        assert isinstance(result, tio.Subject)
        return result


class RandomSVDHarmonizeDeharmonize(_Consumes, RandomTransform, IntensityTransform):
    """The paper's best method as an augmentation: the base matched to the reference, the
    bands scaled by coefficients drawn once per subject, applied by :class:`SVDHarmonize`
    with ``coefficients`` (which the history records). With ``p`` below 1 a subject not
    drawn is left as it is (TorchIO's meaning of ``p``); put an :class:`SVDHarmonize` before
    it to harmonize every subject."""

    def __init__(
        self,
        reference: core.ReferenceLike,
        low: float = DEFAULT_LOW,
        high: float = DEFAULT_HIGH,
        *,
        per_channel: bool = False,
        kind: str | dict[str, str] = "",
        unit: str = "normalized",
        masking_method: Any = None,
        slice_axis: int = -1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not low <= high:
            raise ValueError(f"low ({low}) must not exceed high ({high})")
        self.reference = core.load_reference(reference)
        self.kind = kind
        self.low, self.high = float(low), float(high)
        self.per_channel = per_channel
        self.unit = unit
        self.masking_method = masking_method
        self.slice_axis = slice_axis

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        channels = _channels(subject, self)
        if channels is None:
            return subject
        n = self.reference.n_components
        coefficients = _draw(self, self.low, self.high, channels, n, self.per_channel)
        for row in coefficients:
            row[0] = 1.0  # the base is matched; its coefficient is not used
        twin = SVDHarmonize(
            self.reference,
            coefficients,
            kind=self.kind,
            unit=self.unit,
            masking_method=self.masking_method,
            slice_axis=self.slice_axis,
            **self._get_base_args(),
        )
        result = twin(subject)
        assert isinstance(result, tio.Subject)
        return result
