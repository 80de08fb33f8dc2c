"""DICOM in, correct derived DICOM out, over installed and generated files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from svdharm_cli.files.formats import read_image
from svdharm_cli.files.formats.dicom import IMPLEMENTATION_CLASS_UID, LOSSY_SYNTAXES, RT_DOSE
from tests import oracle
from tests.conftest import svdharm
from tests.dicom_files import PATIENT_ID, PATIENT_NAME, make_dicom, radiograph
from tests.images import save, textured

# pydicom warns about the odd files it is given; the warnings are not what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Installed test files that are broken on purpose (or use a codec no plugin handles).
KNOWN_BROKEN = {
    "MR_truncated.dcm": "pixel data missing or truncated (8,130 of 8,192 bytes)",
    "JPEG-lossy.dcm": "cannot decode pixel data",
    "JPEG2000-embedded-sequence-delimiter.dcm": "cannot decode pixel data",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "truncated or malformed",
    "meta_missing_tsyntax.dcm": "missing",
    "nested_priv_SQ.dcm": "missing",
    "no_meta.dcm": "not a valid DICOM file",
}


def _expected(ds: pydicom.Dataset) -> tuple[str, str] | None:
    """The status and reason of a file with no processable intensities, from its header:
    skipped when it holds none by nature, failed when an image object lacks its pixels."""
    if "PixelData" not in ds:
        meta = getattr(ds, "file_meta", None)
        sop = ds.get("SOPClassUID") or getattr(meta, "MediaStorageSOPClassUID", "")
        uid = pydicom.uid.UID(str(sop or ""))
        name = uid.name if uid and uid.name != str(uid) else None
        if name is None:
            return "failed", "an unknown SOP class"
        if "Image Storage" in name or "Rows" in ds:
            return "failed", "pixel data missing or truncated"
        return "skipped", "pixel data"
    if str(ds.get("SOPClassUID", "")) == RT_DOSE:
        return "skipped", "RT Dose"
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        return "skipped", "PALETTE COLOR"
    if ds.get("BitsAllocated") == 1:
        return "skipped", "1-bit"
    if (ds.get("BitsAllocated") or 0) > 16:
        return "skipped", "bit data"
    return None


def test_every_installed_file_gets_the_right_status(dicom_run) -> None:
    src, out, run = dicom_run
    assert run["result"].code == 1  # the broken files
    assert "Traceback" not in run["result"].stderr
    records = {f["path"]: f for f in run["log"]["files"]}
    installed = sorted(p for p in records if p.startswith("installed/"))
    assert len(installed) >= 80
    for rel in installed:
        name = rel.split("/", 1)[1]
        record = records[rel]
        if name in KNOWN_BROKEN:
            assert record["status"] == "failed", record
            assert KNOWN_BROKEN[name] in record["reason"] and name in record["reason"]
            continue
        ds = pydicom.dcmread(src / rel, force=True)
        expected = _expected(ds) if len(ds) else None
        if expected:
            status, words = expected
            assert record["status"] == status and words in record["reason"], record
        else:
            assert record["status"] == "ok", record


def test_every_output_is_a_correct_derived_object(dicom_run) -> None:
    src, out, run = dicom_run
    series_of: dict[str, set[str]] = {}
    checked = 0
    for record in run["log"]["files"]:
        if record["status"] != "ok":
            continue
        source = pydicom.dcmread(src / record["path"], force=True)
        for output in record["outputs"]:
            path = out / output["path"]
            raw = path.read_bytes()
            assert raw[128:132] == b"DICM"
            ds = pydicom.dcmread(path)  # no force
            _check_derived(source, ds)
            if "SeriesInstanceUID" in source:
                series_of.setdefault(source.SeriesInstanceUID, set()).add(ds.SeriesInstanceUID)
            checked += 1
    assert checked >= 40
    # One new series per source series (one copy per input here).
    assert all(len(uids) == 1 for uids in series_of.values())


def _check_derived(src: pydicom.Dataset, ds: pydicom.Dataset) -> None:
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.SOPInstanceUID != src.get("SOPInstanceUID")
    assert ds.SeriesInstanceUID != src.get("SeriesInstanceUID")
    for keyword in ("StudyInstanceUID", "PatientID", "FrameOfReferenceUID", "SOPClassUID"):
        if keyword in src:
            assert ds[keyword].value == src[keyword].value, keyword
    image_type = list(ds.ImageType)
    enhanced = "Enhanced" in src.SOPClassUID.name or "SharedFunctionalGroupsSequence" in src
    # PS3.3 C.8.16.1: an enhanced object's value 2 may only be PRIMARY.
    assert image_type[:2] == ["DERIVED", "PRIMARY" if enhanced else "SECONDARY"]
    kept = list(src.get("ImageType", []) or [])[2:]
    assert image_type[2:] == (kept[:2] if enhanced else kept)
    assert "svdharm" in ds.DerivationDescription
    ref = ds.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.get("SOPInstanceUID")
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert ds.ContributingEquipmentSequence[-1].Manufacturer == "svdharm"
    syntax = str(getattr(getattr(src, "file_meta", None), "TransferSyntaxUID", ""))
    if src.get("LossyImageCompression") == "01" or syntax in LOSSY_SYNTAXES:
        assert ds.LossyImageCompression == "01"
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        assert ds[keyword].value == src[keyword].value, keyword
    if "NumberOfFrames" in src:
        assert int(ds.NumberOfFrames) == int(src.NumberOfFrames)
    before, after = src.pixel_array, ds.pixel_array
    assert after.shape == before.shape
    bits, signed = int(ds.BitsStored), ds.PixelRepresentation == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    assert after.min() >= lo and after.max() <= hi
    pi = src.PhotometricInterpretation
    if pi.startswith("MONOCHROME"):
        assert ds.PhotometricInterpretation == pi
        assert "WindowCenter" in ds and "WindowWidth" in ds
    else:
        assert ds.PhotometricInterpretation == "RGB" and ds.PlanarConfiguration == 0
    for stale in (
        "VOILUTSequence",
        "IconImageSequence",
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
    ):
        assert stale not in ds


def test_generated_files(dicom_run) -> None:
    src, out, run = dicom_run
    records = {f["path"]: f for f in run["log"]["files"]}
    for name in (
        "mono1_12bit.dcm",
        "signed16.dcm",
        "nf1.dcm",
        "padded.dcm",
        "windowed.dcm",
        "IMG0001",
    ):
        assert records[f"own/{name}"]["status"] == "ok", records[f"own/{name}"]
    assert int(pydicom.dcmread(out / "own/nf1_aug0.dcm").NumberOfFrames) == 1
    assert (out / "own/IMG0001_aug0").exists()
    windowed = pydicom.dcmread(out / "own/windowed_aug0.dcm")
    values = windowed.pixel_array
    assert float(windowed.WindowCenter) == pytest.approx(-1024 + (values.min() + values.max()) / 2)
    assert float(windowed.WindowWidth) == pytest.approx(values.max() - values.min() + 1)
    assert windowed.LossyImageCompressionRatio == 8
    a, b = (pydicom.dcmread(out / f"own/series_{i}_aug0.dcm") for i in range(2))
    assert a.SeriesInstanceUID == b.SeriesInstanceUID


def test_padding_left_unchanged(dicom_run) -> None:
    src, out, _ = dicom_run
    before = pydicom.dcmread(src / "own/padded.dcm").pixel_array
    after = pydicom.dcmread(out / "own/padded_aug0.dcm").pixel_array
    assert (after[:10] == 0).all()
    assert not np.array_equal(after[10:], before[10:])
    image = read_image(src / "own/padded.dcm")
    assert image.mask is not None and not image.mask[0, :10].any() and image.mask[0, 10:].all()


def test_no_patient_data_in_log_or_terminal(dicom_run) -> None:
    src, out, run = dicom_run
    text = json.dumps(run["log"]) + run["result"].stdout + run["result"].stderr
    assert PATIENT_NAME not in text and PATIENT_ID not in text and "Jane" not in text


def test_monochrome1_12bit_harmonized_within_bound_of_oracle(tmp_path: Path) -> None:
    pixels = radiograph(bits=12, seed=21)
    src = make_dicom(tmp_path / "in" / "m1.dcm", pixels, photometric="MONOCHROME1", bits_stored=12)
    ref_png = save(tmp_path / "ref.png", textured(70, 70, seed=22) * 0.5 + 0.3)
    reference = tmp_path / "reference.json"
    assert svdharm("fit-reference", ref_png, "-o", reference).code == 0
    out = tmp_path / "out"
    assert svdharm("harmonize", src.parent, out, "--reference", reference).code == 0
    ref = json.loads(reference.read_text())
    x = 1.0 - pixels / 4095.0  # MONOCHROME1 processed in MONOCHROME2 polarity
    y = oracle.harmonize_channel(x, ref["entries"][0]["mean"][0], ref["entries"][0]["std"][0])
    expected = np.rint((1.0 - np.clip(y, 0, 1)) * 4095).astype(np.int64)
    got = pydicom.dcmread(out / "m1.dcm").pixel_array.astype(np.int64)
    assert np.abs(got - expected).max() <= 1  # max(1, 2**(12 - 12)) levels


def test_fit_reference_from_mixed_dicom_and_png(tmp_path: Path) -> None:
    make_dicom(tmp_path / "refs" / "a.dcm", radiograph(seed=1), bits_stored=12)
    save(tmp_path / "refs" / "b.png", textured(40, 40, seed=2))
    result = svdharm("fit-reference", tmp_path / "refs", "-o", tmp_path / "r.json")
    assert result.code == 0, result.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert [Path(s["path"]).name for s in data["sources"]] == ["a.dcm", "b.png"]


def test_dicom_outputs_reproducible_across_workers(tmp_path: Path) -> None:
    for i in range(3):
        make_dicom(tmp_path / "in" / f"s{i}.dcm", radiograph(seed=30 + i))
    runs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        assert (
            svdharm(
                "augment", tmp_path / "in", out, "--seed", 4, "--copies", 2, "--workers", workers
            ).code
            == 0
        )
        runs.append(out)
    for i in range(3):
        for j in range(2):
            name = f"s{i}_aug{j}.dcm"
            assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes()
