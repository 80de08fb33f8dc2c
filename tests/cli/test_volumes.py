"""Volumes (METHOD.md section 3a) and units (section 1): DICOM series, multi-frame DICOM,
NIfTI and TIFF stacks, CT in Hounsfield units, byte order, derived series metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from svdharm_cli.core.bands import decompose
from svdharm_cli.core.methods import Moments, pool
from tests import oracle
from tests.conftest import only_log, svdharm
from tests.dicom_files import installed_files, make_dicom, radiograph
from tests.images import save, textured
from tests.volumes import (
    CT_ENCODINGS,
    ct_hu,
    phantom,
    write_ct,
    write_nifti,
    write_series,
    write_tiff,
)


def series_pixels(folder: Path) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """The slices of the series in ``folder``, in slice order (by Instance Number)."""
    datasets = sorted(
        (pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: int(d.InstanceNumber)
    )
    return np.stack([d.pixel_array for d in datasets]), datasets


def hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


# -- the numeric core ---------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=3, max_value=12), min_size=1, max_size=4),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_pooled_moments_equal_the_moments_of_all_pixels(sizes: list[int], seed: int) -> None:
    """Pooling per-slice moments gives exactly the mean and population std of the union of
    every slice's component pixels (checked against the float64 full-SVD oracle)."""
    rng = np.random.default_rng(seed)
    slices = [rng.random((n, n + 2)) for n in sizes]
    moments = []
    for x in slices:
        b = decompose(x)
        m, s = b.stats
        moments.append(Moments(x.size, m[None], s[None]))
    pooled = pool(moments)
    comps = [oracle.components(x) for x in slices]
    for i in range(4):
        union = np.concatenate([c[i].ravel() for c in comps])
        assert pooled.means[0, i] == pytest.approx(union.mean(), abs=1e-10)
        assert pooled.stds[0, i] == pytest.approx(union.std(), abs=1e-10)


# -- self-harmonization returns the volume ------------------------------------------------


def self_harmonize(tmp_path: Path, src: Path, *extra: object) -> Path:
    ref = tmp_path / "ref.json"
    assert svdharm("fit-reference", src, "-o", ref, *extra).code == 0
    out = tmp_path / "out"
    result = svdharm("harmonize", src, out, "--reference", ref, "--workers", 2, *extra)
    assert result.code == 0, result.stderr
    return out


def test_series_self_harmonization_is_identity_and_per_slice_is_not(tmp_path: Path) -> None:
    stored = np.rint(phantom(12, 40, 36) * 4095).astype(np.uint16)
    src = tmp_path / "series"
    write_series(src, stored)
    out = self_harmonize(tmp_path, src)
    pixels, datasets = series_pixels(out)
    assert np.abs(pixels.astype(np.int64) - stored).max() <= 1
    log = only_log(out)
    assert {f["volume"] for f in log["files"]} == {"[series 1]"}
    assert log["volumes"] == [
        {"volume": "[series 1]", "files": [f"IM{i:04d}.dcm" for i in _file_order(src)]}
    ]
    # Slice-by-slice statistics force every slice to the volume's statistics: a large change.
    out2 = tmp_path / "per-slice"
    ref = tmp_path / "ref.json"
    assert svdharm("harmonize", src, out2, "--reference", ref, "--per-slice").code == 0
    per_slice, _ = series_pixels(out2)
    assert np.abs(per_slice.astype(np.int64) - stored).max() > 100


def _file_order(src: Path) -> list[int]:
    """File numbers in slice order (positions increase with Instance Number here)."""
    number = {p: int(pydicom.dcmread(p).InstanceNumber) for p in src.glob("*.dcm")}
    return [int(p.stem[2:]) for p in sorted(number, key=number.__getitem__)]


def test_multiframe_self_harmonization_is_identity(tmp_path: Path) -> None:
    stored = np.rint(phantom(8, 36, 30, seed=5) * 1023).astype(np.uint16)
    make_dicom(tmp_path / "in" / "mf.dcm", stored, bits_stored=10)
    out = self_harmonize(tmp_path, tmp_path / "in")
    assert np.abs(pydicom.dcmread(out / "mf.dcm").pixel_array.astype(int) - stored).max() <= 1


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_nifti_self_harmonization_keeps_header_affine_and_dtype(tmp_path: Path, dtype) -> None:
    vol = phantom(10, 30, 26, seed=2).transpose(1, 2, 0)  # (x, y, z)
    top = 250 if dtype == np.uint8 else 3000
    data = (vol * top).astype(dtype) if dtype != np.float32 else (vol * top).astype(dtype)
    src = write_nifti(tmp_path / "in" / "head.nii.gz", data, slope=0.5, inter=-20)
    out = self_harmonize(tmp_path, src.parent)
    before, after = nib.load(src), nib.load(out / "head.nii.gz")
    assert after.get_data_dtype() == before.get_data_dtype()
    np.testing.assert_array_equal(after.affine, before.affine)
    for field in ("qform_code", "sform_code", "dim", "pixdim", "scl_slope", "scl_inter"):
        np.testing.assert_array_equal(after.header[field], before.header[field])
    raw_before = np.asarray(before.dataobj.get_unscaled())
    raw_after = np.asarray(after.dataobj.get_unscaled())
    if dtype == np.float32:
        np.testing.assert_allclose(raw_after, raw_before, atol=1e-3)
    else:
        assert np.abs(raw_after.astype(int) - raw_before.astype(int)).max() <= 1


def test_nifti_4d_pools_each_volume_on_its_own(tmp_path: Path) -> None:
    """A 4-D file is a sequence of 3-D volumes, each pooled on its own: a volume three times
    brighter than the first is mapped to the same output (harmonization is scale-free)."""
    vol = phantom(6, 24, 20, seed=4).transpose(1, 2, 0)
    data = np.stack([vol * 400, vol * 1200], axis=-1).astype(np.float32)
    src = write_nifti(tmp_path / "in" / "fmri.nii", data)
    ref_src = write_nifti(tmp_path / "ref" / "t1.nii", (vol * 800).astype(np.float32))
    ref = tmp_path / "ref.json"
    assert svdharm("fit-reference", ref_src, "-o", ref).code == 0
    assert svdharm("harmonize", src.parent, tmp_path / "out", "--reference", ref).code == 0
    got = np.asarray(nib.load(tmp_path / "out" / "fmri.nii").dataobj)
    assert got.shape == data.shape
    np.testing.assert_allclose(got[..., 0], got[..., 1], atol=1e-3)
    np.testing.assert_allclose(got[..., 0], vol * 800, atol=0.05)


@pytest.mark.parametrize("axis", ["0", "1"])
def test_nifti_slice_axis(tmp_path: Path, axis: str) -> None:
    data = (phantom(8, 20, 16, seed=1) * 3000).astype(np.int16)
    src = write_nifti(tmp_path / "in" / "v.nii.gz", data)
    out = self_harmonize(tmp_path, src.parent, "--slice-axis", axis)
    got = np.asarray(nib.load(out / "v.nii.gz").dataobj)
    assert np.abs(got.astype(int) - data).max() <= 1
    log = only_log(out)
    assert log["parameters"]["slice_axis"] == int(axis)


def test_nibabel_example_volumes(tmp_path: Path) -> None:
    """nibabel's bundled example files (3-D and 4-D, NIfTI-1 and -2, big-endian, scaled)
    harmonized to a reference fitted on the big-endian 3-D one, which comes back as it was."""
    from nibabel.testing import data_path

    names = ["anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii"]
    src = tmp_path / "in"
    src.mkdir()
    for name in names:
        shutil.copy(Path(data_path) / name, src / name)
    ref = tmp_path / "ref.json"
    assert svdharm("fit-reference", src / "anatomical.nii", "-o", ref).code == 0
    out = tmp_path / "out"
    result = svdharm("harmonize", src, out, "--reference", ref)
    assert result.code == 0, result.stderr
    for name in names:
        before, after = nib.load(src / name), nib.load(out / name)
        assert after.get_data_dtype() == before.get_data_dtype(), name
        assert type(after) is type(before) and after.shape == before.shape, name
        np.testing.assert_array_equal(after.affine, before.affine)
        assert (after.dataobj.slope, after.dataobj.inter) == (
            before.dataobj.slope,
            before.dataobj.inter,
        )
        assert np.isfinite(np.asarray(after.dataobj)).all()
    diff = np.asarray(nib.load(out / "anatomical.nii").dataobj, dtype=float) - np.asarray(
        nib.load(src / "anatomical.nii").dataobj, dtype=float
    )
    assert np.abs(diff).max() <= 1


@pytest.mark.parametrize(
    ("shape", "dtype", "photometric"),
    [
        ((7, 30, 26), np.uint16, "minisblack"),
        ((5, 24, 28, 3), np.uint8, "rgb"),
        ((1, 30, 26), np.uint8, "miniswhite"),
    ],
)
def test_tiff_stack_self_harmonization(tmp_path: Path, shape, dtype, photometric) -> None:
    top = np.iinfo(dtype).max
    vol = phantom(shape[0], shape[1], shape[2], seed=6)
    if len(shape) == 4:
        vol = np.stack([vol, vol**1.5, 1 - vol], axis=-1)
    stack = np.rint(vol * top).astype(dtype)
    data = stack if shape[0] > 1 else stack[0]
    src = write_tiff(tmp_path / "in" / "stack.tif", data, photometric=photometric)
    out = self_harmonize(tmp_path, src.parent)
    with tifffile.TiffFile(out / "stack.tif") as tif:
        assert len(tif.pages) == shape[0]
        assert tif.pages[0].photometric.name == photometric.upper()
        got = tif.asarray()
    assert got.dtype == dtype and got.shape == data.shape
    assert np.abs(got.astype(int) - data.astype(int)).max() <= 1


# -- physical units -----------------------------------------------------------------------


def test_same_ct_in_three_encodings_gives_the_same_hu(tmp_path: Path) -> None:
    volume = ct_hu()
    ref_src = write_ct(tmp_path / "ref" / "ct", np.rint(volume * 0.9 + 60).astype(int), "signed16")
    ref = tmp_path / "ref.json"
    assert svdharm("fit-reference", ref_src[0].parent, "-o", ref).code == 0
    entry = json.loads(ref.read_text())["entries"]
    assert [e["unit"] for e in entry] == ["HU"]
    outputs = {}
    for encoding in CT_ENCODINGS:
        write_ct(tmp_path / "in" / encoding, volume, encoding)
        out = tmp_path / f"out-{encoding}"
        result = svdharm("harmonize", tmp_path / "in" / encoding, out, "--reference", ref)
        assert result.code == 0, result.stderr
        _, datasets = series_pixels(out)
        outputs[encoding] = np.stack([hu(d) for d in datasets])
    first = outputs["signed16"]
    assert np.abs(first - volume).max() > 20  # harmonization did change the volume
    for encoding, got in outputs.items():
        assert np.abs(got - first).max() <= 1, encoding


def test_png_reference_harmonizes_a_dicom_radiograph_but_not_ct(tmp_path: Path) -> None:
    """Normalized units are shared by PNG and non-CT DICOM (a reference without kinds serves
    every kind, with a warning); CT in HU needs an HU entry, and an input without a matching
    entry fails alone, named, before its pixels are decoded."""
    save(tmp_path / "refs" / "r.png", textured(48, 40, seed=1))
    ref = tmp_path / "ref.json"
    assert svdharm("fit-reference", tmp_path / "refs", "-o", ref).code == 0
    src = tmp_path / "in"
    make_dicom(src / "xray.dcm", radiograph(), Modality="DX")
    write_ct(src / "ct", ct_hu(slices=3), "unsigned12")
    result = svdharm("harmonize", src, tmp_path / "out", "--reference", ref)
    assert result.code == 1
    log = only_log(tmp_path / "out")
    status = {f["path"]: f for f in log["files"]}
    assert status["xray.dcm"]["status"] == "ok"
    ct = [f for p, f in status.items() if p.startswith("ct/")]
    assert len(ct) == 3 and all(f["status"] == "failed" for f in ct)
    assert (
        "is of kind CT, gray (1 channel) in HU units, but the reference has entries only for "
        "gray (1 channel) in normalized units (1 image)" in (ct[0]["reason"])
    )
    assert "ct/[series 1]" in ct[0]["reason"]
    assert any("the reference has no kinds but inputs of kind DX" in w for w in log["warnings"])


def test_mixed_cohort_gives_one_entry_per_kind(tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    save(refs / "gray.png", textured(40, 40, seed=1))
    save(refs / "rgb.png", textured(40, 40, seed=2, channels=3))
    write_ct(refs / "ct", ct_hu(slices=4, seed=8), "unsigned12")
    write_series(refs / "mr", np.rint(phantom(4, 32, 30, seed=9) * 4095).astype(np.uint16))
    write_nifti(refs / "v.nii", (phantom(4, 20, 20) * 900).astype(np.int16))
    ref = tmp_path / "ref.json"
    result = svdharm("fit-reference", refs, "-o", ref)
    assert result.code == 0, result.stderr
    entries = {
        (e["kind"], e["unit"], e["channels"]): e["images"]
        for e in json.loads(ref.read_text())["entries"]
    }
    # The MR series has its own kind (its Modality): the gray PNG's entry is apart.
    assert entries == {
        ("", "normalized", 1): 1,
        ("", "normalized", 3): 1,
        ("CT", "HU", 1): 1,
        ("MR", "normalized", 1): 1,
        ("", "raw", 1): 1,
    }
    out = tmp_path / "out"
    result = svdharm("harmonize", refs, out, "--reference", ref)
    assert result.code == 0, result.stderr
    assert only_log(out)["counts"]["ok"] == 1 + 1 + 4 + 4 + 1


def test_version_1_reference_still_loads(tmp_path: Path) -> None:
    save(tmp_path / "in" / "a.png", textured(32, 32, seed=3))
    v1 = {
        "format": "svdharm-reference",
        "format_version": 1,
        "fractions": [0.07, 0.2, 0.5],
        "channels": 1,
        "mean": [[0.4, 0.0, 0.0, 0.0]],
        "std": [[0.2, 0.05, 0.03, 0.02]],
        "sources": [],
    }
    ref = tmp_path / "v1.json"
    ref.write_text(json.dumps(v1))
    assert svdharm("harmonize", tmp_path / "in", tmp_path / "out", "--reference", ref).code == 0


# -- byte order ---------------------------------------------------------------------------

TWINS = {
    "MR_small_bigendian.dcm": "MR_small.dcm",
    "SC_rgb_expb.dcm": "SC_rgb.dcm",
    "SC_rgb_expb_16bit.dcm": "SC_rgb_16bit.dcm",
    "SC_rgb_small_odd_big_endian.dcm": "SC_rgb_small_odd.dcm",
    "SC_rgb_expb_2frame.dcm": "SC_rgb_2frame.dcm",
    "SC_rgb_expb_16bit_2frame.dcm": "SC_rgb_16bit_2frame.dcm",
    "MR_small_expb.dcm": "MR_small.dcm",
}


def test_big_endian_output_equals_its_little_endian_twin(tmp_path: Path) -> None:
    """Each big-endian file and its little-endian twin, harmonized to a reference fitted on
    the little-endian one, give identical pixels, and both give back the input."""
    files = {p.name: p for p in installed_files()}
    pairs = [(big, little) for big, little in TWINS.items() if big in files and little in files]
    assert len(pairs) >= 4 and ("MR_small_bigendian.dcm", "MR_small.dcm") in pairs
    for k, (big, little) in enumerate(pairs):
        ref = tmp_path / f"{k}.json"
        assert svdharm("fit-reference", files[little], "-o", ref).code == 0
        outs = []
        for name in (big, little):
            src = tmp_path / f"{k}-{name}" / "in"
            src.mkdir(parents=True)
            shutil.copy(files[name], src / "x.dcm")
            out = src.parent / "out"
            result = svdharm("harmonize", src, out, "--reference", ref)
            assert result.code == 0, (name, result.stderr)
            outs.append(pydicom.dcmread(out / "x.dcm"))
        got_big, got_little = outs
        assert got_big.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        np.testing.assert_array_equal(got_big.pixel_array, got_little.pixel_array, err_msg=big)
        source = pydicom.dcmread(files[little]).pixel_array.astype(np.int64)
        assert np.abs(got_big.pixel_array.astype(np.int64) - source).max() <= 1, big


# -- augmented series and derived series metadata ------------------------------------------


def test_augmented_series_has_one_draw_one_series_and_one_window(tmp_path: Path) -> None:
    stored = np.rint(phantom(10, 36, 32, seed=7) * 4095).astype(np.uint16)
    src = tmp_path / "in" / "mr"
    write_series(src, stored)
    out = tmp_path / "out"
    result = svdharm("augment", tmp_path / "in", out, "--copies", 2, "--seed", 11, "--workers", 2)
    assert result.code == 0, result.stderr
    log = only_log(out)
    for j in range(2):
        records = [f["outputs"][j] for f in log["files"]]
        assert len({r["seed"] for r in records}) == 1
        assert len({json.dumps(r["coefficients"]) for r in records}) == 1
        datasets = [pydicom.dcmread(out / r["path"]) for r in records]
        assert len({d.SeriesInstanceUID for d in datasets}) == 1
        assert len({(str(d.WindowCenter), str(d.WindowWidth)) for d in datasets}) == 1
        assert {d.SeriesDescription for d in datasets} == {"T1 axial [svdharm augment]"}
        assert {int(d.SeriesNumber) for d in datasets} == {3 + 1000 * (j + 1)}
        # The window spans the whole output volume.
        pixels = np.stack([d.pixel_array for d in datasets]).astype(float)
        center, width = float(datasets[0].WindowCenter), float(datasets[0].WindowWidth)
        assert center == pytest.approx((pixels.min() + pixels.max()) / 2, abs=0.51)
        assert width == pytest.approx(pixels.max() - pixels.min() + 1, abs=0.51)
    first = [pydicom.dcmread(out / f["outputs"][0]["path"]) for f in log["files"]]
    second = [pydicom.dcmread(out / f["outputs"][1]["path"]) for f in log["files"]]
    assert first[0].SeriesInstanceUID != second[0].SeriesInstanceUID
    assert first[0].SeriesInstanceUID != pydicom.dcmread(next(src.glob("*.dcm"))).SeriesInstanceUID
    # Seeds derive from the series, not from file names: renaming the files changes nothing.
    renamed = tmp_path / "renamed" / "mr"
    renamed.mkdir(parents=True)
    for p in src.glob("*.dcm"):
        shutil.copy(p, renamed / f"slice-{p.name}")
    out2 = tmp_path / "out2"
    assert svdharm("augment", tmp_path / "renamed", out2, "--copies", 2, "--seed", 11).code == 0
    assert {f["outputs"][0]["seed"] for f in only_log(out2)["files"]} == {
        log["files"][0]["outputs"][0]["seed"]
    }


def test_broken_slice_fails_its_series_alone(tmp_path: Path) -> None:
    src = tmp_path / "in"
    paths = write_series(src / "mr", np.rint(phantom(5, 30, 30) * 4095).astype(np.uint16))
    save(src / "other.png", textured(30, 30, seed=1))
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 700])  # a truncated slice
    out = tmp_path / "out"
    result = svdharm("augment", src, out, "--seed", 1)
    assert result.code == 1
    records = {f["path"]: f for f in only_log(out)["files"]}
    assert records["other.png"]["status"] == "ok"
    series = [f for p, f in records.items() if p.startswith("mr/")]
    assert len(series) == 5 and all(f["status"] == "failed" for f in series)
    assert paths[2].name in series[0]["reason"]
    assert not (out / "mr").exists() or not any((out / "mr").iterdir())


def test_kind_mismatch_is_refused_before_pixels_are_decoded(tmp_path: Path, monkeypatch) -> None:
    """A multi-frame colour DICOM against a gray reference fails from its header alone."""
    from svdharm_cli.core.methods import Method
    from svdharm_cli.core.reference import Reference
    from svdharm_cli.files.formats import dicom
    from svdharm_cli.run.results import FAILED
    from svdharm_cli.run.worker import JobConfig, process_file

    rgb = np.rint(np.stack([textured(24, 20, seed=k, channels=3) for k in range(6)]) * 255)
    make_dicom(
        tmp_path / "in" / "colour.dcm",
        np.moveaxis(rgb, 1, 3).astype(np.uint8),
        photometric="RGB",
        bits_stored=8,
    )
    zeros = np.zeros((1, 4))
    gray = Reference.fit([("normalized", zeros, zeros + 0.1)], (0.07, 0.2, 0.5))

    def no_decoding(path: Path, ds: object) -> np.ndarray:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(dicom, "_decode", no_decoding)
    config = JobConfig(
        Method.HARMONIZE, (0.07, 0.2, 0.5), tmp_path / "in", tmp_path / "out", reference=gray
    )
    result = process_file("colour.dcm", config)
    assert result.status == FAILED
    assert "is of kind OT, RGB (3 channels) in normalized units, but the reference" in (
        result.reason or ""
    )


def test_series_without_extensions_is_one_volume_sniffed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DICOM files often have no extension: the walk recognizes them by content, and
    grouping them into a series reuses what the walk found instead of sniffing again."""
    import svdharm_cli.files.plan as plan

    src = tmp_path / "in" / "mr"
    for path in write_series(src, np.rint(phantom(4, 32, 30) * 4095).astype(np.uint16)):
        path.rename(path.with_suffix(""))
    sniffed: list[Path] = []
    real = plan.handler_for

    def counting(path: Path) -> object:
        sniffed.append(path)
        return real(path)

    monkeypatch.setattr(plan, "handler_for", counting)
    found = plan.discover(tmp_path / "in")
    units = plan.plan_inputs(found.root, found.images, found.dicom)
    assert len(sniffed) == 4 and len(set(sniffed)) == 4
    assert [(u.volume, len(u.files)) for u in units] == [("mr/[series 1]", 4)]
