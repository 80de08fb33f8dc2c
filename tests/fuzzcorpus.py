"""Seeded damaged copies of real files of every format, for the damaged-input tests.

The sources are files that ship with pydicom (DICOM in several transfer syntaxes, gray and
RGB, a dual-format DICOM/TIFF file, an RT Plan that holds no image), nibabel (NIfTI-1 and
-2, ``.nii`` and ``.nii.gz``) and this repository's ``sample_images/`` (8- and 16-bit PNG,
JPEG, a CT series), plus TIFF files written by tifffile from a real photograph. Each mutant
lies in a folder of its own (``m0042/CT_small.dcm``), so that mutants of one source never
form a DICOM series with each other; series mutants are a folder of three CT slices with one
slice damaged. The same ``seed`` always gives the same corpus, byte for byte.

Mutations, one per mutant: flipped bits, a run of random bytes, truncation, random bytes
over the header (the first 512 bytes), a zeroed run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

_PYDICOM = (
    "CT_small.dcm",  # explicit VR little endian, CT
    "MR_small.dcm",  # its preamble is a TIFF header (dual format)
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR
    "JPEGLSNearLossless_16.dcm",
    "SC_rgb_small_odd.dcm",
    "emri_small.dcm",  # enhanced MR, multi-frame
    "rtplan.dcm",  # no image by nature
)
_NIBABEL = ("anatomical.nii", "example_nifti2.nii.gz", "standard.nii.gz")
_SAMPLES = (
    "radiograph/site_a/chest_a0.png",  # 8-bit gray PNG
    "radiograph/site_a/chest_a3_16bit.png",
    "radiograph/site_a/chest_a2.jpg",
    "fundus/site_a/fundus_a2.jpg",  # RGB JPEG
)
SERIES = "ct/site_a/head"
NOT_IMAGES = frozenset({"rtplan.dcm"})
"""Sources that carry no image by nature: their mutants may be skipped."""


@dataclass(frozen=True)
class Mutant:
    """One damaged input: its files relative to the corpus root, the source it came from,
    the mutation, and which of its files was damaged."""

    files: tuple[str, ...]
    source: str
    mutation: str
    damaged: str


def sources(workdir: Path) -> dict[str, Path]:
    """The undamaged source files by name (TIFF files are written into ``workdir``)."""
    import nibabel.testing
    import tifffile
    from pydicom.data import get_testdata_file
    from skimage import data

    found: dict[str, Path] = {}
    for name in _PYDICOM:
        path = get_testdata_file(name)
        assert path is not None, name
        found[name] = Path(str(path))
    # The same MR file without an extension: only its content says it is DICOM.
    found["MR_small_dual"] = found["MR_small.dcm"]
    for name in _NIBABEL:
        found[name] = Path(nibabel.testing.data_path) / name
    for rel in _SAMPLES:
        found[Path(rel).name] = ROOT / "sample_images" / rel
    workdir.mkdir(parents=True, exist_ok=True)
    camera = data.camera()[96:160, 128:192]
    tifffile.imwrite(workdir / "camera8.tif", camera)
    stack = np.stack([camera, camera.T, camera[::-1]]).astype(np.uint16) * 257
    tifffile.imwrite(workdir / "stack16.tif", stack, photometric="minisblack", compression="zlib")
    tifffile.imwrite(workdir / "astronaut_rgb.tif", data.astronaut()[:48, :64])
    for name in ("camera8.tif", "stack16.tif", "astronaut_rgb.tif"):
        found[name] = workdir / name
    return found


def mutate(raw: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One damaged copy of ``raw`` and the name of the mutation."""
    data = bytearray(raw)
    n = len(data)
    kind = str(rng.choice(["bitflip", "random-run", "truncate", "header", "zero-run"]))
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 9))):
            at = int(rng.integers(0, n))
            data[at] ^= 1 << int(rng.integers(0, 8))
    elif kind == "random-run":
        length = int(rng.integers(1, 65))
        at = int(rng.integers(0, max(1, n - length)))
        data[at : at + length] = rng.integers(0, 256, min(length, n - at), dtype=np.uint8).tobytes()
    elif kind == "truncate":
        data = data[: int(rng.integers(0, n))]
    elif kind == "header":
        top = min(n, 512)
        length = int(rng.integers(1, 33))
        at = int(rng.integers(0, max(1, top - length)))
        data[at : at + length] = rng.integers(0, 256, min(length, n - at), dtype=np.uint8).tobytes()
    else:
        length = int(rng.integers(1, 257))
        at = int(rng.integers(0, max(1, n - length)))
        data[at : at + length] = bytes(min(length, n - at))
    return bytes(data), kind


def build(dest: Path, count: int, seed: int = 0) -> list[Mutant]:
    """Write ``count`` mutants under ``dest``; every source gets about as many."""
    found = sources(dest.parent / f"{dest.name}-sources")
    names = sorted(found) + ["series"]
    slices = sorted((ROOT / "sample_images" / SERIES).glob("*.dcm"))[:3]
    rng = np.random.default_rng(seed)
    mutants = []
    for i in range(count):
        name = names[i % len(names)]
        folder = dest / f"m{i:04d}"
        folder.mkdir(parents=True)
        if name == "series":
            victim = int(rng.integers(0, len(slices)))
            files = []
            for k, src in enumerate(slices):
                target = folder / src.name
                if k == victim:
                    damaged, kind = mutate(src.read_bytes(), rng)
                    target.write_bytes(damaged)
                else:
                    shutil.copy(src, target)
                files.append(target.relative_to(dest).as_posix())
            rel = files[victim]
            mutants.append(Mutant(tuple(files), "series", kind, rel))
            continue
        damaged, kind = mutate(found[name].read_bytes(), rng)
        target = folder / name
        target.write_bytes(damaged)
        rel = target.relative_to(dest).as_posix()
        mutants.append(Mutant((rel,), name, kind, rel))
    return mutants


def originals(dest: Path) -> list[Path]:
    """Copies of every undamaged source under ``dest`` (one folder each): what a reference
    with an entry for every kind is fitted on."""
    found = sources(dest.parent / f"{dest.name}-sources")
    copies = []
    for name, path in sorted(found.items()):
        if name in NOT_IMAGES:
            continue
        target = dest / name.replace(".", "_") / name
        target.parent.mkdir(parents=True)
        shutil.copy(path, target)
        copies.append(target)
    return copies
