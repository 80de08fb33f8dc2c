"""Nyul-Udupa histogram standardization as TorchIO's ``HistogramStandardization`` fits and
applies it: landmarks trained on a site's images (``HistogramStandardization.train``), then
each image's deciles mapped piecewise-linearly onto them. Statistics over the foreground as
TorchIO's docs suggest (voxels above the image's mean, ``ZNormalization.mean``).
Used by ``bench/downstream.py`` and ``bench/fidelity.py``."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio

KEY = "image"


def _foreground(tensor: torch.Tensor) -> torch.Tensor:
    return tensor > tensor.float().mean()


def _volume(image: np.ndarray) -> np.ndarray:
    """A 2-D image as TorchIO's ``(W, H, 1)``; a 3-D volume as it is."""
    x = np.asarray(image, np.float32)
    return x[..., None] if x.ndim == 2 else x


def train(images: Sequence[np.ndarray]) -> np.ndarray:
    """Landmarks from 2-D images or 3-D volumes (written as NIfTI files for TorchIO)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, image in enumerate(images):
            path = Path(tmp) / f"{k:05d}.nii"
            nib.save(nib.Nifti1Image(_volume(image), np.eye(4)), path)
            paths.append(path)
        return tio.HistogramStandardization.train(
            paths, masking_function=_foreground, progress=False
        )


def standardizer(landmarks: np.ndarray) -> tio.HistogramStandardization:
    return tio.HistogramStandardization({KEY: landmarks}, masking_method=_foreground)


def apply(transform: tio.HistogramStandardization, image: np.ndarray) -> np.ndarray:
    """One image or volume standardized (TorchIO's scale: landmarks span 0 to 100)."""
    tensor = torch.from_numpy(_volume(image)[None])
    subject = tio.Subject({KEY: tio.ScalarImage(tensor=tensor)})
    out = transform(subject)[KEY].data[0].numpy().astype(np.float64)
    return out.reshape(np.shape(image))
