"""Damaged inputs never stop a batch and never pass as skipped (the fuzz corpus).

Several hundred seeded mutants of real files of every format (``tests/fuzzcorpus.py``) go
through harmonize with 2 workers as one batch, and through fit-reference, compare and
bands; then the smaller promises one by one: the boundary's wording, DICM before TIFF,
damaged versus pixel-less DICOM, and a bug in svdharm's own code kept visible in the log.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

import svdharm_cli.core.volume as volume
import svdharm_cli.run.results as results
from svdharm_cli.core.methods import Method
from svdharm_cli.errors import ImageError, SkipImage
from svdharm_cli.files.formats import handler_for, read_image, read_mask
from svdharm_cli.files.plan import Input, discover, plan_inputs
from svdharm_cli.run.options import DrawOptions
from svdharm_cli.run.results import FAILED, OK, SKIPPED
from svdharm_cli.run.worker import JobConfig, process_input
from tests import fuzzcorpus
from tests.conftest import only_log, svdharm
from tests.images import save, textured

# pydicom warns about the damaged files the tests themselves open to check outputs.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MUTANTS = 300
UID_LIKE = re.compile(r"\d+(?:\.\d+){5,}")
"""A run of six or more dot-separated numbers: what a UID (intact or damaged) looks like."""

# Saved crashes of `make fuzz` (fuzz/corpus/): each one must stay a file's failure.
SAVED = Path(__file__).resolve().parents[2] / "fuzz" / "crashes"


def _header_secrets() -> set[str]:
    """Values of the source files' headers that must never be printed or logged: every
    UID that is not one of the standard's, and patient names and IDs."""
    secrets: set[str] = set()
    names = fuzzcorpus._PYDICOM
    paths = [Path(str(get_testdata_file(n))) for n in names]
    paths += sorted((fuzzcorpus.ROOT / "sample_images" / fuzzcorpus.SERIES).glob("*.dcm"))[:3]
    for path in paths:
        ds = pydicom.dcmread(path, force=True)
        for elem in ds.iterall():
            if elem.VR == "UI" and elem.value:
                uid = pydicom.uid.UID(str(elem.value))
                if uid.name == str(uid):  # not a standard UID (class, syntax)
                    secrets.add(str(uid))
            if elem.keyword in ("PatientName", "PatientID") and len(str(elem.value)) >= 4:
                secrets.add(str(elem.value))
    return secrets


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    top = tmp_path_factory.mktemp("damaged")
    root = top / "in"
    mutants = fuzzcorpus.build(root, MUTANTS, seed=20261201)
    if SAVED.is_dir():  # make fuzz's findings join the batch
        for k, crash in enumerate(sorted(SAVED.iterdir())):
            target = root / f"saved{k:03d}" / crash.name
            target.parent.mkdir()
            shutil.copy(crash, target)
    fuzzcorpus.originals(top / "originals")
    reference = top / "reference.json"
    fitted = svdharm("fit-reference", top / "originals", "-o", reference)
    assert fitted.code == 0, fitted.stderr
    out = top / "out"
    run = svdharm("harmonize", root, out, "--reference", reference, "--workers", 2)
    return {
        "top": top,
        "root": root,
        "out": out,
        "mutants": mutants,
        "reference": reference,
        "run": run,
        "log": only_log(out),
    }


def _no_secrets(text: str, secrets: set[str]) -> None:
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"header values in the output: {leaked[:3]}"
    uid_like = UID_LIKE.findall(text)
    assert not uid_like, f"UID-like strings in the output: {uid_like[:3]}"


def test_the_batch_goes_on_and_tells_the_truth(corpus: dict) -> None:
    run, log, root, out = corpus["run"], corpus["log"], corpus["root"], corpus["out"]
    assert run.code in (0, 1), run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert log["status"] == "completed"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    logged = [record["path"] for record in log["files"]]
    assert len(logged) == len(set(logged)), "a file logged twice"
    assert sorted(logged + log["ignored"]) == files
    statuses = {record["status"] for record in log["files"]}
    assert statuses <= {OK, FAILED, SKIPPED}
    assert log["counts"]["ok"] > MUTANTS // 4 and log["counts"]["failed"] > MUTANTS // 4
    leftovers = [p for p in out.rglob("*") if p.is_file() and ".svdharm-tmp" in p.name]
    assert not leftovers


def test_failures_leave_no_output_and_every_output_reads(corpus: dict) -> None:
    out = corpus["out"]
    for record in corpus["log"]["files"]:
        target = out / record["path"]
        if record["status"] != OK:
            assert not target.exists(), record
            named = record["volume"] if record["volume"] else record["path"]
            assert record["reason"] and named in record["reason"], record
            continue
        assert [o["path"] for o in record["outputs"]] == [record["path"]]
        image = read_image(target)  # every output re-reads, through the same boundary
        assert np.isfinite(image.frames).all()
        if image.format == "dicom":
            pydicom.dcmread(target)  # a valid Part 10 file: no force needed


def test_no_damaged_image_is_skipped(corpus: dict) -> None:
    records = {record["path"]: record for record in corpus["log"]["files"]}
    checked = 0
    for mutant in corpus["mutants"]:
        if mutant.source in fuzzcorpus.NOT_IMAGES:
            continue
        for rel in mutant.files:
            if rel in records:
                assert records[rel]["status"] != SKIPPED, records[rel]
                checked += 1
    assert checked > MUTANTS * 0.9


def test_failures_name_the_cause_and_keep_the_exception_type(corpus: dict) -> None:
    failed = [r for r in corpus["log"]["files"] if r["status"] == FAILED]
    recorded = [r["error"] for r in failed if r["error"] is not None]
    assert recorded, "library exceptions are recorded"
    for error in recorded:
        assert error["type"] and error["traceback"]
        for frame in error["traceback"]:
            assert not frame.startswith("/"), frame  # no machine paths
    internal = [r for r in failed if results.INTERNAL in r["reason"]]
    assert not internal, internal[:3]  # no bug of svdharm's own met on the corpus


def test_no_header_value_in_the_terminal_or_the_log(corpus: dict) -> None:
    secrets = _header_secrets()
    assert len(secrets) > 20
    run = corpus["run"]
    log_text = json.dumps(corpus["log"])
    _no_secrets(run.stdout + run.stderr, secrets)
    _no_secrets(log_text, secrets)


def test_fit_reference_compare_and_bands_go_on(corpus: dict) -> None:
    top, root = corpus["top"], corpus["root"]
    secrets = _header_secrets()
    fitted = svdharm("fit-reference", root, "-o", top / "fitted.json", "--workers", 2)
    assert fitted.code == 1, fitted.stderr  # some inputs failed; the reference is written
    assert "Traceback" not in fitted.stderr + fitted.stdout
    assert json.loads((top / "fitted.json").read_text())["entries"]
    _no_secrets(fitted.stdout + fitted.stderr, secrets)
    halves = [top / "group_a", top / "group_b"]
    for k, folder in enumerate(sorted(root.iterdir())):
        shutil.copytree(folder, halves[k % 2] / folder.name)
    compared = svdharm("compare", *halves, "--json", top / "compare.json", "--workers", 2)
    assert compared.code in (0, 1), compared.stderr
    assert "Traceback" not in compared.stderr + compared.stdout
    assert json.loads((top / "compare.json").read_text())
    _no_secrets(compared.stdout + compared.stderr, secrets)
    # bands on one damaged copy of every source, and on one that fails.
    shown: dict[str, Path] = {}
    for mutant in corpus["mutants"]:
        shown.setdefault(mutant.source, root / mutant.damaged)
    codes = set()
    for path in shown.values():
        result = svdharm("bands", path, "-o", top / "panel.png", "--quiet")
        assert result.code in (0, 1), result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        _no_secrets(result.stdout + result.stderr, secrets)
        codes.add(result.code)
    assert codes == {0, 1}


def test_dicm_marker_wins_over_a_tiff_preamble(tmp_path: Path) -> None:
    source = Path(str(get_testdata_file("MR_small.dcm")))
    assert source.read_bytes()[:4] == b"II*\x00"  # a TIFF header in the preamble
    bare = tmp_path / "IM000001"
    shutil.copy(source, bare)
    handler = handler_for(bare)
    assert handler is not None and handler.name == "dicom"
    image = read_image(bare)
    assert image.format == "dicom" and image.frames.shape == (1, 1, 64, 64)


def test_a_damaged_series_header_fails_that_file_alone(tmp_path: Path) -> None:
    root = tmp_path / "in"
    slices = sorted((fuzzcorpus.ROOT / "sample_images" / fuzzcorpus.SERIES).glob("*.dcm"))[:4]
    root.mkdir()
    for src in slices:
        shutil.copy(src, root / src.name)
    raw = bytearray((root / slices[1].name).read_bytes())
    raw[138:140] = b"\x06\x00"  # the meta group length (UL) said to be 6 bytes long
    (root / slices[1].name).write_bytes(bytes(raw))
    found = discover(root)
    units = plan_inputs(root, found.images, found.dicom)
    assert sorted(len(u.files) for u in units) == [1, 3]
    out = tmp_path / "out"
    run = svdharm("harmonize", root, out, "--reference", slices[0])
    assert run.code == 1 and "Traceback" not in run.stderr
    records = {r["path"]: r for r in only_log(out)["files"]}
    assert records[slices[1].name]["status"] == FAILED
    assert "malformed DICOM header" in records[slices[1].name]["reason"]
    assert UID_LIKE.search(run.stderr) is None
    assert [records[s.name]["status"] for s in slices if s != slices[1]] == [OK] * 3


def _dataset(sop_class: str, **attributes: object) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("sop_class", "attributes", "status", "words"),
    [
        ("1.2.840.10008.5.1.4.1.1.481.5", {}, SKIPPED, "RT Plan Storage: carries no image"),
        ("1.2.840.10008.5.1.4.1.1.88.11", {}, SKIPPED, "Basic Text SR Storage"),
        (CT_IMAGE, {}, FAILED, "pixel data missing or truncated (CT Image"),
        ("1.2.840.10008.5.1.4.1.1.481.5", {"Rows": 64}, FAILED, "pixel data missing"),
        ("1.2.3.4.5.6.7.8.9.10", {}, FAILED, "an unknown SOP class"),
        # A damaged class: a byte of the CT class smashed (pydicom would not write it).
        ("1.2.840.1000\u00e98.5.1.4.1.1.2", {}, FAILED, "an unknown SOP class"),
    ],
)
def test_damaged_is_not_pixel_less(
    tmp_path: Path, sop_class: str, attributes: dict, status: str, words: str
) -> None:
    path = tmp_path / "object.dcm"
    valid = sop_class.isascii()
    ds = _dataset(sop_class if valid else CT_IMAGE, **attributes)
    ds.save_as(path, enforce_file_format=True)
    if not valid:  # same length, so every element length stays right
        raw = path.read_bytes().replace(CT_IMAGE.encode(), sop_class.encode("latin-1"))
        path.write_bytes(raw)
    result = process_input(Input(("object.dcm",), "object.dcm"), _config(tmp_path))[0]
    assert result.status == status, result
    assert words in (result.reason or "")
    assert UID_LIKE.search(result.reason or "") is None  # the class is never quoted
    assert "\u00e9" not in (result.reason or "")


def test_a_truncated_slice_fails_and_a_dicomdir_is_skipped(tmp_path: Path) -> None:
    ct = Path(str(get_testdata_file("CT_small.dcm")))
    raw = ct.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[: len(raw) - 1000])
    (tmp_path / "early.dcm").write_bytes(raw[:1200])
    dicomdir = Path(str(get_testdata_file("DICOMDIR")))
    shutil.copy(dicomdir, tmp_path / "DICOMDIR.dcm")
    config = _config(tmp_path)
    cut = process_input(Input(("cut.dcm",), "cut.dcm"), config)[0]
    assert cut.status == FAILED and "pixel data missing or truncated" in (cut.reason or "")
    early = process_input(Input(("early.dcm",), "early.dcm"), config)[0]
    assert early.status == FAILED, early
    listing = process_input(Input(("DICOMDIR.dcm",), "DICOMDIR.dcm"), config)[0]
    assert listing.status == SKIPPED and "Media Storage Directory" in (listing.reason or "")


def test_library_errors_become_the_files_failure(tmp_path: Path) -> None:
    save(tmp_path / "ok.png", textured(32, 32, seed=1))
    gz = tmp_path / "bad.nii.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)  # gzip magic, garbage after
    with pytest.raises(ImageError) as caught:
        read_image(gz)
    assert "bad.nii.gz: cannot read" in caught.value.message
    assert caught.value.error is not None and caught.value.error["type"]
    with pytest.raises(ImageError, match="bad.nii.gz"):
        read_mask(gz)
    result = process_input(Input(("bad.nii.gz",), "bad.nii.gz"), _config(tmp_path))[0]
    assert result.status == FAILED and result.error is not None


def test_a_bug_in_svdharm_fails_the_unit_and_stays_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(tmp_path / "a.png", textured(80, 80, seed=2))

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(volume, "transform", broken)
    result = process_input(Input(("a.png",), "a.png"), _config(tmp_path, Method.DEHARMONIZE))[0]
    assert result.status == FAILED
    assert results.INTERNAL in (result.reason or "") and "TypeError" in (result.reason or "")
    assert result.error is not None and result.error["type"] == "TypeError"
    assert any("svdharm_cli/run/worker.py" in f for f in result.error["traceback"])
    assert any("svdharm_cli/core/volume.py" in f for f in result.error["traceback"])
    assert not (tmp_path / "out" / "a_aug0.png").exists()


def test_skip_stays_a_skip(tmp_path: Path) -> None:
    rtplan = Path(str(get_testdata_file("rtplan.dcm")))
    with pytest.raises(SkipImage, match="RT Plan Storage"):
        read_image(rtplan)


def _config(root: Path, method: Method = Method.HARMONIZE) -> JobConfig:
    out = root / "out"
    out.mkdir(exist_ok=True)
    seed = 1 if method is not Method.HARMONIZE else None
    return JobConfig(method, (0.07, 0.2, 0.5), root, out, draw=DrawOptions(seed=seed))
