"""Volumes the tests write themselves: DICOM series, CT in several encodings, NIfTI, TIFF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from tests.dicom_files import make_dicom


def phantom(slices: int, rows: int = 48, cols: int = 40, seed: int = 0) -> np.ndarray:
    """A smooth body with a brighter disc that grows and shrinks along the slices, plus noise;
    values in [0, 1], shape ``(slices, rows, cols)``. End slices are sparse, so per-slice
    statistics differ a lot from the volume's."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[0:slices, 0:rows, 0:cols]
    z = (zz + 0.5) / slices
    body = ((yy - rows / 2) / (0.45 * rows)) ** 2 + ((xx - cols / 2) / (0.45 * cols)) ** 2 < 1
    radius = 0.35 * np.sin(np.pi * z) + 0.02
    disc = ((yy / rows - 0.5) ** 2 + (xx / cols - 0.5) ** 2) < radius**2
    vol = 0.1 + 0.35 * body + 0.3 * disc + 0.05 * np.sin(7 * xx / cols + 3 * z)
    return np.clip(vol + 0.02 * rng.standard_normal(vol.shape), 0, 1)


def write_series(
    folder: Path,
    stored: np.ndarray,
    *,
    modality: str = "MR",
    bits_stored: int = 12,
    shuffle_names: bool = True,
    **attributes: object,
) -> list[Path]:
    """One file per slice of ``stored`` ``(slices, rows, cols)``, sharing a series; file names
    deliberately not in slice order, positions along a tilted normal."""
    series = generate_uid(entropy_srcs=[str(folder), "series"])
    n = stored.shape[0]
    order = np.random.default_rng(1).permutation(n) if shuffle_names else np.arange(n)
    paths = []
    for i in range(n):
        path = folder / f"IM{int(order[i]):04d}.dcm"
        make_dicom(
            path,
            stored[i],
            bits_stored=bits_stored,
            series=series,
            SOPClassUID=CTImageStorage if modality == "CT" else MRImageStorage,
            Modality=modality,
            InstanceNumber=i + 1,
            ImageOrientationPatient=[1, 0, 0, 0, 0.8, -0.6],
            ImagePositionPatient=[0.0, 0.6 * 2.5 * i, 0.8 * 2.5 * i],
            SeriesNumber=3,
            SeriesDescription="T1 axial",
            SOPInstanceUID=generate_uid(entropy_srcs=[str(path), "instance"]),
            **attributes,
        )
        paths.append(path)
    return paths


def ct_hu(slices: int = 6, rows: int = 40, cols: int = 36, seed: int = 3) -> np.ndarray:
    """A CT-like volume in integer Hounsfield units: air -1000, soft tissue ~40, bone ~700."""
    vol = phantom(slices, rows, cols, seed)
    return np.rint(-1000 + 1900 * vol).astype(np.int64)


CT_ENCODINGS = {
    # name: (stored dtype, BitsStored, PixelRepresentation, intercept)
    "unsigned12": (np.uint16, 12, 0, -1024),
    "signed16": (np.int16, 16, 1, 0),
    "unsigned16": (np.uint16, 16, 0, -32768),
}


def write_ct(folder: Path, hu: np.ndarray, encoding: str) -> list[Path]:
    """The same HU volume as a CT series in one of :data:`CT_ENCODINGS`."""
    dtype, bits, signed, intercept = CT_ENCODINGS[encoding]
    stored = (hu - intercept).astype(dtype)
    return write_series(
        folder,
        stored,
        modality="CT",
        bits_stored=bits,
        RescaleSlope=1,
        RescaleIntercept=intercept,
        RescaleType="HU",
        shuffle_names=False,
    )


def write_nifti(path: Path, data: np.ndarray, *, slope: float = 1.0, inter: float = 0.0) -> Path:
    """A NIfTI-1 file with a non-trivial affine, qform/sform codes and scaling."""
    import nibabel as nib

    affine = np.array(
        [[0.9, 0.1, 0, -40], [0, 1.1, 0.05, -60], [0, 0, 2.5, 10], [0, 0, 0, 1]], dtype=float
    )
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=2)
    img.header.set_slope_inter(slope, inter)
    img.header.set_data_dtype(data.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def write_tiff(path: Path, stack: np.ndarray, **kwargs: object) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, stack, **kwargs)
    return path
