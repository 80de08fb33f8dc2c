"""The decomposition against the float64 full-SVD oracle, and its invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from svdharm_cli.core.bands import band_ranks, components_stack, decompose, validate_fractions
from tests import oracle
from tests.images import textured


@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (97, 97), (3, 200)])
def test_components_match_oracle_and_sum_to_input(shape: tuple[int, int]) -> None:
    x = textured(*shape, seed=3)[0]
    comps = decompose(x).components()
    assert comps.shape == (4, *shape)
    np.testing.assert_allclose(comps, oracle.components(x), atol=1e-10)
    np.testing.assert_allclose(comps.sum(axis=0), x, atol=1e-12)


def test_stats_match_oracle() -> None:
    x = textured(80, 50, seed=4)[0]
    means, stds = decompose(x).stats
    o_means, o_stds = oracle.stats(x)
    np.testing.assert_allclose(means, o_means, atol=1e-12)
    np.testing.assert_allclose(stds, o_stds, atol=1e-10)


@pytest.mark.parametrize(
    ("r", "expected"),
    [(100, (7, 20, 50)), (256, (18, 51, 128)), (1, (1, 1, 1)), (5, (1, 1, 3)), (10, (1, 2, 5))],
)
def test_ranks_follow_method(r: int, expected: tuple[int, ...]) -> None:
    assert band_ranks(r, (0.07, 0.2, 0.5)) == expected


def test_ranks_round_half_up() -> None:
    # 0.5 * 7 = 3.5 rounds to 4 (floor(x + 0.5)), not to even.
    assert band_ranks(7, (0.5,)) == (4,)
    assert band_ranks(3, (0.5,)) == (2,)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 2)])
def test_tiny_images(shape: tuple[int, int]) -> None:
    x = np.random.default_rng(0).random(shape)
    comps = decompose(x).components()
    np.testing.assert_allclose(comps.sum(axis=0), x, atol=1e-12)
    np.testing.assert_allclose(comps, oracle.components(x), atol=1e-12)


def test_one_by_n_is_all_base() -> None:
    x = np.linspace(0, 1, 17)[None, :]
    comps = decompose(x).components()
    np.testing.assert_allclose(comps[0], x, atol=1e-14)
    assert np.abs(comps[1:]).max() < 1e-14


def test_constant_image() -> None:
    x = np.full((30, 20), 0.3)
    bands = decompose(x)
    np.testing.assert_allclose(bands.component(0), x, atol=1e-14)
    means, stds = bands.stats
    np.testing.assert_allclose(means, [0.3, 0, 0, 0], atol=1e-14)
    assert stds.max() < 1e-12


def test_any_number_of_fractions() -> None:
    x = textured(64, 64, seed=5)[0]
    comps = decompose(x, (0.1, 0.3)).components()
    assert comps.shape[0] == 3
    np.testing.assert_allclose(comps, oracle.components(x, (0.1, 0.3)), atol=1e-10)


def test_input_not_modified() -> None:
    x = textured(20, 30, seed=6)[0]
    before = x.copy()
    decompose(x).combine([2.0, 0.5, 3.0, 1.5], 0.1)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize(
    "bad", [(), (0.0, 0.5), (0.5, 1.0), (0.3, 0.2), (0.2, 0.2), (float("nan"),)]
)
def test_bad_fractions_rejected(bad: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        validate_fractions(bad)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 24), st.integers(1, 24)),
        elements=st.floats(0, 1, allow_nan=False),
    )
)
def test_property_components_sum_to_input(x: np.ndarray) -> None:
    bands = decompose(x)
    comps = bands.components()
    np.testing.assert_allclose(comps.sum(axis=0), x, atol=1e-9)
    means, stds = bands.stats
    assert np.isfinite(means).all() and np.isfinite(stds).all() and (stds >= 0).all()
    np.testing.assert_allclose(means.sum(), x.mean(), atol=1e-9)


@pytest.mark.parametrize("shape", [(28, 28), (40, 60), (60, 40), (1, 1), (1, 9), (9, 1), (3, 5)])
def test_stacked_components_match_oracle(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    stack = rng.random((5, *shape))
    comps = components_stack(stack)
    assert comps.shape == (5, 4, *shape)
    for x, c in zip(stack, comps):
        np.testing.assert_allclose(c, oracle.components(x), atol=1e-10)
        np.testing.assert_allclose(c.sum(axis=0), x, atol=1e-12)


def test_stacked_components_do_not_depend_on_the_company() -> None:
    """A channel's components are the same bits alone or among others (so outputs do not
    depend on how files were chunked)."""
    stack = np.stack([textured(30, 44, seed=s)[0] for s in range(7)])
    together = components_stack(stack, (0.1, 0.3, 0.6))
    for k in range(7):
        alone = components_stack(stack[k : k + 1], (0.1, 0.3, 0.6))[0]
        assert np.array_equal(alone, together[k])
    np.testing.assert_array_equal(components_stack(stack[2:5], (0.1, 0.3, 0.6)), together[2:5])
