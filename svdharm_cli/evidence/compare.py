"""Site comparison: can the groups (sites, scanners) still be told apart?

Each group is a folder. Every image (or volume: a DICOM series, a NIfTI file, a TIFF stack)
becomes one sample with two kinds of features, both over its (masked) pixels:

- its band statistics: each component's mean and population std per channel (pooled over a
  volume's slices, METHOD.md section 3a), the quantities harmonization matches;
- its intensity percentiles (1, 5, 25, 50, 75, 95, 99 per channel), which harmonization
  does not match by construction, so the score measures more than the method's own target.

Reported:

- **separability**: the cross-validated accuracy of a classifier that predicts the group from
  the features (scikit-learn: standardized features, logistic regression, stratified k-fold
  with a fixed seed), beside chance (the largest group's share). Near 1: the sites differ
  in ways a model can learn; near chance: they don't. Run it on inputs and on harmonized
  outputs: the drop is the evidence that harmonization helped.
- **Wasserstein distances** between the groups' pooled intensity distributions (a seeded
  sample of each image's masked pixels; scipy.stats), per pair, averaged over channels, in
  the images' unit.
- each group's distribution of per-image means and stds per component (plots).

Only images of one kind, unit and channel count are compared (METHOD.md section 3d: a T1w
and a T2w differ by what they show, not by site): those most samples have; others are
reported and left out, saying so.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from svdharm_cli import __version__
from svdharm_cli.core.device import CPU, Device
from svdharm_cli.core.methods import Moments, decompose_channels, pool, slice_moments


class Problem(Protocol):
    """A file left out of the comparison, and why (the run's per-file result)."""

    @property
    def path(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str | None: ...


PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
PIXEL_SAMPLE = 20_000
"""Pixels sampled per image (per channel) for the pooled intensity distributions."""
PERCENTILE_SAMPLE = 200_000
"""Pixels sampled per image (per channel) for its percentiles."""
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class Sample:
    """One image or volume: where it is, its kind and its features."""

    group: int
    path: str
    unit: str
    channels: int
    means: np.ndarray
    stds: np.ndarray
    percentiles: np.ndarray
    pixels: np.ndarray
    kind: str = ""
    label: str = ""
    """Its manifest row's value in the ``--label`` column, when one was asked for."""

    @property
    def features(self) -> np.ndarray:
        return np.concatenate([self.means.ravel(), self.stds.ravel(), self.percentiles.ravel()])


@dataclass
class Comparison:
    """Everything ``compare`` found; :meth:`to_dict` is the JSON result."""

    groups: list[dict[str, Any]]
    fractions: tuple[float, ...]
    mask: str
    unit: str
    channels: int
    samples: list[Sample]
    separability: dict[str, Any]
    wasserstein: list[dict[str, Any]]
    problems: Sequence[Problem] = field(default_factory=list)
    seconds: float = 0.0
    kind: str = ""
    """The kind of image compared (``""``: images that say none)."""
    label: dict[str, Any] | None = None
    """:func:`label_measures` of the images (with ``--label``)."""
    after: dict[str, Any] | None = None
    """With ``--reference``: ``separability`` and ``label`` of the images harmonized."""

    def to_dict(self) -> dict[str, Any]:
        n = len(self.fractions) + 1
        return {
            "format": "svdharm-compare",
            "format_version": 1,
            "tool_version": __version__,
            "fractions": list(self.fractions),
            "mask": self.mask,
            "kind": self.kind,
            "unit": self.unit,
            "channels": self.channels,
            "components": ["base"] + [f"band{i}" for i in range(1, n)],
            "groups": self.groups,
            "separability": self.separability,
            **({} if self.label is None else {"label": self.label}),
            **(
                {}
                if self.after is None
                else {
                    "before": {"separability": self.separability, "label": self.label},
                    "after": self.after,
                }
            ),
            "wasserstein": self.wasserstein,
            "statistics": [
                {
                    "group": g["name"],
                    "mean": [s.means.tolist() for s in self.samples if s.group == k],
                    "std": [s.stds.tolist() for s in self.samples if s.group == k],
                }
                for k, g in enumerate(self.groups)
            ],
            "left_out": [
                {"path": r.path, "status": r.status, "reason": r.reason} for r in self.problems
            ],
            "seconds": round(self.seconds, 3),
        }


def sample_from_arrays(
    group: int,
    path: str,
    unit: str,
    frames: np.ndarray,
    masks: np.ndarray | None,
    fractions: Sequence[float],
    rng: np.random.Generator,
) -> Sample:
    """The features of a volume given as arrays: ``frames`` ``(f, c, h, w)`` and optional
    bool ``masks`` ``(f, h, w)`` (for benchmarks that build their images in memory)."""
    moments, values = slice_features(
        ((frame, None if masks is None else masks[f]) for f, frame in enumerate(frames)),
        fractions,
        frames.shape[1],
    )
    return sample_from_moments(group, path, unit, moments, values, rng)


def slice_features(
    slices: Iterable[tuple[np.ndarray, np.ndarray | None]],
    fractions: Sequence[float],
    channels: int,
    device: Device = CPU,
) -> tuple[list[Moments], list[list[np.ndarray]]]:
    """Each slice's moments (computed on ``device``), and each channel's pixel values
    inside the slice's mask."""
    moments = []
    values: list[list[np.ndarray]] = [[] for _ in range(channels)]
    for frame, plane in slices:
        bands = decompose_channels(device.put(frame), fractions, device.put(plane))
        moments.append(slice_moments(bands))
        for c, channel in enumerate(frame):
            values[c].append(channel[plane] if plane is not None else channel.ravel())
    return moments, values


def sample_from_moments(
    group: int,
    path: str,
    unit: str,
    moments: Sequence[Moments],
    values: list[list[np.ndarray]],
    rng: np.random.Generator,
    kind: str = "",
) -> Sample:
    """A sample from its slices' moments and each channel's (masked) pixel values."""
    pooled = pool(moments)
    percentiles, pixels = [], []
    for per_channel in values:
        flat = np.concatenate(per_channel) if per_channel else np.zeros(1)
        if flat.size == 0:
            flat = np.zeros(1)
        percentiles.append(np.percentile(_subsample(flat, PERCENTILE_SAMPLE, rng), PERCENTILES))
        pixels.append(_subsample(flat, PIXEL_SAMPLE, rng))
    return Sample(
        group=group,
        path=path,
        unit=unit,
        kind=kind,
        channels=len(values),
        means=pooled.means,
        stds=pooled.stds,
        percentiles=np.asarray(percentiles),
        pixels=np.stack([_pad(p, PIXEL_SAMPLE, rng) for p in pixels]),
    )


def _subsample(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if values.size <= size:
        return values
    return values[rng.choice(values.size, size, replace=False)]


def _pad(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``size`` values (resampled with replacement when there are fewer), so that
    every image weighs the same in its group's pooled distribution."""
    if values.size == size:
        return values
    return values[rng.integers(0, values.size, size)]


def _cross_validated(
    features: np.ndarray, targets: np.ndarray, folds: int, seed: int
) -> list[float]:
    """Accuracies of the classifier (standardized features, logistic regression) over
    stratified folds."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    with warnings.catch_warnings():
        _quiet_convergence()
        scores = cross_val_score(
            _classifier(),
            features,
            targets,
            cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        )
    return [float(s) for s in scores]


def _classifier() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))


def _quiet_convergence() -> None:
    from sklearn.exceptions import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)


CLASSIFIER = "standardized features, logistic regression (scikit-learn)"


def separability(samples: Sequence[Sample], groups: int, folds: int, seed: int) -> dict[str, Any]:
    """Cross-validated accuracy of predicting the group from the features, and chance."""
    labels = np.array([s.group for s in samples])
    counts = np.bincount(labels, minlength=groups)
    chance = float(counts.max() / counts.sum())
    result: dict[str, Any] = {"accuracy": None, "chance": chance, "folds": 0, "fold_accuracy": []}
    present = counts[counts > 0]
    k = int(min(folds, present.min())) if present.size else 0
    if present.size < 2 or k < 2:
        result["reason"] = "each of at least two groups needs two or more images"
        return result
    features = np.stack([s.features for s in samples])
    scores = _cross_validated(features, labels, k, seed)
    result.update(
        accuracy=float(np.mean(scores)),
        folds=k,
        fold_accuracy=scores,
        features=int(features.shape[1]),
        classifier=CLASSIFIER,
    )
    return result


def label_measures(samples: Sequence[Sample], column: str, folds: int, seed: int) -> dict[str, Any]:
    """How well the features predict each image's label (``Sample.label``, a manifest
    column), from the same features as :func:`separability`:

    - ``accuracy``: cross-validated over all images (stratified by label);
    - ``leave_one_site_out``: trained on every other site, tested on the one held out, for
      each site in turn, pooled over all held-out images (``per_site`` each site's): what a
      model trained elsewhere sees; a site whose training sites hold fewer than two labels
      is not tested;
    - ``chance``: the largest label's share (what always answering it scores).
    """
    labels = np.array([s.label for s in samples])
    sites = np.array([s.group for s in samples])
    classes, targets = np.unique(labels, return_inverse=True)
    counts = np.bincount(targets)
    result: dict[str, Any] = {
        "column": column,
        "accuracy": None,
        "leave_one_site_out": None,
        "chance": float(counts.max() / counts.sum()) if counts.size else None,
        "labels": int(classes.size),
        "folds": 0,
        "per_site": [],
    }
    if classes.size < 2:
        result["reason"] = "the images need two or more labels"
        return result
    features = np.stack([s.features for s in samples])
    k = int(min(folds, counts.min()))
    if k >= 2:
        result.update(
            accuracy=float(np.mean(_cross_validated(features, targets, k, seed))), folds=k
        )
    correct = tested = 0
    for site in np.unique(sites):
        held, train = sites == site, sites != site
        if np.unique(targets[train]).size < 2:
            continue
        with warnings.catch_warnings():
            _quiet_convergence()
            model = _classifier().fit(features[train], targets[train])
        hits = int((model.predict(features[held]) == targets[held]).sum())
        correct, tested = correct + hits, tested + int(held.sum())
        result["per_site"].append({"group": int(site), "accuracy": hits / int(held.sum())})
    if tested:
        result["leave_one_site_out"] = correct / tested
    return result


def distances(samples: Sequence[Sample], names: Sequence[str]) -> list[dict[str, Any]]:
    """Wasserstein distance between each pair of groups' pooled intensity distributions."""
    from scipy.stats import wasserstein_distance

    pooled = {}
    for k in range(len(names)):
        members = [s.pixels for s in samples if s.group == k]
        if members:
            pooled[k] = np.concatenate(members, axis=1)
    out = []
    keys = sorted(pooled)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            per_channel = [
                wasserstein_distance(pooled[a][c], pooled[b][c]) for c in range(pooled[a].shape[0])
            ]
            out.append({"a": names[a], "b": names[b], "distance": float(np.mean(per_channel))})
    return out
