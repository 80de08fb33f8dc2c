"""DICOM files the tests write themselves, and the installed pydicom / pydicom-data files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "SECRET-4711"


def make_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    series: str | None = None,
    **attributes: object,
) -> Path:
    """Write ``pixels`` (``(rows, cols)``, ``(frames, rows, cols)`` or with a trailing 3)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(path), "instance"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study"])
    ds.SeriesInstanceUID = series or generate_uid(entropy_srcs=[str(path), "series"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["frame of reference"])
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = "OT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def radiograph(rows: int = 96, cols: int = 80, bits: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    img = 0.5 + 0.3 * np.sin(5 * xx) * np.cos(3 * yy) + 0.03 * rng.standard_normal((rows, cols))
    return np.rint(np.clip(img, 0, 1) * (2**bits - 1)).astype(np.uint16)


def installed_files() -> list[Path]:
    """pydicom's own test files and, when installed, pydicom-data's."""
    import pydicom

    roots = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import data_store

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return sorted(p for root in roots for p in root.glob("*.dcm"))


def copy_installed(dest: Path) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for src in installed_files():
        shutil.copy(src, dest / src.name)
        names.append(src.name)
    return names
