"""Generate sample_images/: synthetic fundus-like and radiograph-like images from two sites.

Site A is bright, sharp and clean; site B is darker, flatter, blurred and noisy, as if from
another scanner. Volumes too: a CT series per site (16 slice files in Hounsfield units; site
A stores them signed, site B unsigned with intercept -1024 and reads 60 HU high with more
noise) and an MR head per site as NIfTI (int16, site B scaled by 1.7 and blurred).
Everything is drawn from fixed seeds, so rerunning this script reproduces the committed
files. Run: python scripts/make_sample_images.py [OUTDIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

SIZE = 256
SITES = {
    # name: (gain, offset, gamma, blur sigma, noise std) in normalized units
    "site_a": (1.00, 0.00, 1.00, 0.0, 0.006),
    "site_b": (0.70, 0.06, 1.25, 1.6, 0.030),
}


def fundus(rng: np.random.Generator) -> np.ndarray:
    """An RGB retina-like image: orange disc, bright optic disc, dark branching vessels."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    r = np.hypot(xx - 0.5, yy - 0.5)
    disc = np.clip((0.47 - r) / 0.02, 0, 1)
    shading = 1.0 - 0.8 * r**2
    od_x, od_y = rng.uniform(0.62, 0.7), rng.uniform(0.42, 0.55)
    optic = np.exp(-(((xx - od_x) ** 2 + (yy - od_y) ** 2) / 0.004))
    vessels = np.zeros((SIZE, SIZE))
    for _ in range(7):
        angle = rng.uniform(0, 2 * np.pi)
        curve = rng.uniform(-2.0, 2.0)
        t = np.linspace(0, 0.5, 600)
        px = od_x + t * np.cos(angle + curve * t)
        py = od_y + t * np.sin(angle + curve * t)
        ix = np.clip((px * SIZE).astype(int), 0, SIZE - 1)
        iy = np.clip((py * SIZE).astype(int), 0, SIZE - 1)
        vessels[iy, ix] = 1.0
    vessels = ndimage.gaussian_filter(vessels, 1.2)
    vessels /= vessels.max()
    texture = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 3) * 0.05
    base = (shading + texture) * disc
    red = 0.85 * base + 0.15 * optic - 0.25 * vessels * disc
    green = 0.42 * base + 0.45 * optic - 0.30 * vessels * disc
    blue = 0.12 * base + 0.35 * optic - 0.08 * vessels * disc
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 1)


def radiograph(rng: np.random.Generator) -> np.ndarray:
    """A grayscale chest-radiograph-like image: dark lungs, bright spine, ribs, soft tissue."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    body = np.clip((0.48 - np.abs(xx - 0.5)) / 0.05, 0, 1)
    img = 0.55 * body
    for cx in (0.32, 0.68):
        lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.48) / 0.33) ** 2 < 1
        img -= 0.32 * ndimage.gaussian_filter(lung.astype(float), 4)
    img += 0.35 * np.exp(-(((xx - 0.5) / 0.035) ** 2))
    for k in range(9):
        rib = np.abs(yy - 0.2 - 0.07 * k - 0.05 * (xx - 0.5) ** 2 * 8) < 0.008
        img += 0.10 * ndimage.gaussian_filter(rib.astype(float), 1.5) * body
    img += 0.3 * np.exp(-(((xx - 0.55) ** 2 + (yy - 0.75) ** 2) / 0.01))
    img += ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 2) * 0.02
    return np.clip(img + 0.08, 0, 1)


def acquire(image: np.ndarray, site: str, rng: np.random.Generator) -> np.ndarray:
    gain, offset, gamma, blur, noise = SITES[site]
    out = np.clip(image, 0, 1) ** gamma * gain + offset
    if blur:
        sigma = (blur, blur, 0) if out.ndim == 3 else blur
        out = ndimage.gaussian_filter(out, sigma)
    out = out + rng.normal(0, noise, out.shape)
    return np.clip(out, 0, 1)


def save(arr: np.ndarray, path: Path, bits: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    top = 2**bits - 1
    stored = np.rint(arr * top).astype(np.uint16 if bits == 16 else np.uint8)
    if path.suffix == ".jpg":
        Image.fromarray(stored).save(path, quality=90)
    else:
        Image.fromarray(stored).save(path, optimize=True)


def save_dicom(arr: np.ndarray, path: Path, site: str, monochrome1: bool = False) -> None:
    """A synthetic DICOM object: 12-bit MONOCHROME1 radiograph or 8-bit RGB photograph.

    Every identifier is made up and derived from the file name (no real patient data).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ComputedRadiographyImageStorage,
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = (
        ComputedRadiographyImageStorage if monochrome1 else SecondaryCaptureImageStorage
    )
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[path.name])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["sample study", site])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["sample series", site, path.suffix])
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = f"PHANTOM-{site.upper()}"
    ds.Modality = "CR" if monochrome1 else "OT"
    ds.Manufacturer = f"Simulated {site}"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if monochrome1:
        stored = np.rint((1.0 - arr) * 4095).astype(np.uint16)  # MONOCHROME1: high = dark
        ds.set_pixel_data(stored, "MONOCHROME1", 12, generate_instance_uid=False)
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    else:
        stored = np.rint(arr * 255).astype(np.uint8)
        ds.set_pixel_data(stored, "RGB", 8, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def phantom_volume(rng: np.random.Generator, slices: int = 16, size: int = 128) -> np.ndarray:
    """A head-like volume in [0, 1]: skull ring, brain, dark ventricles that change along z."""
    zz, yy, xx = np.mgrid[0:slices, 0:size, 0:size]
    z = (zz + 0.5) / slices
    r = np.hypot((xx - size / 2) / (0.42 * size), (yy - size / 2) / (0.48 * size))
    r = r / np.sqrt(np.clip(1 - (2 * z - 1) ** 2, 0.15, 1))
    skull = (r < 1) & (r > 0.88)
    brain = r <= 0.88
    ventricle = (np.abs(xx - size / 2) < 0.08 * size) & (np.abs(yy - size / 2) < 0.2 * size)
    vol = 0.9 * skull + 0.45 * brain - 0.25 * (brain & ventricle & (np.abs(z - 0.5) < 0.25))
    vol = vol + 0.04 * np.sin(11 * xx / size + 4 * z) * brain
    vol = ndimage.gaussian_filter(vol, (0.5, 1.0, 1.0))
    return np.clip(vol + 0.01 * rng.standard_normal(vol.shape), 0, 1)


def save_ct_series(vol: np.ndarray, folder: Path, site: str) -> None:
    """One CT file per slice, in Hounsfield units: -1000 (air) to about 1000 (bone)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    _, _, _, blur, noise = SITES[site]
    rng = np.random.default_rng(len(site) * 31 + (site == "site_b"))
    hu = -1000 + 2000 * ndimage.gaussian_filter(vol, (0, blur, blur) if blur else 0)
    hu += (60 if site == "site_b" else 0) + 400 * noise * rng.standard_normal(hu.shape)
    signed = site == "site_a"
    intercept = 0 if signed else -1024
    series = generate_uid(entropy_srcs=["sample ct series", site])
    for i in range(vol.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["sample ct", site, str(i)])
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["sample study", site])
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["sample frame", site])
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientID = f"PHANTOM-{site.upper()}"
        ds.Modality = "CT"
        ds.Manufacturer = f"Simulated {site}"
        ds.SeriesDescription = "Head phantom"
        ds.SeriesNumber = 2
        ds.InstanceNumber = i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-64.0, -64.0, 2.5 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.5
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, intercept, "HU"
        stored = np.clip(np.rint(hu[i] - intercept), -1024 if signed else 0, 4095)
        pixels = stored.astype(np.int16 if signed else np.uint16)
        ds.set_pixel_data(pixels, "MONOCHROME2", 16 if signed else 12, generate_instance_uid=False)
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.save_as(folder / f"IM{i + 1:04d}.dcm", enforce_file_format=True)


def save_nifti(vol: np.ndarray, path: Path, site: str) -> None:
    """An int16 MR-like NIfTI volume (x, y, z) with a 1 mm x 1 mm x 2.5 mm affine."""
    import nibabel as nib

    gain, offset, gamma, blur, noise = SITES[site]
    rng = np.random.default_rng(len(site) * 7 + (site == "site_b"))
    mr = ndimage.gaussian_filter(vol, (0, blur, blur)) if blur else vol
    mr = (mr**gamma * gain + offset) * (1.7 if site == "site_b" else 1.0)
    mr = mr + noise * rng.standard_normal(mr.shape)
    data = np.rint(np.clip(mr, 0, None) * 1000).astype(np.int16).transpose(2, 1, 0)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    affine[:3, 3] = (-64, -64, 0)
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def main(outdir: Path) -> None:
    for s, site in enumerate(SITES):
        for i in range(2):
            rng = np.random.default_rng(1000 * s + i)
            letter = site[-1]
            save(
                acquire(fundus(rng), site, rng),
                outdir / "fundus" / site / f"fundus_{letter}{i}.png",
            )
            chest = acquire(radiograph(rng), site, rng)
            save(chest, outdir / "radiograph" / site / f"chest_{letter}{i}.png")
        rng = np.random.default_rng(1000 * s + 7)
        save(acquire(fundus(rng), site, rng), outdir / "fundus" / site / f"fundus_{letter}2.jpg")
        save(
            acquire(radiograph(rng), site, rng),
            outdir / "radiograph" / site / f"chest_{letter}2.jpg",
        )
        rng = np.random.default_rng(1000 * s + 9)
        save(
            acquire(radiograph(rng), site, rng),
            outdir / "radiograph" / site / f"chest_{letter}3_16bit.png",
            bits=16,
        )
        rng = np.random.default_rng(1000 * s + 11)
        save_dicom(
            acquire(radiograph(rng), site, rng),
            outdir / "radiograph" / site / f"chest_{letter}4_mono1_12bit.dcm",
            site,
            monochrome1=True,
        )
        rng = np.random.default_rng(1000 * s + 13)
        save_dicom(
            acquire(fundus(rng), site, rng),
            outdir / "fundus" / site / f"fundus_{letter}3_rgb.dcm",
            site,
        )
        head = phantom_volume(np.random.default_rng(1000 * s + 17))
        save_ct_series(head, outdir / "ct" / site / "head", site)
        save_nifti(head, outdir / "mr" / site / f"head_{letter}.nii.gz", site)


if __name__ == "__main__":
    main(
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parent.parent / "sample_images"
    )
