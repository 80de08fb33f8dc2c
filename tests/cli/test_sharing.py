"""References that travel: fit without paths, merge sites exactly, use the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from svdharm_cli.core.reference import Reference
from tests.conftest import only_log, svdharm
from tests.images import save, textured

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_images"
SITE_A = [SAMPLES / "fundus" / "site_a", SAMPLES / "ct" / "site_a"]
SITE_B = [SAMPLES / "fundus" / "site_b", SAMPLES / "radiograph" / "site_a"]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("sharing")
    for name, folders in (("a", SITE_A), ("b", SITE_B)):
        fitted = svdharm("fit-reference", *folders, "-o", top / f"{name}.json", "--no-paths")
        assert fitted.code == 0, fitted.stderr
    union = svdharm("fit-reference", *SITE_A, *SITE_B, "-o", top / "union.json")
    assert union.code == 0, union.stderr
    merged = svdharm("merge-references", top / "a.json", top / "b.json", "-o", top / "m.json")
    assert merged.code == 0, merged.stderr
    assert "merged 2 references" in merged.stdout
    return top


def _load(path: Path) -> Reference:
    return Reference.from_json(path.read_text())


def test_no_paths_leaves_no_path_or_file_name(sites: Path) -> None:
    for name in ("a.json", "b.json", "m.json"):
        text = (sites / name).read_text()
        data = json.loads(text)
        # Each site holds DICOM (its Modality is a kind): version 4, shared and with kinds.
        assert data["format_version"] == 4 and {e["kind"] for e in data["entries"]} & {"CT", "CR"}
        assert data["sources"] and all("path" not in s for s in data["sources"])
        for folder in (*SITE_A, *SITE_B):
            assert folder.name not in text and "sample_images" not in text
        for stem in ("fundus_a0", "IM0001", "chest_a0"):
            assert stem not in text
    plain = json.loads((sites / "union.json").read_text())
    assert plain["format_version"] == 4 and all("path" in s for s in plain["sources"])


def test_a_merge_equals_a_fit_on_the_union(sites: Path) -> None:
    merged, union = _load(sites / "m.json"), _load(sites / "union.json")
    assert merged.fractions == union.fractions and merged.mask == union.mask
    assert [e.key + (e.images,) for e in merged.entries] == [
        e.key + (e.images,) for e in union.entries
    ]
    for mine, theirs in zip(merged.entries, union.entries):
        np.testing.assert_allclose(mine.mean, theirs.mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(mine.std, theirs.std, rtol=0, atol=1e-12)
    assert sorted(s.sha256 for s in merged.sources) == sorted(s.sha256 for s in union.sources)


def test_the_merge_records_its_provenance(sites: Path) -> None:
    import hashlib

    data = json.loads((sites / "m.json").read_text())
    digests = [hashlib.sha256((sites / n).read_bytes()).hexdigest() for n in ("a.json", "b.json")]
    assert [m["sha256"] for m in data["merged"]] == digests
    site_a = json.loads((sites / "a.json").read_text())
    assert data["merged"][0]["entries"] == [
        {"kind": e["kind"], "unit": e["unit"], "channels": e["channels"], "images": e["images"]}
        for e in site_a["entries"]
    ]


def test_a_merged_reference_harmonizes_as_the_union_does(sites: Path) -> None:
    inputs = SAMPLES / "fundus" / "site_b"
    runs = {}
    for name in ("m", "union"):
        out = sites / f"out_{name}"
        result = svdharm("harmonize", inputs, out, "--reference", sites / f"{name}.json")
        assert result.code == 0, result.stderr
        runs[name] = out
        log = only_log(out)
        digest = __import__("hashlib").sha256((sites / f"{name}.json").read_bytes()).hexdigest()
        assert log["reference"]["sha256"] == digest
    for path in sorted(p for p in inputs.iterdir() if p.is_file()):
        mine, theirs = runs["m"] / path.name, runs["union"] / path.name
        if path.suffix == ".dcm":  # derived UIDs name the reference: compare pixels
            a, b = pydicom.dcmread(mine).pixel_array, pydicom.dcmread(theirs).pixel_array
            assert np.array_equal(a, b)
        else:
            assert mine.read_bytes() == theirs.read_bytes(), path.name


def test_a_path_less_reference_serves_augment_and_the_report(sites: Path) -> None:
    out = sites / "aug"
    result = svdharm(
        "augment", SAMPLES / "fundus" / "site_b", out, "--reference", sites / "m.json",
        "--copies", 1, "--seed", 3, "--report",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    html = next(out.glob("*.html")).read_text()
    assert "<code>sha256 " in html and "<code>None</code>" not in html


def test_different_fractions_or_masks_are_refused(sites: Path, tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    save(refs / "r.png", textured(40, 40, seed=3))
    other = tmp_path / "other.json"
    assert svdharm("fit-reference", refs, "-o", other, "--fractions", "0.1,0.3").code == 0
    target = tmp_path / "merged.json"
    refused = svdharm("merge-references", sites / "a.json", other, "-o", target)
    assert refused.code == 2 and "fractions differ: [0.07, 0.2, 0.5] and [0.1, 0.3]" in (
        refused.stderr
    )
    assert not target.exists()
    masked = tmp_path / "masked.json"
    assert svdharm("fit-reference", refs, "-o", masked, "--mask", "auto").code == 0
    refused = svdharm("merge-references", sites / "a.json", masked, "-o", target)
    assert refused.code == 2 and "mask modes differ: 'none' and 'auto'" in refused.stderr
    assert not target.exists()
    alone = svdharm("merge-references", sites / "a.json", "-o", target)
    assert alone.code == 2 and not target.exists()


def test_version_1_references_merge(sites: Path, tmp_path: Path) -> None:
    union = _load(sites / "union.json")
    gray = union.entry("normalized", 1)
    assert gray is not None
    sources = [{"path": f"old/{i}.png", "sha256": "0" * 64, "shape": [8, 8]} for i in range(3)]
    old = {
        "format": "svdharm-reference",
        "format_version": 1,
        "fractions": list(union.fractions),
        "channels": 1,
        "mean": (gray.mean * 0.9).tolist(),
        "std": (gray.std * 1.1).tolist(),
        "sources": sources,
    }
    (tmp_path / "v1.json").write_text(json.dumps(old))
    target = tmp_path / "merged.json"
    merged = svdharm("merge-references", sites / "b.json", tmp_path / "v1.json", "-o", target)
    assert merged.code == 0, merged.stderr
    entry = _load(target).entry("normalized", 1)
    site_b = _load(sites / "b.json").entry("normalized", 1)
    # Site B's gray PNGs (its DICOM radiograph has its own kind, CR); the version-1 file's
    # entry has no kind, so it merges with them.
    assert entry is not None and site_b is not None and site_b.images == 4
    assert entry.images == 7  # a version-1 file counts its sources as its images
    expected = (4 * site_b.mean + 3 * gray.mean * 0.9) / 7
    np.testing.assert_allclose(entry.mean, expected, rtol=0, atol=1e-12)
    assert "old/" not in target.read_text()
