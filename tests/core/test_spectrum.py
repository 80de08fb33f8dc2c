"""One decomposition measured for many cut sets (tune's core) against the float64 full-SVD
oracle: each cut set's statistics, the harmonized values, and the yardstick's statistics."""

from __future__ import annotations

import numpy as np
import pytest

from svdharm_cli.core.methods import ZERO_STD, Moments
from svdharm_cli.core.spectrum import YARDSTICK, harmonizing_map, slice_spectrum
from tests import oracle

CUTS = [(0.07, 0.2, 0.5), (0.2,), (0.02, 0.05, 0.1, 0.2, 0.5), (0.15, 0.35, 0.7)]


def _frame(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise: singular values that fall off as an image's do."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.4 + 0.2 * np.sin(7 * xx) * np.cos(5 * yy)
    return np.clip(base + 0.05 * rng.standard_normal(shape), 0, 1)


def _masked_stats(x: np.ndarray, fractions: tuple[float, ...], mask: np.ndarray | None):
    comps = oracle.components(x, fractions)
    pixels = comps.reshape(len(comps), -1) if mask is None else comps[:, mask]
    return pixels.mean(axis=1), pixels.std(axis=1)


@pytest.mark.parametrize("shape", [(1, 48, 40), (2, 33, 57), (3, 64, 64)])
@pytest.mark.parametrize("masked", [False, True])
def test_every_cut_set_has_the_oracles_statistics(shape: tuple[int, ...], masked: bool) -> None:
    frame = _frame(shape)
    mask = np.random.default_rng(1).random(shape[1:]) > 0.35 if masked else None
    spectrum = slice_spectrum(frame, CUTS, {"m": mask}, np.arange(10))
    for fractions in CUTS:
        got = spectrum.moments(fractions, "m")
        assert got.count == (frame[0].size if mask is None else int(mask.sum()))
        for c in range(shape[0]):
            means, stds = _masked_stats(frame[c], fractions, mask)
            np.testing.assert_allclose(got.means[c], means, atol=1e-12)
            np.testing.assert_allclose(got.stds[c], stds, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 40, 52), (2, 50, 36)])
def test_harmonized_values_and_yardstick_match_an_explicit_computation(
    shape: tuple[int, ...],
) -> None:
    frame = _frame(shape, seed=3)
    mask = np.random.default_rng(2).random(shape[1:]) > 0.3
    positions = np.random.default_rng(4).choice(frame[0].size, 300, replace=False)
    spectrum = slice_spectrum(frame, CUTS, {"none": None, "auto": mask}, positions)
    for fractions in CUTS:
        own = spectrum.moments(fractions, "none")
        reference = (own.means * 0.8 + 0.05, own.stds * 1.3)
        scales, offsets = harmonizing_map(own, reference)
        measured, values = spectrum.measure(fractions, scales, offsets, "auto")
        for c in range(shape[0]):
            x = frame[c]
            want = oracle.harmonize_channel(x, reference[0][c], reference[1][c], fractions)
            np.testing.assert_allclose(values[c], want.ravel()[positions], atol=1e-6)
            # The yardstick: the harmonized channel along the input's own singular vectors.
            wide = x.shape[1] > x.shape[0]
            xw, yw, mw = (x.T, want.T, mask.T) if wide else (x, want, mask)
            v = np.linalg.svd(xw)[2].T
            edges = (0, *oracle.ranks(xw.shape[1], YARDSTICK))
            parts = [yw @ v[:, a:b] @ v[:, a:b].T for a, b in zip(edges, edges[1:])]
            parts.append(yw - sum(parts))
            np.testing.assert_allclose(measured.means[c], [p[mw].mean() for p in parts], atol=1e-10)
            np.testing.assert_allclose(measured.stds[c], [p[mw].std() for p in parts], atol=1e-10)


def test_unchanged_map_measures_the_input_at_the_yardstick() -> None:
    """Scales 1 and no offset: the yardstick's statistics are the input's own band
    statistics at the yardstick's cuts (what compare measures), its values the input's."""
    frame = _frame((1, 60, 60), seed=5)
    positions = np.arange(0, 3600, 7)
    spectrum = slice_spectrum(frame, [(0.1, 0.5)], {"none": None}, positions)
    measured, values = spectrum.measure(YARDSTICK, np.ones((1, 8)), np.zeros(1), "none")
    means, stds = oracle.stats(frame[0], YARDSTICK)
    np.testing.assert_allclose(measured.means[0], means, atol=1e-12)
    np.testing.assert_allclose(measured.stds[0], stds, atol=1e-12)
    np.testing.assert_allclose(values[0], frame[0].ravel()[positions], atol=1e-6)


def test_a_flat_component_is_only_shifted() -> None:
    """A std at or below ZERO_STD keeps scale 1 (METHOD.md section 4), as harmonize does."""
    own = Moments(10, np.array([[0.5, 0.0]]), np.array([[0.2, ZERO_STD / 2]]))
    scales, offsets = harmonizing_map(own, (np.array([[0.4, 0.01]]), np.array([[0.1, 0.3]])))
    np.testing.assert_allclose(scales, [[0.5, 1.0]])
    np.testing.assert_allclose(offsets, [0.4 - 0.5 * 0.5 + 0.01])


def test_an_empty_mask_gives_no_pixels() -> None:
    frame = _frame((1, 20, 20))
    spectrum = slice_spectrum(frame, [(0.2,)], {"m": np.zeros((20, 20), bool)}, np.arange(3))
    got = spectrum.moments((0.2,), "m")
    assert got.count == 0 and not got.means.any() and not got.stds.any()
