"""svdharm compare: separability and distances between sites, before and after harmonizing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.browser import CHROMIUM, decoded_images
from tests.conftest import svdharm
from tests.images import save, textured


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sites of the same kind of images; site B darker and flatter (a strong shift)."""
    root = tmp_path_factory.mktemp("sites")
    for i in range(12):
        save(root / "site_a" / f"a{i:02d}.png", textured(48, 48, seed=i))
        shifted = np.clip(textured(48, 48, seed=100 + i) * 0.55 + 0.25, 0, 1)
        save(root / "site_b" / f"b{i:02d}.png", shifted)
    (root / "site_b" / "notes.txt").write_text("not an image")
    return root


def test_separability_drops_to_chance_after_harmonizing(sites: Path, tmp_path: Path) -> None:
    before = tmp_path / "before.json"
    result = svdharm("compare", sites / "site_a", sites / "site_b", "--json", before)
    assert result.code == 0, result.stderr
    assert "separability: 1.000" in result.stdout
    data = json.loads(before.read_text())
    assert data["groups"] == [
        {"name": "site_a", "path": str(sites / "site_a"), "count": 12},
        {"name": "site_b", "path": str(sites / "site_b"), "count": 12},
    ]
    sep = data["separability"]
    assert sep["accuracy"] >= 0.95 and sep["chance"] == 0.5 and sep["folds"] == 5
    assert len(sep["fold_accuracy"]) == 5 and sep["features"] == 4 + 4 + 7
    [pair] = data["wasserstein"]
    assert (pair["a"], pair["b"]) == ("site_a", "site_b") and pair["distance"] > 0.03

    ref = tmp_path / "ref.json"
    assert svdharm("fit-reference", sites / "site_a", "-o", ref).code == 0
    harmonized = tmp_path / "site_b"
    assert svdharm("harmonize", sites / "site_b", harmonized, "--reference", ref).code == 0
    after = tmp_path / "after.json"
    assert svdharm("compare", sites / "site_a", harmonized, "--json", after).code == 0
    data_after = json.loads(after.read_text())
    assert [g["name"] for g in data_after["groups"]] == ["site_a", "site_b"]
    assert data_after["separability"]["accuracy"] <= 0.5 + 0.25
    assert data_after["wasserstein"][0]["distance"] < pair["distance"] / 3


def test_groups_that_cannot_be_compared(sites: Path, tmp_path: Path) -> None:
    assert svdharm("compare", sites / "site_a").code == 2
    assert svdharm("compare", sites / "site_a", tmp_path / "missing").code == 2
    few = tmp_path / "few"
    save(few / "one.png", textured(48, 48, seed=7))
    save(few / "colour.png", textured(48, 48, seed=8, channels=3))
    out = tmp_path / "few.json"
    result = svdharm("compare", sites / "site_a", few, "--json", out)
    assert result.code == 0, result.stderr
    data = json.loads(out.read_text())
    assert (
        data["separability"]["accuracy"] is None and "two or more" in data["separability"]["reason"]
    )
    [left] = data["left_out"]
    assert left["path"].endswith("colour.png") and "RGB (3 channels)" in left["reason"]


def test_compare_with_auto_mask(tmp_path: Path) -> None:
    """Same content, different framing: with --mask auto the black surround does not count."""
    yy, xx = np.mgrid[0:64, 0:64] / 64
    for i in range(6):
        content = textured(64, 64, seed=i)[0] * 0.5 + 0.3
        for site, radius in (("wide", 0.3), ("tight", 0.45)):
            img = np.where(np.hypot(xx - 0.5, yy - 0.5) < radius, content, 0.0)
            save(tmp_path / site / f"{i}.png", img[None])
    runs = {}
    for mask in ("none", "auto"):
        out = tmp_path / f"{mask}.json"
        result = svdharm(
            "compare", tmp_path / "wide", tmp_path / "tight", "--mask", mask, "--json", out
        )
        assert result.code == 0, result.stderr
        runs[mask] = json.loads(out.read_text())
    assert runs["auto"]["mask"] == "auto"
    assert (
        runs["auto"]["wasserstein"][0]["distance"] < runs["none"]["wasserstein"][0]["distance"] / 3
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_compare_report_opens_in_headless_browser(sites: Path, tmp_path: Path) -> None:
    page = tmp_path / "compare.html"
    assert svdharm("compare", sites / "site_a", sites / "site_b", "-o", page).code == 0
    html = page.read_text()
    assert "a drop towards chance is the evidence" in html
    decoded, total, accuracy = decoded_images(html, "accuracy")
    assert total == len(re.findall(r"<img ", html)) == 2
    assert decoded == total
    assert accuracy == "1.000"


def test_groups_with_one_name_are_named_by_path() -> None:
    from svdharm_cli.run.sampling import group_names

    assert group_names([Path("in/site"), Path("out/site"), Path("x")]) == [
        "in/site",
        "out/site",
        "x",
    ]
