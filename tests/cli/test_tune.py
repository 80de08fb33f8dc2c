"""``svdharm tune`` end to end: from a table with a label (scikit-learn's handwritten digits),
from folders (the sample fundi, with masks), and from pydicom's and nibabel's files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, decoded_images
from tests.cli.test_manifest import _digits, _files
from tests.conftest import svdharm

SAMPLES = Path(__file__).resolve().parents[2] / "sample_images"
GRID = "0.07,0.2,0.5;0.02,0.05,0.1;0.15,0.35,0.7"


def _written(folder: Path) -> tuple[object, ...]:
    """The reference and the JSON result, written in ``folder``."""
    return ("-o", folder / "reference.json", "--json", folder / "tune.json")


def _fit(*args: object, out: Path) -> dict:
    result = svdharm("fit-reference", *args, "-o", out)
    assert result.code == 0, result.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _digits(tmp_path_factory.mktemp("tune") / "digits", 60)


def _tune(
    table: Path, out: Path, *extra: object, sample: int = 40, grid: str = GRID
) -> tuple[dict, str]:
    result = svdharm(
        "tune",
        "--manifest",
        table,
        "--label",
        "label",
        "-o",
        out / "reference.json",
        "--json",
        out / "tune.json",
        "--report",
        out / "tune.html",
        "--fractions-grid",
        grid,
        "--sample",
        sample,
        *extra,
    )
    assert result.code == 0, result.stderr
    return json.loads((out / "tune.json").read_text()), result.stdout


def test_tune_from_a_table_with_a_label(digits: Path, tmp_path: Path) -> None:
    data, stdout = _tune(digits, tmp_path)
    assert [s["sampled"] for s in data["sites"]] == [40, 40]
    assert [s["count"] for s in data["sites"]] == [60, 60]
    assert [c["fractions"] for c in data["candidates"]] == [
        [0.07, 0.2, 0.5],
        [0.02, 0.05, 0.1],
        [0.15, 0.35, 0.7],
    ]
    base = data["unharmonized"]
    assert base["separability"]["accuracy"] > 0.9  # site B is blurred, darker and flatter
    assert base["label"]["labels"] == 10
    for row in data["candidates"]:  # the intensity distributions are brought together
        assert row["wasserstein"] < base["wasserstein"] / 5
        assert row["label"]["leave_one_site_out"] is not None
    rows = data["candidates"]  # the sites merge; a model trained on one reads the other
    assert (
        min(r["separability"]["accuracy"] for r in rows) < base["separability"]["accuracy"] - 0.05
    )
    held = base["label"]["leave_one_site_out"]
    assert max(r["label"]["leave_one_site_out"] for r in rows) > held + 0.05
    chosen = data["candidates"][data["chosen"]["index"]]
    assert "leave-one-site-out" in data["rule"] and data["reasoning"]
    assert data["margin"] == pytest.approx(
        (base["label"]["accuracy"] * (1 - base["label"]["accuracy"]) / 80) ** 0.5
    )
    # The rule, checked from the figures: the best held-out accuracy among the eligible,
    # or, when harmonization costs every candidate label accuracy, the one that costs least.
    eligible = [c for c in data["candidates"] if c["eligible"]]
    if eligible:
        best = max(c["label"]["leave_one_site_out"] for c in eligible)
        assert chosen["eligible"] and chosen["label"]["leave_one_site_out"] == best
    else:
        best = max(c["label"]["accuracy"] for c in data["candidates"])
        assert chosen["label"]["accuracy"] == best and not data["beats_unharmonized"]
        assert "do not use it without looking" in stdout
    cuts = ",".join(f"{f:g}" for f in chosen["fractions"])
    assert f"chosen: --fractions {cuts}" in stdout
    page = (tmp_path / "tune.html").read_text()
    assert 'id="candidates"' in page and 'class="chosen"' in page and "data:image/png" in page

    # The reference written is what fit-reference fits with the chosen cuts...
    tuned = json.loads((tmp_path / "reference.json").read_text())
    fitted = _fit("--manifest", digits, "--fractions", cuts, out=tmp_path / "fitted.json")
    assert tuned["fractions"] == chosen["fractions"]
    assert tuned["entries"] == fitted["entries"] and tuned["sources"] == fitted["sources"]
    # ... and harmonizes exactly as it does.
    for name in ("reference", "fitted"):
        reference = tmp_path / f"{name}.json"
        result = svdharm(
            "harmonize", digits.parent / "site_b", tmp_path / name, "--reference", reference
        )
        assert result.code == 0, result.stderr
    assert _files(tmp_path / "reference") == _files(tmp_path / "fitted")
    assert len(_files(tmp_path / "fitted")) == 60


def test_tune_is_deterministic_for_a_seed(digits: Path, tmp_path: Path) -> None:
    runs = []
    for k in range(2):
        (tmp_path / str(k)).mkdir()
        data, _ = _tune(
            digits, tmp_path / str(k), "--seed", 3, "--workers", 1 + k, sample=20, grid="0.1,0.5"
        )
        data.pop("seconds"), data.pop("reference")
        runs.append(data)
    assert runs[0] == runs[1]
    other, _ = _tune(digits, tmp_path, "--seed", 4, sample=20, grid="0.1,0.5")
    assert other["candidates"] != runs[0]["candidates"]  # another sample, other figures


def test_tune_from_folders_with_masks_and_a_target_site(tmp_path: Path) -> None:
    sites = [SAMPLES / "fundus" / "site_a", SAMPLES / "fundus" / "site_b"]
    result = svdharm(
        "tune",
        *sites,
        "--mask",
        "none,auto",
        "--target-site",
        "site_a",
        "--kind",
        "fundus=*",
        "--fractions-grid",
        "0.07,0.2,0.5",
        "--fractions-grid",
        "0.1,0.5",
        *_written(tmp_path),
    )
    assert result.code == 0, result.stderr
    data = json.loads((tmp_path / "tune.json").read_text())
    assert [(c["fractions"], c["mask"]) for c in data["candidates"]] == [
        ([0.07, 0.2, 0.5], "none"),
        ([0.1, 0.5], "none"),
        ([0.07, 0.2, 0.5], "auto"),
        ([0.1, 0.5], "auto"),
    ]
    assert data["measured_over"] == "auto" and data["target_site"] == "site_a"
    assert data["label"] is None and "nothing guards the biology" in data["rule"]
    assert "nothing checked that what matters" in result.stdout
    assert "tune: 2 sites" in result.stdout
    assert "decomposed once for all candidates' statistics" in result.stdout
    chosen = data["candidates"][data["chosen"]["index"]]
    fitted = _fit(
        sites[0],
        "--fractions",
        ",".join(f"{f:g}" for f in chosen["fractions"]),
        "--mask",
        chosen["mask"],
        "--kind",
        "fundus=*",
        out=tmp_path / "fitted.json",
    )
    tuned = json.loads((tmp_path / "reference.json").read_text())
    assert tuned["entries"] == fitted["entries"] and tuned["mask"] == chosen["mask"]


def test_tune_on_pydicom_and_nibabel_files(tmp_path: Path) -> None:
    """Real MR files (pydicom's single frames, pydicom-data's 10-frame volumes), a CT and a
    NIfTI beside them: the MRs are compared, the others left out, saying why."""
    from nibabel.testing import data_path
    from pydicom.data import get_testdata_file

    layout = {
        "a": ["MR_small.dcm", "MR_small_RLE.dcm", "CT_small.dcm"],
        "b": ["emri_small.dcm", "emri_small_RLE.dcm"],
    }
    for site, names in layout.items():
        (tmp_path / site).mkdir()
        for name in names:
            shutil.copy(str(get_testdata_file(name)), tmp_path / site / name)
    shutil.copy(Path(data_path) / "anatomical.nii", tmp_path / "b" / "anatomical.nii")
    result = svdharm(
        "tune",
        tmp_path / "a",
        tmp_path / "b",
        "-o",
        tmp_path / "reference.json",
        "--json",
        tmp_path / "tune.json",
        "--fractions-grid",
        GRID,
    )
    assert result.code == 0, result.stderr
    data = json.loads((tmp_path / "tune.json").read_text())
    assert data["kind"] == "MR" and [s["sampled"] for s in data["sites"]] == [2, 2]
    left = {Path(r["path"]).name: r["reason"] for r in data["left_out"]}
    assert set(left) == {"CT_small.dcm", "anatomical.nii"}
    assert all("only images of one kind" in reason for reason in left.values())
    assert data["unharmonized"]["separability"]["accuracy"] is not None
    chosen = data["candidates"][data["chosen"]["index"]]
    fitted = _fit(
        tmp_path / "a",
        tmp_path / "b",
        "--fractions",
        ",".join(f"{f:g}" for f in chosen["fractions"]),
        out=tmp_path / "fitted.json",
    )
    tuned = json.loads((tmp_path / "reference.json").read_text())
    assert tuned["entries"] == fitted["entries"]
    assert sorted(e["kind"] for e in tuned["entries"]) == ["", "CT", "MR"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--fractions-grid", "0.2,0.1"), "must increase"),
        (("--mask", "auto,sometimes"), "'sometimes' is none of"),
        (("--mask", "dir"), "needs a manifest with a mask column"),
        (("--target-site", "elsewhere"), "is none of the sites: site_a, site_b"),
    ],
)
def test_bad_options_are_usage_errors(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    sites = [SAMPLES / "fundus" / "site_a", SAMPLES / "fundus" / "site_b"]
    result = svdharm("tune", *sites, "-o", tmp_path / "r.json", *args)
    assert result.code == 2 and message in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_one_site_is_not_enough(tmp_path: Path) -> None:
    result = svdharm("tune", SAMPLES / "fundus" / "site_a", "-o", tmp_path / "r.json")
    assert result.code == 2 and "at least two sites" in result.stderr


def test_a_damaged_file_fails_alone_and_is_reported_once(tmp_path: Path) -> None:
    for site in ("site_a", "site_b"):
        (tmp_path / site).mkdir()
        for png in sorted((SAMPLES / "fundus" / site).glob("*.png")):
            shutil.copy(png, tmp_path / site / png.name)
    first = sorted((tmp_path / "site_a").glob("*.png"))[0]
    (tmp_path / "site_a" / "cut.png").write_bytes(first.read_bytes()[:300])
    result = svdharm(
        "tune",
        tmp_path / "site_a",
        tmp_path / "site_b",
        "--fractions-grid",
        "0.1,0.5",
        *_written(tmp_path),
    )
    assert result.code == 1 and result.stderr.count("cut.png") == 1
    data = json.loads((tmp_path / "tune.json").read_text())
    assert [Path(r["path"]).name for r in data["left_out"]] == ["cut.png"]
    assert data["sites"][0]["count"] == data["sites"][0]["sampled"] + 1
    assert json.loads((tmp_path / "reference.json").read_text())["fractions"] == [0.1, 0.5]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_tune_report_opens_in_headless_browser(digits: Path, tmp_path: Path) -> None:
    _tune(digits, tmp_path, sample=20, grid="0.1,0.5;0.2")
    html = (tmp_path / "tune.html").read_text()
    decoded, total, verdict = decoded_images(html, "verdict")
    assert decoded == total == 1
    assert verdict is not None and "Chosen: --fractions" in verdict
