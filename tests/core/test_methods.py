"""Harmonize, de-harmonize and both, against the oracle; seeds and coefficients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from svdharm_cli.core.bands import components_stack
from svdharm_cli.core.methods import (
    Method,
    channel_statistics,
    decompose_channels,
    deharmonize,
    draw_coefficients,
    harmonize,
    harmonize_deharmonize,
    output_seed,
    transform,
    transform_stack,
)
from tests import oracle
from tests.images import textured


def test_harmonize_to_own_statistics_is_identity() -> None:
    x = textured(50, 70, seed=1, channels=3)
    means, stds = channel_statistics(x)
    np.testing.assert_allclose(harmonize(x, means, stds, clip=False), x, atol=1e-12)


def test_deharmonize_with_unit_coefficients_is_identity() -> None:
    x = textured(50, 70, seed=2, channels=3)
    np.testing.assert_allclose(deharmonize(x, np.ones((3, 4)), clip=False), x, atol=1e-12)


def test_harmonized_components_have_reference_statistics() -> None:
    x = textured(64, 80, seed=3)
    y = textured(70, 60, seed=9) * 0.6 + 0.1
    ref_m, ref_s = channel_statistics(y)
    out = harmonize(x, ref_m, ref_s, clip=False)
    # The oracle's per-component version: each component matched, then summed.
    comps = oracle.components(x[0])
    matched = [(c - c.mean()) / c.std() * s + m for c, m, s in zip(comps, ref_m[0], ref_s[0])]
    for c, m, s in zip(matched, ref_m[0], ref_s[0]):
        assert c.mean() == pytest.approx(m, abs=1e-12)
        assert c.std() == pytest.approx(s, rel=1e-9)
    np.testing.assert_allclose(out[0], sum(matched), atol=1e-10)


def test_harmonize_matches_oracle_per_channel() -> None:
    x = textured(40, 45, seed=4, channels=3)
    y = textured(33, 52, seed=5, channels=3)
    ref_m, ref_s = channel_statistics(y)
    out = harmonize(x, ref_m, ref_s, clip=False)
    for k in range(3):
        expected = oracle.harmonize_channel(x[k], ref_m[k], ref_s[k])
        np.testing.assert_allclose(out[k], expected, atol=1e-10)


def test_deharmonize_and_combined_match_oracle() -> None:
    x = textured(48, 40, seed=6, channels=1)
    y = textured(48, 40, seed=7, channels=1)
    ref_m, ref_s = channel_statistics(y)
    coef = np.array([[1.1, 0.85, 1.15, 0.9]])
    np.testing.assert_allclose(
        deharmonize(x, coef, clip=False)[0], oracle.deharmonize_channel(x[0], coef[0]), atol=1e-10
    )
    np.testing.assert_allclose(
        harmonize_deharmonize(x, ref_m, ref_s, coef, clip=False)[0],
        oracle.combined_channel(x[0], ref_m[0], ref_s[0], coef[0]),
        atol=1e-10,
    )


def test_outputs_are_clipped_by_default() -> None:
    x = textured(30, 30, seed=8)
    out = deharmonize(x, np.full((1, 4), 3.0))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_zero_std_component_is_shifted_not_stretched() -> None:
    x = np.full((1, 16, 16), 0.25)
    ref_m = np.array([[0.6, 0.0, 0.0, 0.0]])
    ref_s = np.array([[0.1, 0.2, 0.2, 0.2]])
    out = harmonize(x, ref_m, ref_s, clip=False)
    np.testing.assert_allclose(out, 0.6, atol=1e-12)
    assert np.isfinite(out).all()


def test_transform_reuses_one_decomposition() -> None:
    x = textured(30, 40, seed=10, channels=2)
    bands = decompose_channels(x)
    a = transform(bands, coefficients=np.full((2, 4), 0.9))
    b = deharmonize(x, np.full((2, 4), 0.9))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        transform(bands)
    with pytest.raises(ValueError):
        transform(bands, coefficients=np.ones((3, 4)))


def test_inputs_not_modified() -> None:
    x = textured(20, 20, seed=11, channels=3)
    before = x.copy()
    m, s = channel_statistics(x)
    harmonize(x, m * 1.1, s * 0.9)
    deharmonize(x, np.full((3, 4), 1.1))
    np.testing.assert_array_equal(x, before)


def test_draw_coefficients_shared_and_per_channel() -> None:
    shared = draw_coefficients(123, 3, 4, 0.8, 1.2)
    assert shared.shape == (3, 4)
    assert (shared == shared[0]).all()
    assert ((shared >= 0.8) & (shared <= 1.2)).all()
    per = draw_coefficients(123, 3, 4, 0.8, 1.2, per_channel=True)
    assert not (per == per[0]).all()
    # Replayable from the seed alone.
    np.testing.assert_array_equal(shared[0], np.random.default_rng(123).uniform(0.8, 1.2, 4))
    with pytest.raises(ValueError):
        draw_coefficients(1, 1, 4, 1.5, 1.0)


def test_output_seed_depends_on_each_part() -> None:
    base = output_seed(42, "a/b.png", 0)
    assert base == output_seed(42, "a/b.png", 0)
    assert 0 <= base < 2**63
    others = {
        output_seed(43, "a/b.png", 0),
        output_seed(42, "a/c.png", 0),
        output_seed(42, "a/b.png", 1),
    }
    assert base not in others and len(others) == 3


def test_every_method_value_is_handled() -> None:
    x = textured(16, 16, seed=12)
    m, s = channel_statistics(x)
    coef = np.ones((1, 4))
    runs = {
        Method.HARMONIZE: lambda: harmonize(x, m, s),
        Method.DEHARMONIZE: lambda: deharmonize(x, coef),
        Method.HARMONIZE_DEHARMONIZE: lambda: harmonize_deharmonize(x, m, s, coef),
    }
    assert set(runs) == set(Method)
    for run in runs.values():
        np.testing.assert_allclose(run(), x, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 3), st.integers(1, 16), st.integers(1, 16)),
        elements=st.floats(0, 1, allow_nan=False),
    ),
    st.floats(0.0, 3.0),
)
def test_property_outputs_finite_and_in_range(x: np.ndarray, scale: float) -> None:
    c = x.shape[0]
    m, s = channel_statistics(x)
    for out in (
        harmonize(x, m * scale, s * scale),
        deharmonize(x, np.full((c, 4), scale)),
        harmonize_deharmonize(x, m, s * scale, np.full((c, 4), scale)),
    ):
        assert np.isfinite(out).all()
        assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(harmonize(x, m, s, clip=False), x, atol=1e-9)


def test_stacked_transform_equals_transform() -> None:
    """The stacked path (small images) gives what transform gives, for each method, with
    each channel matched to its own statistics and reference row; a constant channel
    (zero std) is only shifted."""
    x = np.concatenate([textured(24, 36, seed=30, channels=3), np.full((1, 24, 36), 0.4)])
    ref_m = np.array([[0.5, 0.0, 0.0, 0.0], [0.4, 0.01, 0, 0], [0.6, 0, 0, 0], [0.3, 0, 0, 0]])
    ref_s = np.array([[0.1, 0.05, 0.03, 0.02]] * 4) * np.array([[1], [1.5], [0.7], [1]])
    coef = draw_coefficients(5, 4, 4, 0.7, 1.3, per_channel=True)
    comps = components_stack(x)
    for reference, coefficients in (((ref_m, ref_s), None), (None, coef), ((ref_m, ref_s), coef)):
        expected = transform(
            decompose_channels(x), reference=reference, coefficients=coefficients, clip=False
        )
        got = transform_stack(comps, reference=reference, coefficients=coefficients)
        np.testing.assert_allclose(got, expected, atol=1e-12)
    shifted = transform_stack(comps, reference=(ref_m, ref_s))[3]
    np.testing.assert_allclose(shifted, 0.3, atol=1e-12)
