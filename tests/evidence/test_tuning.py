"""tune's rule and its distances, on hand-made figures."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from svdharm_cli.evidence.compare import Sample, distances
from svdharm_cli.evidence.tuning import (
    Candidate,
    choose,
    mean_wasserstein,
    wasserstein_sorted,
)


def _row(sep: float, accuracy: float | None = None, held: float | None = None) -> dict[str, Any]:
    label = None if accuracy is None else {"accuracy": accuracy, "leave_one_site_out": held}
    return {"separability": {"accuracy": sep, "chance": 0.5}, "label": label}


CANDIDATES = [Candidate((0.2,)), Candidate((0.07, 0.2, 0.5)), Candidate((0.02, 0.05, 0.1))]


def test_without_a_label_the_lowest_separability_wins_and_says_nothing_guards() -> None:
    rows = [_row(0.8), _row(0.6), _row(0.7)]
    choice = choose(CANDIDATES, rows, _row(0.9), None)
    assert choice.index == 1 and choice.beats
    assert any("nothing checked" in line for line in choice.reasoning)


def test_ties_go_to_fewer_cuts_then_grid_order() -> None:
    rows = [_row(0.6), _row(0.6), _row(0.6)]
    assert choose(CANDIDATES, rows, _row(0.9), None).index == 0
    rows = [_row(0.7), _row(0.6), _row(0.6)]
    assert choose(CANDIDATES, rows, _row(0.9), None).index == 1


def test_with_a_label_the_best_held_out_site_wins_among_those_that_keep_the_label() -> None:
    base = _row(1.0, accuracy=0.80, held=0.40)
    rows = [
        _row(0.70, accuracy=0.70, held=0.90),  # erases the label: set aside, however good
        _row(0.75, accuracy=0.79, held=0.60),
        _row(0.65, accuracy=0.81, held=0.60),  # ties on held-out: lower separability wins
    ]
    choice = choose(CANDIDATES, rows, base, "diagnosis", margin=0.02)
    assert choice.index == 2 and choice.beats
    assert choice.eligible == [False, True, True]
    assert any("1 of 3 candidates were set aside" in line for line in choice.reasoning)


def test_when_nothing_beats_the_inputs_it_says_so_and_still_picks() -> None:
    base = _row(0.9, accuracy=0.8, held=0.7)
    rows = [_row(0.8, accuracy=0.8, held=0.6), _row(0.7, accuracy=0.8, held=0.5)]
    choice = choose(CANDIDATES[:2], rows, base, "y")
    assert choice.index == 0 and not choice.beats
    assert any("No candidate" in line for line in choice.reasoning)
    rows = [_row(0.95), _row(0.92)]
    choice = choose(CANDIDATES[:2], rows, _row(0.9), None)
    assert choice.index == 1 and not choice.beats


def test_when_every_candidate_erases_the_label_the_least_harmful_is_written() -> None:
    base = _row(0.9, accuracy=0.9, held=0.5)
    rows = [_row(0.6, accuracy=0.5, held=0.8), _row(0.7, accuracy=0.7, held=0.4)]
    choice = choose(CANDIDATES[:2], rows, base, "y", margin=0.05)
    assert choice.index == 1 and not choice.beats and choice.eligible == [False, False]
    assert "do not use it without looking" in choice.reasoning[0]


def test_an_unmeasured_held_out_accuracy_falls_back_to_the_pooled_one() -> None:
    base = _row(0.9, accuracy=0.5, held=None)
    rows = [_row(0.6, accuracy=0.55, held=None), _row(0.6, accuracy=0.6, held=None)]
    assert choose(CANDIDATES[:2], rows, base, "y").index == 1


@pytest.mark.parametrize("sizes", [(100, 100), (100, 37), (5, 7), (4096, 8192)])
def test_wasserstein_of_sorted_samples_is_scipys(sizes: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(sizes))
    a, b = rng.normal(size=sizes[0]), rng.gamma(2.0, size=sizes[1])
    expected = wasserstein_distance(a, b)
    assert wasserstein_sorted(np.sort(a), np.sort(b)) == pytest.approx(expected, rel=1e-12)


def test_mean_wasserstein_is_the_mean_of_compares_distances() -> None:
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            group=k % 3,
            path=f"{k}",
            unit="normalized",
            channels=2,
            means=np.zeros((2, 2)),
            stds=np.zeros((2, 2)),
            percentiles=np.zeros((2, 7)),
            pixels=rng.random((2, 50)) + 0.1 * (k % 3),
        )
        for k in range(8)
    ]
    pairs = distances(samples, ["a", "b", "c"])
    expected = np.mean([p["distance"] for p in pairs])
    assert mean_wasserstein(samples, 3) == pytest.approx(expected, rel=1e-12)
