"""One decomposition for many cut sets (tune's core) against the float64 full-SVD oracle:
each cut set's statistics over any pixels, and the images harmonized with each."""

from __future__ import annotations

import numpy as np
import pytest

from svdharm_cli.core.bands import decompose
from svdharm_cli.core.methods import ZERO_STD, Moments, method_map
from svdharm_cli.core.spectrum import decompose_once, harmonized, slice_spectrum
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
    spectrum = slice_spectrum(decompose_once(frame, CUTS), CUTS, {"m": mask})
    for fractions in CUTS:
        got = spectrum.moments(fractions, "m")
        assert got.count == (frame[0].size if mask is None else int(mask.sum()))
        for c in range(shape[0]):
            means, stds = _masked_stats(frame[c], fractions, mask)
            np.testing.assert_allclose(got.means[c], means, atol=1e-12)
            np.testing.assert_allclose(got.stds[c], stds, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 40, 52), (2, 50, 36)])
def test_one_decomposition_harmonizes_with_every_cut_set_as_the_oracle(
    shape: tuple[int, ...],
) -> None:
    frame = _frame(shape, seed=3)
    bands = decompose_once(frame, CUTS)
    spectrum = slice_spectrum(bands, CUTS, {"none": None})
    for fractions in CUTS:
        own = spectrum.moments(fractions, "none")
        reference = (own.means * 0.8 + 0.05, own.stds * 1.3)
        scales, offsets = method_map(*own.means.shape, reference=reference, own=own)
        assert offsets is not None
        new = harmonized(bands, fractions, scales, offsets)
        for c in range(shape[0]):
            want = oracle.harmonize_channel(frame[c], reference[0][c], reference[1][c], fractions)
            np.testing.assert_allclose(new[c], want, atol=1e-10)


@pytest.mark.parametrize("shape", [(30, 44), (44, 30)])
def test_a_recut_decomposition_is_the_decomposition_at_those_cuts(shape: tuple[int, int]) -> None:
    x = _frame((1, *shape), seed=4)[0]
    once = decompose(x, (0.7,))
    for fractions in CUTS[:3]:
        again = once.recut(fractions)
        np.testing.assert_allclose(again.components(), oracle.components(x, fractions), atol=1e-10)
        np.testing.assert_allclose(again.stats[1], decompose(x, fractions).stats[1], atol=1e-12)
    with pytest.raises(ValueError, match="decomposed up to"):
        decompose(x, (0.2,)).recut((0.1, 0.5))


def test_a_flat_component_is_only_shifted() -> None:
    """A std at or below ZERO_STD keeps scale 1 (METHOD.md section 4), as harmonize does."""
    own = Moments(10, np.array([[0.5, 0.0]]), np.array([[0.2, ZERO_STD / 2]]))
    reference = (np.array([[0.4, 0.01]]), np.array([[0.1, 0.3]]))
    scales, offsets = method_map(1, 2, reference=reference, own=own)
    np.testing.assert_allclose(scales, [[0.5, 1.0]])
    np.testing.assert_allclose(offsets, [0.4 - 0.5 * 0.5 + 0.01])


def test_an_empty_mask_gives_no_pixels() -> None:
    frame = _frame((1, 20, 20))
    spectrum = slice_spectrum(
        decompose_once(frame, [(0.2,)]), [(0.2,)], {"m": np.zeros((20, 20), bool)}
    )
    got = spectrum.moments((0.2,), "m")
    assert got.count == 0 and not got.means.any() and not got.stds.any()
