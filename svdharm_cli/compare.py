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

Only images of one kind (unit and channel count) are compared: the kind most samples have;
others are reported and left out.
"""

from __future__ import annotations

import base64
import io
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli import __version__
from svdharm_cli.device import CPU, Device, resolve
from svdharm_cli.errors import UsageError
from svdharm_cli.executors import Executor, OneByOne
from svdharm_cli.executors.local import LocalPool
from svdharm_cli.executors.work import Rooted, gather
from svdharm_cli.methods import Moments, decompose_channels, pool, slice_moments
from svdharm_cli.plan import Unit, discover, plan_units
from svdharm_cli.reference import describe_kind
from svdharm_cli.units import read_unit, unit_masks
from svdharm_cli.worker import OK, SKIPPED, FileResult, on_device, outcome_of, walk_results

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
    problems: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        n = len(self.fractions) + 1
        return {
            "format": "svdharm-compare",
            "format_version": 1,
            "tool_version": __version__,
            "fractions": list(self.fractions),
            "mask": self.mask,
            "unit": self.unit,
            "channels": self.channels,
            "components": ["base"] + [f"band{i}" for i in range(1, n)],
            "groups": self.groups,
            "separability": self.separability,
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


def group_names(folders: Sequence[Path]) -> list[str]:
    """Each folder's name, or its path where names repeat (``site_a`` and ``out/site_a``)."""
    names = [f.name or str(f) for f in folders]
    repeated = {n for n, c in Counter(names).items() if c > 1}
    return [str(f) if n in repeated else n for f, n in zip(folders, names)]


def compare(
    folders: Sequence[Path],
    fractions: Sequence[float],
    *,
    mask: str = "none",
    mask_dir: Path | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    max_pixels: int = 100_000_000,
    slice_axis: int = 2,
    on_result: Callable[[FileResult], None] = lambda r: None,
    executor: Executor | None = None,
) -> Comparison:
    """Features of every image of every group, then separability and distances.

    The features are taken by ``executor``'s workers (this process by default); each
    image's pixel sample has its own seed (from ``seed`` and the image's place in the
    groups), so the result does not depend on where or in which order they ran. Raises
    :class:`UsageError` for fewer than two groups, a missing folder, or no images, and
    :class:`Interrupted` on SIGINT/SIGTERM.
    """
    start = time.perf_counter()
    executor = executor or LocalPool(1)
    if len(folders) < 2:
        raise UsageError("compare needs at least two groups (folders)")
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(f"group {folder} is not a folder")
    names = group_names(folders)
    here = executor.worker_path
    items: list[Grouped] = []
    walk_problems: list[FileResult] = []
    for k, folder in enumerate(folders):
        found = discover(folder)
        walk_problems.extend(walk_results(found.root, found.unlisted, found.notes))
        root = here(found.root)
        masks = None if mask_dir is None else here(mask_dir / names[k])
        for work in plan_units(root, found.images, found.dicom):
            items.append(Grouped(len(items), root, work, found.root, k, masks))
    executor.check(
        sorted({item.root for item in items} | ({here(mask_dir)} if mask_dir else set())), []
    )
    task = SampleUnits(tuple(fractions), mask, max_pixels, slice_axis, seed, executor.device)
    ordered: list[Sampled] = gather(executor, task, items, on_result)
    problems = walk_problems + [r for o in ordered for r in o.results if r.status != OK]
    samples = [o.sample for o in ordered if o.sample is not None]
    if not samples:
        raise UsageError("no image in the groups could be read")
    kinds = Counter((s.unit, s.channels) for s in samples)
    (unit, channels), _ = kinds.most_common(1)[0]
    kept = []
    for s in samples:
        if (s.unit, s.channels) == (unit, channels):
            kept.append(s)
        else:
            reason = (
                f"{s.path}: is {describe_kind(s.unit, s.channels)} but most images compared "
                f"are {describe_kind(unit, channels)}"
            )
            problems.append(FileResult(s.path, SKIPPED, reason))
    groups = [
        {"name": names[k], "path": str(f), "count": sum(s.group == k for s in kept)}
        for k, f in enumerate(folders)
    ]
    return Comparison(
        groups=groups,
        fractions=tuple(fractions),
        mask=mask,
        unit=unit,
        channels=channels,
        samples=kept,
        separability=separability(kept, len(folders), folds, seed),
        wasserstein=distances(kept, names),
        problems=problems,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class Grouped(Rooted):
    """A unit of work of one group (numbered in input order over all groups), with the
    folder of its group's masks."""

    group: int
    mask_dir: Path | None


@dataclass(frozen=True)
class Sampled:
    """One unit's outcome: a result per file, and its features when it could be read."""

    index: int
    results: list[FileResult]
    sample: Sample | None


@dataclass(frozen=True)
class SampleUnits(OneByOne):
    """The task of compare: the features of each unit (payload :class:`Sampled`)."""

    fractions: tuple[float, ...]
    mask: str
    max_pixels: int
    slice_axis: int
    seed: int
    device: str = "cpu"

    def one(
        self, item: Grouped, threads: int, report: Callable[[Any], None], stop: Any = None
    ) -> None:
        rng = np.random.default_rng([self.seed, item.index])
        outcome = _sample(
            item.group,
            item.root,
            item.unit,
            self.fractions,
            self.mask,
            item.mask_dir,
            self.max_pixels,
            self.slice_axis,
            rng,
            CPU if self.device == "cpu" else resolve(self.device),
        )
        if isinstance(outcome, Sample):
            named = replace(outcome, path=_sample_path(item.shown, item.unit))
            report(Sampled(item.index, item.results(OK), named))
        else:
            report(Sampled(item.index, item.results(*outcome), None))

    def lost(self, item: Grouped, reason: str) -> Sampled:
        return Sampled(item.index, item.lost(reason), None)


def _sample_path(root: Path, unit: Unit) -> str:
    return str(root / unit.files[0]) if unit.volume is None else f"{root}/{unit.volume}"


def _sample(
    group: int,
    root: Path,
    unit: Unit,
    fractions: Sequence[float],
    mask: str,
    mask_dir: Path | None,
    max_pixels: int,
    slice_axis: int,
    rng: np.random.Generator,
    device: Device = CPU,
) -> Sample | tuple[str, str]:
    """One unit's features, or ``(status, reason)`` when it cannot be read."""
    try:
        images = read_unit(root, unit, max_pixels, slice_axis)
        masks = unit_masks(images, unit, root, mask, mask_dir, slice_axis)
        pairs = [
            (frame, None if volume_mask is None else volume_mask[f])
            for image, volume_mask in zip(images, masks)
            for f, frame in enumerate(image.frames)
        ]
        (moments, values), _ = on_device(
            device,
            unit.key,
            lambda on: _slices(pairs, fractions, images[0].channel_count, on),
        )
    except Exception as exc:  # the unit's failure, never the run's (outcome_of)
        found = outcome_of(exc, unit, root / unit.files[0])
        return found.status, found.reason
    return sample_from_moments(
        group,
        _sample_path(root, unit),
        images[0].unit,
        moments,
        values,
        rng,
    )


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
    moments, values = _slices(
        ((frame, None if masks is None else masks[f]) for f, frame in enumerate(frames)),
        fractions,
        frames.shape[1],
    )
    return sample_from_moments(group, path, unit, moments, values, rng)


def _slices(
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
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.stack([s.features for s in samples])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(
            model, features, labels, cv=StratifiedKFold(k, shuffle=True, random_state=seed)
        )
    result.update(
        accuracy=float(scores.mean()),
        folds=k,
        fold_accuracy=[float(s) for s in scores],
        features=int(features.shape[1]),
        classifier="standardized features, logistic regression (scikit-learn)",
    )
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


# -- the HTML report --------------------------------------------------------------------


def render_html(result: Comparison) -> str:
    """A self-contained page: groups, separability, distances, statistics plots."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("svdharm_cli", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )
    sep = result.separability
    if sep["accuracy"] is None:
        verdict = f"Separability could not be measured: {sep.get('reason', '')}."
    else:
        verdict = (
            f"A classifier tells the groups apart with {100 * sep['accuracy']:.0f} % accuracy "
            f"({sep['folds']}-fold cross-validated; chance is {100 * sep['chance']:.0f} %): run "
            "svdharm compare on the inputs and on the harmonized outputs, and a drop towards "
            "chance is the evidence that harmonization removed what told the sites apart."
        )
    return env.get_template("compare.html.j2").render(
        data=result.to_dict(),
        version=__version__,
        verdict=verdict,
        statistics_plot=_statistics_plot(result),
        histogram=_histogram(result),
    )


def _figure_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _statistics_plot(result: Comparison) -> str:
    from svdharm_cli.panel import component_names

    plt = _pyplot()
    n = len(result.fractions) + 1
    names = component_names(n)
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 5.2), squeeze=False)
    rng = np.random.default_rng(0)
    for row, (label, attr) in enumerate((("mean", "means"), ("std", "stds"))):
        for i in range(n):
            ax = axes[row, i]
            for k, group in enumerate(result.groups):
                values = [
                    float(getattr(s, attr)[:, i].mean()) for s in result.samples if s.group == k
                ]
                x = k + rng.uniform(-0.15, 0.15, len(values))
                ax.plot(x, values, "o", markersize=4, alpha=0.7, label=group["name"])
            ax.set_xticks(range(len(result.groups)))
            ax.set_xticklabels([g["name"] for g in result.groups], fontsize=7, rotation=20)
            ax.set_title(f"{names[i]}: {label}", fontsize=9)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    uri = _figure_uri(fig)
    plt.close(fig)
    return uri


def _histogram(result: Comparison) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for k, group in enumerate(result.groups):
        members = [s.pixels.mean(axis=0) for s in result.samples if s.group == k]
        if members:
            ax.hist(
                np.concatenate(members), bins=80, histtype="step", density=True, label=group["name"]
            )
    ax.set_xlabel(f"intensity ({result.unit} units, channel mean)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    uri = _figure_uri(fig)
    plt.close(fig)
    return uri
