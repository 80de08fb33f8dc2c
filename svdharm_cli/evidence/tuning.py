"""Band cuts chosen by evidence: every candidate measured as ``compare`` measures, and a
stated rule that picks one (the measures and the rule of ``svdharm tune``;
:mod:`svdharm_cli.run.tuning` reads, decomposes and harmonizes the images).

For each :class:`Candidate` (cuts and mask) tune fits a reference on the target site's
sampled images (:func:`reference_of`: the plain average of their pooled per-volume
statistics, as ``fit-reference`` averages), harmonizes every sampled image to it in memory
and measures the result: one :class:`~svdharm_cli.evidence.compare.Sample` per image, its
features those of ``compare`` at the fixed :data:`YARDSTICK` cuts. :func:`measures` takes
compare's measures of a row of samples (site separability; with a label, its
cross-validated and leave-one-site-out accuracy; the mean Wasserstein distance between the
sites). The unharmonized images, measured the same way, are the row to beat.
:func:`choose` states and applies the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from svdharm_cli import __version__
from svdharm_cli.core.methods import Moments
from svdharm_cli.evidence.compare import (
    Problem,
    Sample,
    label_measures,
    separability,
)

DEFAULT_GRID: tuple[tuple[float, ...], ...] = (
    (0.2,),
    (0.05, 0.2),
    (0.1, 0.5),
    (0.07, 0.2, 0.5),
    (0.02, 0.05, 0.1),
    (0.15, 0.35, 0.7),
    (0.05, 0.1, 0.2, 0.5),
    (0.03, 0.07, 0.2, 0.5),
    (0.02, 0.05, 0.1, 0.2, 0.5),
    (0.05, 0.1, 0.2, 0.35, 0.7),
)
"""The candidate cuts tried by default: one to five cuts, each about 2 to 2.5 times the one
before (singular value spectra fall off roughly as a power law, so a log scale is the
natural axis), the paper's (0.07, 0.2, 0.5) among them, and the same number of cuts shifted
coarser and finer: (0.02, 0.05, 0.1) and (0.15, 0.35, 0.7)."""

MIN_MARGIN = 0.01


def default_margin(accuracy: float | None, count: int) -> float:
    """The label guard's margin when none is given: one binomial standard error of the
    unharmonized pooled accuracy over ``count`` images, ``sqrt(p (1 - p) / n)`` (a smaller
    drop is within what another sample would give), and at least :data:`MIN_MARGIN`."""
    if accuracy is None or count < 1:
        return MIN_MARGIN
    return max(MIN_MARGIN, float(np.sqrt(accuracy * (1.0 - accuracy) / count)))


TIE = 1e-9
"""Figures closer than this count as equal."""


@dataclass(frozen=True)
class Candidate:
    """Band cuts and the pixels their statistics are taken over (a mask mode's name)."""

    fractions: tuple[float, ...]
    mask: str = "none"

    def describe(self) -> str:
        cuts = ", ".join(f"{f:g}" for f in self.fractions)
        return f"({cuts})" + ("" if self.mask == "none" else f" mask {self.mask}")


def reference_of(
    statistics: Sequence[Sequence[Moments]],
) -> tuple[np.ndarray, np.ndarray]:
    """A candidate's reference from its statistics on the reference images (each image's
    per-volume moments): the plain average over volumes (METHOD.md section 3)."""
    moments = [m for volumes in statistics for m in volumes]
    if not moments:
        raise ValueError("no reference image")
    return np.mean([m.means for m in moments], axis=0), np.mean([m.stds for m in moments], axis=0)


YARDSTICK: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7)
"""The cuts every row is measured at (compare's features with these fractions): finer than
any default candidate, about evenly spaced on a log scale. Measured at a candidate's own
cuts, harmonization would match what is measured by construction and the candidate would
pass its own test; measured finer, what a coarse cut leaves unmatched inside a band shows."""

WASSERSTEIN_PIXELS = 2048
"""Pixels per image (per channel) kept for the Wasserstein distances: the first of
compare's seeded pixel sample (which already weighs every image the same)."""


def measures(
    samples: Sequence[Sample],
    names: Sequence[str],
    label: str | None,
    folds: int,
    seed: int,
) -> dict[str, Any]:
    """Compare's measures of one row: separability, the label's (with a label) and the
    mean Wasserstein distance between the sites."""
    return {
        "separability": separability(samples, len(names), folds, seed),
        "label": None if label is None else label_measures(samples, label, folds, seed),
        "wasserstein": mean_wasserstein(samples, len(names)),
    }


def mean_wasserstein(samples: Sequence[Sample], sites: int) -> float | None:
    """The mean over pairs of sites of compare's Wasserstein distance (each site's pooled
    sampled pixels, averaged over channels): the same figures as
    :func:`~svdharm_cli.evidence.compare.distances`, each site's pixels sorted once."""
    pooled = []
    for k in range(sites):
        members = [s.pixels for s in samples if s.group == k]
        if members:
            pooled.append(np.sort(np.concatenate(members, axis=1), axis=1))
    pairs = [
        np.mean([wasserstein_sorted(a[c], b[c]) for c in range(a.shape[0])])
        for i, a in enumerate(pooled)
        for b in pooled[i + 1 :]
    ]
    return float(np.mean(pairs)) if pairs else None


def wasserstein_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """The 1-Wasserstein distance between two sorted samples (equal weights within each):
    the integral over ``q`` of the difference of their quantile functions, exact."""
    n, m = len(a), len(b)
    if n == m:
        return float(np.abs(a - b).mean())
    edges = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    widths = np.diff(edges, prepend=0.0)
    middle = edges - widths / 2
    ia = np.minimum((middle * n).astype(np.int64), n - 1)
    ib = np.minimum((middle * m).astype(np.int64), m - 1)
    return float((widths * np.abs(a[ia] - b[ib])).sum())


@dataclass(frozen=True)
class Choice:
    """The rule's pick (an index into the candidates), whether it beats the unharmonized
    inputs, and the reasoning, one sentence a line."""

    index: int
    beats: bool
    reasoning: list[str]
    eligible: list[bool]


def rule_text(label: str | None, margin: float) -> str:
    if label is None:
        return (
            "the lowest site separability (ties: fewer cuts, then grid order); without "
            "--label nothing guards the biology"
        )
    return (
        f"the highest leave-one-site-out accuracy of {label!r} (ties: lower site "
        "separability, then fewer cuts, then grid order), among candidates whose pooled "
        f"{label!r} accuracy is at most {margin:.3f} below the unharmonized inputs'"
    )


def choose(
    candidates: Sequence[Candidate],
    rows: Sequence[dict[str, Any]],
    unharmonized: dict[str, Any],
    label: str | None,
    margin: float = MIN_MARGIN,
) -> Choice:
    """Apply the rule (:func:`rule_text`) to the candidates' measures ``rows``.

    Without a label: the lowest separability. With one: candidates whose pooled label
    accuracy is more than ``margin`` below the unharmonized one are set aside; of the rest,
    the highest leave-one-site-out accuracy (where no site could be held out, the pooled
    accuracy stands in), ties to the lower separability. When every candidate is set aside,
    the one that loses least label accuracy is written, and the reasoning says so. Beating
    the unharmonized inputs means a higher leave-one-site-out accuracy with a label, a lower
    separability without.
    """
    sep = [_figure(r["separability"]["accuracy"], worst=1.0) for r in rows]
    base_sep = _figure(unharmonized["separability"]["accuracy"], worst=1.0)
    simpler = [len(c.fractions) for c in candidates]
    if label is None:
        order = sorted(range(len(rows)), key=lambda i: (_rounded(sep[i]), simpler[i], i))
        best = order[0]
        beats = sep[best] < base_sep - TIE
        reasoning = [
            f"{candidates[best].describe()} has the lowest site separability, "
            f"{sep[best]:.3f} (unharmonized {base_sep:.3f}).",
            "No --label was given: nothing checked that what matters in the images survives.",
        ]
        if not beats:
            reasoning.append(
                "No candidate separates the sites less than the unharmonized inputs do; the "
                "best reference is written all the same."
            )
        return Choice(best, beats, reasoning, [True] * len(rows))
    pooled = [_figure(r["label"]["accuracy"], worst=0.0) for r in rows]
    base_pooled = _figure(unharmonized["label"]["accuracy"], worst=0.0)
    held = [_held_out(r["label"]) for r in rows]
    base_held = _held_out(unharmonized["label"])
    eligible = [p >= base_pooled - margin - TIE for p in pooled]
    reasoning = []
    if not any(eligible):
        best = max(range(len(rows)), key=lambda i: (_rounded(pooled[i]), -simpler[i], -i))
        reasoning.append(
            f"Every candidate loses more than {margin:.3f} of {label!r} accuracy "
            f"(unharmonized {base_pooled:.3f}, best {pooled[best]:.3f}): harmonization with "
            f"any of these cuts erases part of what {label!r} needs. "
            f"{candidates[best].describe()} loses least and is written; "
            "do not use it without looking."
        )
        return Choice(best, False, reasoning, eligible)
    order = sorted(
        (i for i in range(len(rows)) if eligible[i]),
        key=lambda i: (-_rounded(held[i]), _rounded(sep[i]), simpler[i], i),
    )
    best = order[0]
    beats = held[best] > base_held + TIE
    left = len(rows) - sum(eligible)
    reasoning.append(
        f"{candidates[best].describe()} has the highest leave-one-site-out {label!r} "
        f"accuracy, {held[best]:.3f} (unharmonized {base_held:.3f}), with site "
        f"separability {sep[best]:.3f} (unharmonized {base_sep:.3f})."
    )
    if left:
        reasoning.append(
            f"{left} of {len(rows)} candidates were set aside: their pooled {label!r} "
            f"accuracy fell more than {margin:.3f} below the unharmonized {base_pooled:.3f}."
        )
    if not beats:
        reasoning.append(
            "No candidate predicts the label on a held-out site better than the unharmonized "
            "inputs do; the best reference is written all the same."
        )
    return Choice(best, beats, reasoning, eligible)


def _held_out(measured: dict[str, Any]) -> float:
    """Leave-one-site-out accuracy, or the pooled one where no site could be held out."""
    value = measured["leave_one_site_out"]
    return _figure(measured["accuracy"] if value is None else value, worst=0.0)


def _figure(value: float | None, worst: float) -> float:
    return worst if value is None else float(value)


def _rounded(value: float) -> float:
    return round(value / TIE) * TIE


@dataclass
class Tuning:
    """Everything ``tune`` found; :meth:`to_dict` is ``tune.json``."""

    sites: list[dict[str, Any]]
    candidates: list[Candidate]
    rows: list[dict[str, Any]]
    unharmonized: dict[str, Any]
    choice: Choice
    label: str | None
    margin: float
    target: str | None
    measured: str
    kind: str
    unit: str
    channels: int
    sample: int
    seed: int
    folds: int
    problems: Sequence[Problem] = field(default_factory=list)
    reference: str | None = None
    seconds: float = 0.0

    @property
    def chosen(self) -> Candidate:
        return self.candidates[self.choice.index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "svdharm-tune",
            "format_version": 1,
            "tool_version": __version__,
            "sites": self.sites,
            "target_site": self.target,
            "sample_per_site": self.sample,
            "seed": self.seed,
            "folds": self.folds,
            "label": self.label,
            "margin": self.margin if self.label is not None else None,
            "kind": self.kind,
            "unit": self.unit,
            "channels": self.channels,
            "yardstick": list(YARDSTICK),
            "measured_over": self.measured,
            "unharmonized": self.unharmonized,
            "candidates": [
                {
                    "fractions": list(c.fractions),
                    "mask": c.mask,
                    **row,
                    "eligible": ok,
                }
                for c, row, ok in zip(self.candidates, self.rows, self.choice.eligible)
            ],
            "rule": rule_text(self.label, self.margin),
            "chosen": {
                "index": self.choice.index,
                "fractions": list(self.chosen.fractions),
                "mask": self.chosen.mask,
            },
            "beats_unharmonized": self.choice.beats,
            "reasoning": self.choice.reasoning,
            "reference": self.reference,
            "left_out": [
                {"path": r.path, "status": r.status, "reason": r.reason} for r in self.problems
            ],
            "seconds": round(self.seconds, 3),
        }
