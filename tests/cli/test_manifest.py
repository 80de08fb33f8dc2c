"""Inputs as a table (``--manifest``) on every command, and compare's label measures before
and after harmonization, on scikit-learn's handwritten digits (real images) and the sample
images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter, zoom

from tests.conftest import only_log, svdharm

SAMPLES = Path(__file__).resolve().parents[2] / "sample_images"


def _table(path: Path, rows: list[dict[str, object]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(("svdharm-", ".svdharm"))
    }


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample radiographs of both sites (PNG, JPEG, 16-bit PNG, DICOM) and a table of
    them beside, with a site and a made-up label column."""
    top = tmp_path_factory.mktemp("radiographs")
    shutil.copytree(SAMPLES / "radiograph", top / "radiograph")
    rows = [
        {"path": p.relative_to(top).as_posix(), "site": p.parent.name, "id": f"p{k}"}
        for k, p in enumerate(sorted((top / "radiograph").rglob("*.*")))
    ]
    _table(top / "images.csv", rows)
    return top


def test_a_table_gives_what_the_equivalent_folder_run_gives(radiographs: Path) -> None:
    top = radiographs
    table = top / "images.csv"
    by_table, by_folder = top / "ref_table.json", top / "ref_folder.json"
    assert svdharm("fit-reference", "--manifest", table, "-o", by_table).code == 0
    assert svdharm("fit-reference", top / "radiograph", "-o", by_folder).code == 0
    a, b = json.loads(by_table.read_text()), json.loads(by_folder.read_text())
    assert a["entries"] == b["entries"]
    for command, extra in (
        ("harmonize", ("--reference", by_folder)),
        ("augment", ("--seed", "4", "--copies", "2")),
    ):
        listed, walked = top / f"{command}_table", top / f"{command}_folder"
        result = svdharm(command, "--manifest", table, listed, *extra)
        assert result.code == 0, result.stderr
        assert svdharm(command, top, walked, *extra, "--include", "radiograph/*").code == 0
        assert _files(listed) == _files(walked) and len(_files(listed)) >= 10
        log = only_log(listed)
        assert log["parameters"]["manifest"] == str(table)
        first = log["files"][0]
        assert first["columns"]["site"] in ("site_a", "site_b") and first["columns"]["id"]
    compared = svdharm("compare", "--manifest", table, "--json", top / "c.json")
    walked = svdharm(
        "compare",
        top / "radiograph" / "site_a",
        top / "radiograph" / "site_b",
        "--json",
        top / "d.json",
    )
    assert compared.code == walked.code == 0
    mine, theirs = (json.loads((top / n).read_text()) for n in ("c.json", "d.json"))
    assert mine["separability"] == theirs["separability"]


def test_rows_in_several_folders_write_an_output_table_the_next_step_reads(
    tmp_path: Path,
) -> None:
    for site in ("site_a", "site_b"):
        shutil.copytree(SAMPLES / "fundus" / site, tmp_path / "data" / site / "raw")
    rows = [
        {"path": str(p), "site": p.parent.parent.name, "grade": str(k % 2)}
        for k, p in enumerate(sorted((tmp_path / "data").rglob("*.png")))
    ]
    table = _table(tmp_path / "tables" / "images.tsv", rows, "\t")
    out = tmp_path / "out"
    result = svdharm("augment", "--manifest", table, out, "--seed", 1, "--copies", 2)
    assert result.code == 0, result.stderr
    log_path = next(out.glob("svdharm-augment-*.json"))
    made = log_path.with_suffix(".tsv")
    with open(made, newline="", encoding="utf-8") as f:
        written = list(csv.DictReader(f, delimiter="\t"))
    assert len(written) == 2 * len(rows)
    assert {r["copy"] for r in written} == {"0", "1"}
    for row in written:  # outputs under OUT at the paths relative to the files' common folder
        assert (out / row["path"]).is_file() and Path(row["input"]).is_file()
        assert row["path"].startswith(("site_a/raw/", "site_b/raw/"))
    compared = svdharm(
        "compare", "--manifest", made, "--label", "grade", "--json", tmp_path / "c.json"
    )
    assert compared.code == 0, compared.stderr
    data = json.loads((tmp_path / "c.json").read_text())
    assert [g["count"] for g in data["groups"]] == [len(rows), len(rows)]
    assert data["label"]["column"] == "grade"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,site\na.png,A\n", "no 'path' column"),
        ("path,site\na.png,A\n./a.png,B\n", "is listed already (line 2)"),
        ("path,site\n,A\n", "empty path"),
        ("path,site\na.png\n", "1 cells for 2 columns"),
        ("", "empty"),
    ],
)
def test_a_bad_table_is_a_usage_error_and_writes_nothing(
    tmp_path: Path, text: str, message: str
) -> None:
    shutil.copy(SAMPLES / "fundus" / "site_a" / "fundus_a0.png", tmp_path / "a.png")
    (tmp_path / "t.csv").write_text(text)
    out = tmp_path / "out"
    result = svdharm("augment", "--manifest", tmp_path / "t.csv", out, "--seed", 1)
    assert result.code == 2 and message in result.stderr and not out.exists()
    assert svdharm("augment", "--manifest", tmp_path / "none.csv", out).code == 2


def test_a_missing_or_damaged_listed_file_fails_alone(tmp_path: Path) -> None:
    shutil.copy(SAMPLES / "fundus" / "site_a" / "fundus_a0.png", tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path / "notes.txt").write_text("not an image")
    rows = [{"path": n} for n in ("a.png", "b.png", "gone.png", "notes.txt")]
    table = _table(tmp_path / "t.csv", rows)
    out = tmp_path / "out"
    result = svdharm("augment", "--manifest", table, out, "--seed", 1)
    assert result.code == 1
    records = {f["path"]: f for f in only_log(out)["files"]}
    assert records["a.png"]["status"] == "ok" and (out / "a_aug0.png").is_file()
    assert "does not exist (listed in the manifest)" in records["gone.png"]["reason"]
    assert "not a PNG, JPEG, TIFF, NIfTI or DICOM" in records["notes.txt"]["reason"]
    assert records["b.png"]["status"] == "failed"


def test_a_mask_column_replaces_mask_dir(tmp_path: Path) -> None:
    src = tmp_path / "in"
    shutil.copytree(SAMPLES / "fundus" / "site_b", src)
    masks = tmp_path / "masks"
    rows = []
    for image in sorted(src.glob("*.png")):
        pixels = np.asarray(Image.open(image).convert("L"))
        mask = masks / image.name
        mask.parent.mkdir(exist_ok=True)
        Image.fromarray(((pixels > 20) * 255).astype(np.uint8)).save(mask)
        rows.append({"path": image.name, "mask": f"../masks/{image.name}"})
    table = _table(src / "t.csv", rows)  # beside the images: the same relative paths
    listed, mirrored = tmp_path / "listed", tmp_path / "mirrored"
    assert svdharm("augment", "--manifest", table, listed, "--seed", 2).code == 0
    result = svdharm(
        "augment", src, mirrored, "--seed", 2, "--mask-dir", masks, "--include", "*.png"
    )
    assert result.code == 0, result.stderr
    assert _files(listed) == _files(mirrored) and _files(mirrored)
    assert svdharm("augment", "--manifest", table, tmp_path / "x", "--mask", "auto").code == 2


def _digits(out: Path, per_site: int, texture: bool = False) -> Path:
    """scikit-learn's handwritten digits (real images) as 32 x 32 PNGs: site A as they
    are, site B blurred, darker and flatter; the digit as the label. With ``texture``, the
    label is instead whether the first band was made 1.6 times as strong (by svdharm's own
    de-harmonization, coefficients 1, 1.6, 1, 1): a label carried only by that band's
    energy, which harmonization matches away."""
    from sklearn.datasets import load_digits

    from svdharm_cli.core.methods import deharmonize

    digits = load_digits()
    rng = np.random.default_rng(0)
    rows = []
    for k, i in enumerate(rng.permutation(len(digits.images))[: 2 * per_site]):
        site = "A" if k < per_site else "B"
        x = zoom(digits.images[i] / 16.0, 4, order=1)
        label = str(digits.target[i])
        if texture:
            label = "strong" if k % 2 else "plain"
            x = x * 0.5 + 0.25  # room for the stronger band: nothing clipped
            if label == "strong":
                x = deharmonize(x[None], np.array([[1.0, 1.6, 1.0, 1.0]]), clip=False)[0]
        if site == "B":
            x = gaussian_filter(x, 0.6) * 0.6 + 0.2
        rel = f"site_{site.lower()}/d{k:04d}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8)).save(out / rel)
        rows.append({"path": rel, "site": site, "label": label})
    _table(out / "site_a.csv", [r for r in rows if r["site"] == "A"])
    return _table(out / "digits.csv", rows)


def _measures(table: Path, tmp_path: Path) -> dict:
    reference = tmp_path / "ref.json"
    assert (
        svdharm("fit-reference", "--manifest", table.with_name("site_a.csv"), "-o", reference).code
        == 0
    )
    report = tmp_path / "c.html"
    result = svdharm(
        "compare",
        "--manifest",
        table,
        "--label",
        "label",
        "--reference",
        reference,
        "--json",
        tmp_path / "c.json",
        "-o",
        report,
    )
    assert result.code == 0, result.stderr
    assert 'id="loso-after"' in report.read_text()
    return json.loads((tmp_path / "c.json").read_text())


def test_compare_shows_sites_merging_and_the_digit_surviving(tmp_path: Path) -> None:
    data = _measures(_digits(tmp_path / "digits", 100), tmp_path)
    before, after = data["before"], data["after"]
    assert before["separability"]["accuracy"] > 0.95
    assert after["separability"]["accuracy"] < before["separability"]["accuracy"] - 0.1
    assert before["label"]["chance"] < 0.2 and before["label"]["labels"] == 10
    assert after["label"]["accuracy"] > before["label"]["accuracy"] - 0.1
    assert after["label"]["leave_one_site_out"] > before["label"]["leave_one_site_out"] + 0.1
    assert data["label"] == before["label"]


def test_compare_shows_a_label_that_harmonization_erases(tmp_path: Path) -> None:
    data = _measures(_digits(tmp_path / "grain", 80, texture=True), tmp_path)
    before, after = data["before"]["label"], data["after"]["label"]
    assert before["accuracy"] >= 0.85  # plain to see in the first band's energy
    assert after["accuracy"] < before["accuracy"] - 0.2  # matched to the reference: gone


def test_a_table_of_pydicom_and_nibabel_files_where_they_lie(tmp_path: Path) -> None:
    import pydicom
    from nibabel.testing import data_path
    from pydicom.data import get_testdata_file

    files = [Path(get_testdata_file("MR_small.dcm")), Path(get_testdata_file("CT_small.dcm"))]
    files.append(Path(data_path) / "anatomical.nii")
    table = _table(
        tmp_path / "t.csv", [{"path": str(f), "subject": f"s{k}"} for k, f in enumerate(files)]
    )
    reference = tmp_path / "ref.json"
    assert svdharm("fit-reference", "--manifest", table, "-o", reference).code == 0
    kinds = sorted(e["kind"] for e in json.loads(reference.read_text())["entries"])
    assert kinds == ["", "CT", "MR"]
    out = tmp_path / "out"
    result = svdharm("harmonize", "--manifest", table, out, "--reference", reference)
    assert result.code == 0, result.stderr
    made = next(out.glob("svdharm-harmonize-*.csv"))
    with open(made, newline="", encoding="utf-8") as f:
        written = {row["subject"]: row for row in csv.DictReader(f)}
    assert set(written) == {"s0", "s1", "s2"}
    for k, source in enumerate(files):  # each is its kind's only image: back unchanged
        output = out / written[f"s{k}"]["path"]
        assert Path(written[f"s{k}"]["input"]) == source.resolve()
        if source.suffix == ".dcm":
            a = pydicom.dcmread(source).pixel_array.astype(float)
            b = pydicom.dcmread(output).pixel_array.astype(float)
            assert np.abs(a - b).max() <= 1
        else:
            assert output.stat().st_size > 0
