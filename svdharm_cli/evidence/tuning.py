"""Band cuts chosen by evidence: every candidate's harmonized sample measured as ``compare``
measures, and a stated rule that picks one (the work of ``svdharm tune`` once the sampled
images are decomposed; :mod:`svdharm_cli.run.tuning` reads and decomposes them).

Each sampled input arrives as a :class:`Decomposed`: its slices' spectra
(:class:`~svdharm_cli.core.spectrum.SliceSpectrum`, one decomposition for every candidate).
For each :class:`Candidate` (cuts and mask):

1. every input's moments at the candidate's cuts over the candidate's mask, pooled per
   volume (METHOD.md section 3a);
2. the reference: the plain average of those moments over the target site's sampled
   images (every site's by default), as ``fit-reference`` would fit it from them;
3. every input harmonized with it (METHOD.md section 4), measured at the fixed
   :data:`~svdharm_cli.core.spectrum.YARDSTICK` (band statistics pooled per input) and at
   its sampled pixels (percentiles, the Wasserstein sample; clipped to [0, 1] in normalized
   units, as harmonize writes them): one :class:`~svdharm_cli.evidence.compare.Sample`;
4. compare's measures of those samples: site separability, and with a label its
   cross-validated and leave-one-site-out accuracy; the mean Wasserstein distance between
   the sites.

The unharmonized inputs, measured the same way, are the row to beat. :func:`choose` states
and applies the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from svdharm_cli import __version__
from svdharm_cli.core.methods import Moments, pool
from svdharm_cli.core.reference import UNITS
from svdharm_cli.core.spectrum import YARDSTICK, SliceSpectrum, harmonizing_map
from svdharm_cli.evidence.compare import (
    PERCENTILES,
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


@dataclass(frozen=True)
class Decomposed:
    """One sampled input, decomposed once for every candidate."""

    group: int
    path: str
    unit: str
    channels: int
    kind: str
    label: str
    slices: list[SliceSpectrum]
    volumes: list[list[int]]
    """The slices of each volume (one map per volume, METHOD.md section 3a)."""


def volume_moments(record: Decomposed, fractions: Sequence[float], pixels: str) -> list[Moments]:
    """The input's moments at ``fractions`` over ``pixels``, pooled per volume."""
    return [
        pool([record.slices[i].moments(fractions, pixels) for i in volume])
        for volume in record.volumes
    ]


def reference_of(
    records: Sequence[Decomposed], fractions: Sequence[float], pixels: str, target: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The candidate's reference: the plain average of the target site's (every site's when
    ``target`` is None) per-volume moments (METHOD.md section 3)."""
    moments = [
        m
        for r in records
        if target is None or r.group == target
        for m in volume_moments(r, fractions, pixels)
    ]
    if not moments:
        raise ValueError("the target site has no sampled image")
    return np.mean([m.means for m in moments], axis=0), np.mean([m.stds for m in moments], axis=0)


def harmonized_sample(
    record: Decomposed,
    candidate: Candidate | None,
    reference: tuple[np.ndarray, np.ndarray] | None,
    measured: str,
    normalized: bool,
) -> Sample:
    """The input harmonized with ``candidate`` to ``reference`` (the input as it is when
    ``candidate`` is None), measured over the ``measured`` pixels."""
    moments, values = [], []
    if candidate is None or reference is None:
        fractions: Sequence[float] = YARDSTICK
        unchanged = (np.ones((record.channels, len(YARDSTICK) + 1)), np.zeros(record.channels))
        maps = [unchanged] * len(record.volumes)
    else:
        fractions = candidate.fractions
        own = volume_moments(record, fractions, candidate.mask)
        maps = [harmonizing_map(m, reference) for m in own]
    for volume, (scales, offsets) in zip(record.volumes, maps):
        for i in volume:
            m, x = record.slices[i].measure(fractions, scales, offsets, measured)
            moments.append(m)
            values.append(x)
    pooled = pool(moments)
    pixels = np.concatenate(values, axis=1)
    if normalized and candidate is not None:
        np.clip(pixels, 0.0, 1.0, out=pixels)
    return Sample(
        group=record.group,
        path=record.path,
        unit=record.unit,
        channels=record.channels,
        means=pooled.means,
        stds=pooled.stds,
        percentiles=np.percentile(pixels, PERCENTILES, axis=1).T,
        pixels=_repeated(pixels, WASSERSTEIN_PIXELS),
        kind=record.kind,
        label=record.label,
    )


WASSERSTEIN_PIXELS = 4096
"""Values per image in its site's pooled distribution (an image's sampled values repeated
or cut to this many, so that every image weighs the same)."""


def _repeated(values: np.ndarray, size: int) -> np.ndarray:
    """``(C, m)`` values as ``(C, size)``: repeated in turn when fewer, the first ``size``
    (a random sample already) when more."""
    if values.shape[1] == size:
        return values
    return np.stack([np.resize(row, size) for row in values])


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


def evaluate(
    records: Sequence[Decomposed],
    names: Sequence[str],
    candidates: Sequence[Candidate],
    label: str | None,
    target: int | None,
    measured: str,
    folds: int,
    seed: int,
    margin: float | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], float, Choice]:
    """The unharmonized row, every candidate's row (see the module), the label guard's
    margin (:func:`default_margin` unless given) and the :func:`choose` of them."""
    normalized = records[0].unit == UNITS[0]  # "normalized": harmonize clips to [0, 1]
    unharmonized = measures(
        [harmonized_sample(r, None, None, measured, normalized) for r in records],
        names,
        label,
        folds,
        seed,
    )
    if margin is None:
        measured_label = unharmonized["label"] or {}
        margin = default_margin(measured_label.get("accuracy"), len(records))
    rows = []
    for candidate in candidates:
        reference = reference_of(records, candidate.fractions, candidate.mask, target)
        samples = [
            harmonized_sample(r, candidate, reference, measured, normalized) for r in records
        ]
        rows.append(measures(samples, names, label, folds, seed))
    return unharmonized, rows, margin, choose(candidates, rows, unharmonized, label, margin)


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
