"""References for the transforms: loaded from a JSON file's path, or fitted from images in
memory (both re-exported by :mod:`svdharm_cli.transforms`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from svdharm_cli.core.backend import Array
from svdharm_cli.core.bands import DEFAULT_FRACTIONS, validate_fractions
from svdharm_cli.core.masks import MaskMode
from svdharm_cli.core.reference import Reference
from svdharm_cli.core.volume import volume_moments
from svdharm_cli.transforms._inputs import MaskLike, _check_range, _check_unit, _Layout

ReferenceLike = Any
"""A :class:`~svdharm_cli.core.reference.Reference` or the path of a reference JSON file."""


def load_reference(reference: ReferenceLike) -> Reference:
    """A :class:`~svdharm_cli.core.reference.Reference` from itself or a JSON file's path."""
    if isinstance(reference, Reference):
        return reference
    if isinstance(reference, (str, os.PathLike)):
        return Reference.read(reference)
    raise TypeError(
        f"reference must be a Reference or the path of a reference JSON file, got "
        f"{type(reference).__name__}"
    )


def fit_reference(
    images: Iterable[Array],
    *,
    kind: str = "",
    unit: str = "normalized",
    fractions: Sequence[float] | None = None,
    mask: MaskLike | Sequence[Any] = None,
    slice_axis: int = -1,
    per_slice: bool = False,
) -> Reference:
    """A reference from images in memory: what ``fit-reference`` writes for the same images.

    Parameters
    ----------
    images
        Arrays or tensors, ``(C, H, W)`` or volumes ``(C, X, Y, Z)`` (a volume counts as one
        image, its slices pooled; ``per_slice`` counts each slice as one); kinds may mix,
        each (unit, channel count) giving one entry.
    kind
        What the images are (``"T1w"``, ``"CT"``, ...: METHOD.md section 3d); the entries
        get it, and :class:`SVDHarmonize` with the same ``kind`` picks them. ``""`` (the
        default): images of no kind, a reference that serves every kind.
    unit
        The images' unit (see the module); all images share it.
    fractions
        The band cuts; the paper's (0.07, 0.20, 0.50) by default.
    mask
        None, ``"auto"``, or one boolean mask (or None) per image.

    Returns
    -------
    Reference
        With no sources (arrays have no file to name or hash); ``Reference.to_json()``
        gives the file ``fit-reference`` would write, which the CLI and
        :class:`SVDHarmonize` read.
    """
    fr = validate_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    _check_unit(unit)
    items = list(images)
    if not items:
        raise ValueError("a reference needs at least one image")
    if isinstance(mask, str) or mask is None:
        masks: list[Any] = [mask] * len(items)
        mode = MaskMode.NONE if mask is None else MaskMode.AUTO
    else:
        masks = list(mask)
        if len(masks) != len(items):
            raise ValueError(f"{len(masks)} masks for {len(items)} images")
        mode = MaskMode.DIR
    stats = []
    for img, m in zip(items, masks):
        layout = _Layout.of(img, slice_axis)
        _check_range(layout, unit)
        count = layout.volume.shape[0]
        groups = [[s] for s in range(count)] if per_slice else None
        for pooled in volume_moments(layout.slices, fr, layout.masks(m), groups):
            stats.append((unit, pooled.means, pooled.stds, kind))
    return Reference.fit(stats, fr, mask=mode.value)
