"""Masks (METHOD.md section 3b): the automatic estimate, mask files, statistics over the
foreground, pixels outside written back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from svdharm_cli.core.bands import decompose
from svdharm_cli.core.masks import auto_mask
from svdharm_cli.core.methods import transform
from tests import oracle
from tests.conftest import only_log, svdharm
from tests.dicom_files import installed_files
from tests.images import load, save, textured
from tests.volumes import write_series


def framed(size: int = 96, disc: float = 0.8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured disc on an empty dark surround, with a dark hole inside the disc (like a
    lung or a ventricle) that must stay in the foreground. Returns (image, true foreground)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    inside = np.hypot(xx - 0.5, yy - 0.5) < disc / 2
    hole = np.hypot(xx - 0.42, yy - 0.45) < 0.08
    img = textured(size, size, seed=seed)[0] * 0.6 + 0.3
    img[hole] = 0.02
    rng = np.random.default_rng(seed)
    img[~inside] = 0.01 + 0.005 * rng.random(int((~inside).sum()))
    return np.clip(img, 0, 1), inside


def test_auto_mask_drops_border_background_and_keeps_enclosed_dark_structures() -> None:
    img, truth = framed()
    mask = auto_mask(img[None, None])[0]
    assert (mask == truth).mean() > 0.98
    yy, xx = np.mgrid[0:96, 0:96] / 96
    hole = np.hypot(xx - 0.42, yy - 0.45) < 0.06
    assert mask[hole].all()  # dark, but enclosed: foreground
    assert not mask[:4].any() and not mask[:, :4].any()


def test_auto_mask_leaves_images_without_surround_whole() -> None:
    full = textured(64, 64, seed=3)
    assert auto_mask(full[None]).all()
    files = {p.name: p for p in installed_files()}
    if "MR_small.dcm" in files:  # a tight crop: dark tissue meets the frame
        from svdharm_cli.files.formats import read_image

        assert auto_mask(read_image(files["MR_small.dcm"]).frames).all()


def test_auto_mask_is_one_threshold_per_volume() -> None:
    """A dim slice of a bright volume keeps its (dim) foreground: the cut is the volume's."""
    img, truth = framed(seed=1)
    volume = np.stack([img, img * 0.5 + 0.005])[:, None]
    mask = auto_mask(volume)
    assert (mask[1] == truth).mean() > 0.97


def test_harmonizing_with_a_mask_uses_the_masked_statistics() -> None:
    """The package's output (before clipping) equals the float64 oracle harmonized with the
    components' statistics over the mask only."""
    img, truth = framed(seed=2)
    ref_mean = np.array([[0.5, 0.0, 0.0, 0.0]])
    ref_std = np.array([[0.15, 0.03, 0.02, 0.01]])
    bands = decompose(img, mask=truth)
    got = transform([bands], reference=(ref_mean, ref_std), clip=False)[0]
    comps = oracle.components(img)
    expected = np.zeros_like(img)
    for c, big_m, big_s in zip(comps, ref_mean[0], ref_std[0]):
        m, s = c[truth].mean(), c[truth].std()
        expected += (c - m) / s * big_s + big_m
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # ... and so the harmonized components have the reference's statistics over the mask.
    for c, big_m, big_s in zip(comps, ref_mean[0], ref_std[0]):
        m, s = c[truth].mean(), c[truth].std()
        h = (c - m) / s * big_s + big_m
        assert h[truth].mean() == pytest.approx(big_m, abs=1e-12)
        assert h[truth].std() == pytest.approx(big_s, rel=1e-9)


def test_cli_auto_mask_writes_outside_pixels_back_and_logs_foreground(tmp_path: Path) -> None:
    refs, src = tmp_path / "refs", tmp_path / "in"
    img, truth = framed(seed=4, disc=0.9)
    save(refs / "r.png", img[None])
    small, small_truth = framed(seed=5, disc=0.6)
    save(src / "b.png", np.clip(small * 0.7 + 0.05 * small_truth, 0, 1)[None])
    ref = tmp_path / "ref.json"
    assert svdharm("fit-reference", refs, "-o", ref, "--mask", "auto").code == 0
    assert json.loads(ref.read_text())["mask"] == "auto"
    out = tmp_path / "out"
    result = svdharm("harmonize", src, out, "--reference", ref, "--mask", "auto")
    assert result.code == 0, result.stderr
    before, after = load(src / "b.png"), load(out / "b.png")
    mask = auto_mask((before / 255.0)[None, None])[0]
    assert not mask.all() and mask.any()
    np.testing.assert_array_equal(after[~mask], before[~mask])
    assert np.abs(after[mask].astype(int) - before[mask]).max() > 5
    log = only_log(out)
    assert log["parameters"]["mask"] == "auto" and log["warnings"] == []
    assert log["files"][0]["foreground"] == pytest.approx(mask.mean(), abs=1e-6)
    # Harmonizing with another mask mode than the reference's warns (and logs it).
    out2 = tmp_path / "out2"
    result = svdharm("harmonize", src, out2, "--reference", ref)
    assert result.code == 0 and "warning:" in result.stderr and "--mask auto" in result.stderr
    assert only_log(out2)["warnings"]


def test_mask_dir_matching_missing_and_misshaped(tmp_path: Path) -> None:
    src, masks = tmp_path / "in", tmp_path / "masks"
    img, truth = framed(seed=6)
    for name in ("good.png", "missing.png", "wrong.png"):
        save(src / "sub" / name, img[None])
    save(masks / "sub" / "good.png", truth[None].astype(float))
    save(masks / "sub" / "wrong.png", np.ones((1, 50, 40)))
    ref = tmp_path / "ref.json"
    assert svdharm("fit-reference", src / "sub" / "good.png", "-o", ref).code == 0
    out = tmp_path / "out"
    result = svdharm("augment", src, out, "--seed", 1, "--mask-dir", masks)
    assert result.code == 1
    records = {f["path"]: f for f in only_log(out)["files"]}
    assert records["sub/good.png"]["status"] == "ok"
    assert records["sub/good.png"]["foreground"] == pytest.approx(truth.mean(), abs=1e-6)
    after = load(out / "sub" / "good_aug0.png")
    np.testing.assert_array_equal(after[~truth], load(src / "sub" / "good.png")[~truth])
    assert records["sub/missing.png"]["status"] == "failed"
    assert "no mask file" in records["sub/missing.png"]["reason"]
    assert records["sub/wrong.png"]["status"] == "failed"
    assert "does not fit" in records["sub/wrong.png"]["reason"]
    both = svdharm("augment", src, tmp_path / "o3", "--mask", "auto", "--mask-dir", masks)
    assert both.code == 2


def test_auto_mask_on_a_series_and_padding_intersection(tmp_path: Path) -> None:
    """A series gets one automatic mask per volume; DICOM padding is still left out and
    written back with its stored value."""
    img, truth = framed(size=64, seed=7)
    stored = np.rint(np.stack([img, img * 0.9, img * 0.8]) * 4095).astype(np.uint16)
    stored[:, :3, :] = 0  # padding rows
    write_series(tmp_path / "in" / "mr", stored, PixelPaddingValue=0)
    out = tmp_path / "out"
    result = svdharm("augment", tmp_path / "in", out, "--seed", 2, "--mask", "auto")
    assert result.code == 0, result.stderr
    log = only_log(out)
    assert {f["volume"] for f in log["files"]} == {"mr/[series 1]"}
    for record in log["files"]:
        ds = pydicom.dcmread(out / record["outputs"][0]["path"])
        assert (ds.pixel_array[:3] == 0).all()
        assert 0.3 < record["foreground"] < 0.8
