"""Automatic foreground estimate (METHOD.md section 3b): pure arrays in, boolean masks out.

Empty background is what a wider field of view or more air around a body adds: dark,
flat, and connected to the image border. The estimate removes exactly that and nothing
else, so dark structures enclosed by the foreground (lungs, ventricles, vessels) stay in:

1. the intensity of a pixel is the mean of its channels, smoothed by a 3 x 3 median (so
   that noise neither breaks the background into islands nor bridges it into the body);
2. *dark* means within 10 % of the value range (the volume's minimum to its 99th
   percentile) above the minimum; the threshold is taken over the whole volume, so every
   slice of a volume is cut at the same level;
3. background is the dark pixels connected (8-connectivity, slice by slice) to the border
   of their slice, and specks of foreground smaller than 0.1 % of a slice left alone in
   it (noise); everything else is foreground;
4. an image framed by empty background has a mostly dark border: when less than a quarter
   of the volume's border pixels are dark (a tight crop, where dark tissue meets the
   frame), or the background is under 1 % of the volume, there is no background to remove
   and the mask is all True.

scipy.ndimage does the filtering and the labelling.
"""

from __future__ import annotations

from enum import Enum

import numpy as np


class MaskMode(str, Enum):
    """Which pixels the statistics are taken over (METHOD.md section 3b): every pixel
    (``none``, the paper's), the automatic foreground (``auto``, :func:`auto_mask`), or
    mask files given beside the images (``dir``)."""

    NONE = "none"
    AUTO = "auto"
    DIR = "dir"

    def __str__(self) -> str:
        return self.value


DARK_FRACTION = 0.10
"""Dark: within this fraction of the value range above the minimum."""
DARK_BORDER = 0.25
"""Less of the border dark than this: no empty surround (measured: fundus 0.88, CT phantom
1.0, chest radiograph 0.53, pydicom's CT_small 0.33; the tight head crop MR_small 0.17)."""
SPECK = 0.001
"""Foreground islands smaller than this share of a slice, alone in background, are noise."""
MIN_BACKGROUND = 0.01
"""Less background than this share of the pixels is taken as no background at all."""


def auto_mask(frames: np.ndarray) -> np.ndarray:
    """Foreground of a volume ``(f, c, h, w)`` (any real dtype, any unit) as bool ``(f, h, w)``.

    The input is not modified. A single image is a volume of one frame.
    """
    from scipy import ndimage

    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"frames must have shape (f, c, h, w), got {x.shape}")
    intensity = x.mean(axis=1)
    smooth = np.stack([ndimage.median_filter(plane, size=3, mode="nearest") for plane in intensity])
    low = float(smooth.min())
    high = float(np.percentile(smooth, 99))
    if not high > low:
        return np.ones(smooth.shape, dtype=bool)
    dark = smooth <= low + DARK_FRACTION * (high - low)
    border = np.concatenate(
        [dark[:, 0].ravel(), dark[:, -1].ravel(), dark[:, :, 0].ravel(), dark[:, :, -1].ravel()]
    )
    if border.mean() < DARK_BORDER:
        return np.ones(smooth.shape, dtype=bool)
    background = np.zeros_like(dark)
    structure = np.ones((3, 3), dtype=bool)
    for k, plane in enumerate(dark):
        labels, count = ndimage.label(plane, structure=structure)
        if count == 0:
            continue
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        touching = np.unique(edge[edge > 0])
        background[k] = np.isin(labels, touching)
        islands, count = ndimage.label(~background[k], structure=structure)
        if count > 1:
            sizes = np.bincount(islands.ravel())
            specks = np.flatnonzero(sizes < max(1, SPECK * plane.size))
            background[k] |= np.isin(islands, specks[specks > 0])
    if background.mean() < MIN_BACKGROUND:
        return np.ones(smooth.shape, dtype=bool)
    return ~background
