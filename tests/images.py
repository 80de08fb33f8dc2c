"""Generated test images (every random source seeded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def textured(h: int, w: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Normalized float image with smooth structure, edges and noise: ``(c, h, w)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for c in range(channels):
        f = rng.uniform(2, 9, 3)
        img = 0.45 + 0.25 * np.sin(f[0] * xx + c) * np.cos(f[1] * yy)
        img += 0.15 * (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.05 + 0.02 * c)
        img += rng.uniform(0.01, 0.05) * rng.standard_normal((h, w))
        out.append(np.clip(img, 0, 1))
    return np.stack(out)


def stored(channels: np.ndarray, bits: int = 8) -> np.ndarray:
    """``(c, h, w)`` normalized to a Pillow-ready stored array (``(h, w)`` or ``(h, w, c)``)."""
    top = 2**bits - 1
    arr = np.rint(np.clip(channels, 0, 1) * top).astype(np.uint16 if bits == 16 else np.uint8)
    return arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)


def save(path: Path, channels: np.ndarray, bits: int = 8, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored(channels, bits)).save(path, **kwargs)
    return path


def load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)
