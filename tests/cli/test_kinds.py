"""Kinds end to end, on real files: nibabel's example volumes renamed the BIDS way, and
pydicom's and pydicom-data's MR, CR and (a copy relabelled) MG images in one folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from tests.conftest import only_log, svdharm

BIDS = {  # nibabel's example volumes, named as one subject's anatomical contrasts
    "sub-01_T1w.nii": "anatomical.nii",
    "sub-01_T2w.nii.gz": "standard.nii.gz",
    "sub-01_FLAIR.nii": "reoriented_anat_moved.nii",
}


@pytest.fixture(scope="module")
def bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    anat = tmp_path_factory.mktemp("bids") / "sub-01" / "anat"
    anat.mkdir(parents=True)
    for name, source in BIDS.items():
        shutil.copy(Path(data_path) / source, anat / name)
    (anat / "sub-01_T1w.json").write_text('{"RepetitionTime": 2.3}')  # a sidecar: no image
    return anat.parent.parent


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("modalities")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    shutil.copy(get_testdata_file("RG3_J2KI.dcm"), folder / "cr.dcm")  # pydicom-data's CR
    mg = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    mg.Modality = "MG"  # no mammogram ships with pydicom: an MR series relabelled
    mg.save_as(folder / "mg.dcm")
    return folder


def _voxels(path: Path) -> np.ndarray:
    if path.suffix == ".dcm":
        return pydicom.dcmread(path).pixel_array.astype(np.float64)
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def _unchanged(inp: Path, out: Path, rels: list[str]) -> None:
    """Every output equals its input within the accuracy bound (METHOD.md section 9): one
    stored level for integer data (the rounding back), 1e-5 of the range for floats."""
    for rel in rels:
        a, b = _voxels(inp / rel), _voxels(out / rel)
        span = float(a.max() - a.min()) or 1.0
        assert np.abs(a - b).max() <= max(1.0, 1e-5 * span), rel


def test_a_bids_tree_gives_one_entry_per_contrast_and_each_comes_back(
    bids: Path, tmp_path: Path
) -> None:
    ref = tmp_path / "ref.json"
    fitted = svdharm("fit-reference", bids, "-o", ref)
    assert fitted.code == 0, fitted.stderr
    assert "FLAIR, gray (1 channel) in raw units (1 image)" in fitted.stdout
    data = json.loads(ref.read_text())
    assert data["format_version"] == 4
    assert sorted(e["kind"] for e in data["entries"]) == ["FLAIR", "T1w", "T2w"]
    out = tmp_path / "out"
    result = svdharm("harmonize", bids, out, "--reference", ref)
    assert result.code == 0, result.stderr
    rels = [f"sub-01/anat/{name}" for name in BIDS]
    _unchanged(bids, out, rels)
    records = {f["path"]: f for f in only_log(out)["files"]}
    assert {records[r]["kind"] for r in rels} == {"T1w", "T2w", "FLAIR"}
    # One rule for every file puts the contrasts back into one entry: their average, which
    # moves each of them (what a reference did before kinds).
    one = tmp_path / "one.json"
    assert svdharm("fit-reference", bids, "-o", one, "--kind", "MR=*.nii*").code == 0
    assert [e["kind"] for e in json.loads(one.read_text())["entries"]] == ["MR"]
    mixed = tmp_path / "mixed"
    assert svdharm("harmonize", bids, mixed, "--reference", one, "--kind", "MR=*.nii*").code == 0
    t1 = "sub-01/anat/sub-01_T1w.nii"
    assert np.abs(_voxels(bids / t1) - _voxels(mixed / t1)).max() > 10


def test_an_mr_cr_mg_folder_gives_one_entry_per_modality(dicoms: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref.json"
    assert svdharm("fit-reference", dicoms, "-o", ref).code == 0
    entries = json.loads(ref.read_text())["entries"]
    assert [(e["kind"], e["unit"], e["images"]) for e in entries] == [
        ("CR", "normalized", 1),
        ("MG", "normalized", 1),
        ("MR", "normalized", 1),
    ]
    out = tmp_path / "out"
    result = svdharm("harmonize", dicoms, out, "--reference", ref)
    assert result.code == 0, result.stderr
    _unchanged(dicoms, out, ["mr.dcm", "cr.dcm", "mg.dcm"])
    assert pydicom.dcmread(out / "mg.dcm").Modality == "MG"


def test_a_kind_the_reference_lacks_fails_that_file_alone(dicoms: Path, tmp_path: Path) -> None:
    ref = tmp_path / "mr.json"
    assert svdharm("fit-reference", dicoms / "mr.dcm", "-o", ref).code == 0
    out = tmp_path / "out"
    result = svdharm("harmonize", dicoms, out, "--reference", ref)
    assert result.code == 1
    records = {f["path"]: f for f in only_log(out)["files"]}
    assert records["mr.dcm"]["status"] == "ok" and (out / "mr.dcm").is_file()
    for rel, kind in (("cr.dcm", "CR"), ("mg.dcm", "MG")):
        assert records[rel]["status"] == "failed" and not (out / rel).exists()
        assert f"is of kind {kind}, gray (1 channel) in normalized units" in records[rel]["reason"]
        assert "entries only for MR, gray (1 channel) in normalized units" in records[rel]["reason"]
    # A rule makes them MR: they are harmonized with the MR entry.
    ruled = tmp_path / "ruled"
    again = svdharm("harmonize", dicoms, ruled, "--reference", ref, "--kind", "MR=*.dcm")
    assert again.code == 0, again.stderr
    assert {f["kind"] for f in only_log(ruled)["files"]} == {"MR"}


def test_rules_win_over_headers_and_names(bids: Path, dicoms: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref.json"
    rules = ("--kind", "XR=cr.dcm", "--kind", "XR=mg.dcm", "--kind", "ignored=*.dcm")
    assert svdharm("fit-reference", dicoms, "-o", ref, *rules).code == 0
    kinds = {e["kind"]: e["images"] for e in json.loads(ref.read_text())["entries"]}
    assert kinds == {"XR": 2, "ignored": 1}  # first match wins: mr.dcm only meets the last
    assert svdharm("fit-reference", dicoms, "-o", ref, "--kind", "bad name=*").code == 2


def test_a_merge_keeps_kinds_apart(bids: Path, tmp_path: Path) -> None:
    refs = []
    for contrast in ("T1w", "T2w"):
        refs.append(tmp_path / f"{contrast}.json")
        fitted = svdharm("fit-reference", bids, "-o", refs[-1], "--include", f"*_{contrast}.*")
        assert fitted.code == 0, fitted.stderr
    merged = tmp_path / "merged.json"
    assert svdharm("merge-references", *refs, "-o", merged).code == 0
    entries = json.loads(merged.read_text())["entries"]
    assert [(e["kind"], e["images"]) for e in entries] == [("T1w", 1), ("T2w", 1)]
    for entry, ref in zip(entries, refs):
        assert entry["mean"] == json.loads(ref.read_text())["entries"][0]["mean"]


def test_compare_compares_images_of_one_kind_and_says_so(dicoms: Path, tmp_path: Path) -> None:
    groups = [tmp_path / "a", tmp_path / "b"]
    for k, group in enumerate(groups):
        group.mkdir()
        shutil.copy(dicoms / "cr.dcm", group / "cr.dcm")
        shutil.copy(dicoms / "mr.dcm", group / "mr1.dcm")
        mr = pydicom.dcmread(dicoms / "mr.dcm")
        mr.PixelData = (mr.pixel_array // (2 + k)).astype(mr.pixel_array.dtype).tobytes()
        mr.save_as(group / "mr2.dcm")
    result = svdharm("compare", *groups, "--json", tmp_path / "c.json")
    assert result.code == 0, result.stderr
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["kind"] == "MR" and [g["count"] for g in data["groups"]] == [2, 2]
    left = {r["path"]: r["reason"] for r in data["left_out"]}
    assert len(left) == 2 and all(
        "only images of one kind are compared" in r for r in left.values()
    )
    assert "groups (kind MR)" in result.stdout
