"""tune's workers: a candidate's row is the images harmonized as harmonize harmonizes them
(from the one shared decomposition) and measured as compare measures them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svdharm_cli.core.methods import pool
from svdharm_cli.core.reference import Reference
from svdharm_cli.core.volume import transform_volume, volume_moments
from svdharm_cli.evidence.compare import sample_from_moments, slice_features
from svdharm_cli.evidence.tuning import YARDSTICK, Candidate
from svdharm_cli.files.inputs import input_masks, read_input
from svdharm_cli.run.candidates import FitCandidates, MeasureCandidates
from svdharm_cli.run.options import ReadOptions
from svdharm_cli.run.sampling import walked_groups
from svdharm_cli.run.tuning import sampled_per_site

CANDIDATES = (Candidate((0.07, 0.2, 0.5)), Candidate((0.1, 0.5), "auto"))


def _sites(top: Path) -> list[Path]:
    """Two sites of three 48 x 60 RGB images: a bright disc on a dark surround (so that the
    automatic mask has something to cut), site B darker and flatter."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:60]
    disc = (yy - 24) ** 2 + (xx - 30) ** 2 < 20**2
    folders = []
    for site, gain in (("a", 1.0), ("b", 0.6)):
        folder = top / site
        folder.mkdir(parents=True)
        for k in range(3):
            img = disc[..., None] * (0.3 + 0.4 * rng.random((48, 60, 3))) * gain
            img += 0.02 * rng.random((48, 60, 3))
            Image.fromarray(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(
                folder / f"i{k}.png"
            )
        folders.append(folder)
    return folders


def test_a_candidates_row_is_harmonize_then_compares_features(tmp_path: Path) -> None:
    names, items, _ = walked_groups(_sites(tmp_path), ReadOptions(), lambda p: p)
    reports: list = []
    fit = FitCandidates(CANDIDATES, ReadOptions())
    for item in items:
        fit.one(item, 1, reports.append)
    kind = reports[0].kind
    references = tuple(
        (
            np.mean([f.statistics[k][0].means for f in reports], axis=0),
            np.mean([f.statistics[k][0].stds for f in reports], axis=0),
        )
        for k in range(len(CANDIDATES))
    )
    task = MeasureCandidates(CANDIDATES, references, ReadOptions(), "auto", kind, seed=5)
    for item in items:
        samples = task.measure(item)
        assert not isinstance(samples, str) and len(samples) == 3
        images = read_input(item.root, item.inp, 10**8, 2)
        frames = [f for im in images for f in im.frames]
        auto = [m[0] for m in input_masks(images, item.inp, item.root, "auto")]
        for k, candidate in enumerate((None, *CANDIDATES)):
            if candidate is None:
                new = frames
            else:  # what harmonize writes, before quantizing
                masks = auto if candidate.mask == "auto" else None
                new = transform_volume(
                    frames, candidate.fractions, reference=references[k - 1], masks=masks
                )[0]
                new = [np.clip(x, 0, 1) for x in new]
            moments, values = slice_features(zip(new, auto), YARDSTICK, 3)
            rng = np.random.default_rng([5, item.index])
            want = sample_from_moments(item.group, "", "normalized", moments, values, rng)
            got = samples[k]
            np.testing.assert_allclose(got.means, want.means, atol=1e-9)
            np.testing.assert_allclose(got.stds, want.stds, atol=1e-9)
            np.testing.assert_allclose(got.percentiles, want.percentiles, atol=1e-9)
            assert got.pixels.shape == (3, 2048) and got.label == item.label


def test_the_reference_images_statistics_are_fit_references(tmp_path: Path) -> None:
    _, items, _ = walked_groups(_sites(tmp_path), ReadOptions(), lambda p: p)
    reports: list = []
    FitCandidates(CANDIDATES[:1], ReadOptions()).one(items[0], 1, reports.append)
    images = read_input(items[0].root, items[0].inp, 10**8, 2)
    [want] = volume_moments([f for im in images for f in im.frames], CANDIDATES[0].fractions)
    got = pool(reports[0].statistics[0])
    np.testing.assert_allclose(got.means, want.means, atol=1e-12)
    np.testing.assert_allclose(got.stds, want.stds, atol=1e-12)
    fitted = Reference.fit([("normalized", got.means, got.stds)], CANDIDATES[0].fractions)
    assert fitted.entries[0].images == 1


def test_another_kind_is_left_out_saying_why(tmp_path: Path) -> None:
    _, items, _ = walked_groups(_sites(tmp_path), ReadOptions(), lambda p: p)
    task = MeasureCandidates(
        CANDIDATES[:1],
        ((np.zeros((1, 4)), np.ones((1, 4))),),
        ReadOptions(),
        "none",
        ("", "normalized", 1),
        seed=0,
    )
    reason = task.measure(items[0])
    assert isinstance(reason, str)
    assert "RGB (3 channels)" in reason and "only images of one kind" in reason


@pytest.mark.parametrize("seed", [0, 1])
def test_the_sample_per_site_is_seeded_and_in_input_order(tmp_path: Path, seed: int) -> None:
    top = tmp_path / "t"
    _, items, _ = walked_groups(_sites(top), ReadOptions(), lambda p: p)
    first = sampled_per_site(items, 2, 2, seed)
    assert first == sampled_per_site(items, 2, 2, seed)
    assert [i.index for i in first] == [0, 1, 2, 3]
    assert [i.group for i in first] == [0, 0, 1, 1]
    assert sampled_per_site(items, 2, 5, seed) == items


def test_a_large_input_is_measured_within_its_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the decomposition budget a slice is decomposed again (the same figures);
    beyond the values budget the percentiles come from a seeded share of the pixels."""
    import svdharm_cli.run.candidates as tuning

    _, items, _ = walked_groups(_sites(tmp_path), ReadOptions(), lambda p: p)
    references = ((np.full((3, 4), 0.05), np.full((3, 4), 0.02)),)
    task = MeasureCandidates(
        CANDIDATES[:1], references, ReadOptions(), "none", ("", "normalized", 3), seed=2
    )
    plain = task.measure(items[0])
    monkeypatch.setattr(tuning, "CACHE_BYTES", 0)
    again = task.measure(items[0])
    monkeypatch.setattr(tuning, "VALUES_BYTES", 8 * 2 * 3 * 500)
    shared = task.measure(items[0])
    assert not isinstance(plain, str) and not isinstance(again, str)
    assert not isinstance(shared, str)
    for a, b, c in zip(plain, again, shared):
        np.testing.assert_array_equal(a.stds, b.stds)
        np.testing.assert_array_equal(a.percentiles, b.percentiles)
        np.testing.assert_array_equal(a.stds, c.stds)
        np.testing.assert_allclose(a.percentiles, c.percentiles, atol=0.05)
        assert not np.array_equal(a.percentiles, c.percentiles)
