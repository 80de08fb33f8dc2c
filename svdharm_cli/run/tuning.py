"""The work of ``svdharm tune``, run wherever tasks run.

1. A seeded sample of every site (:func:`sampled_per_site`).
2. The reference images (the target site's sampled images; all of them by default): each
   decomposed once for every candidate's statistics (:class:`FitCandidates`); the client
   averages them into one reference per candidate.
3. Every sampled image: decomposed once, harmonized with every candidate from that one
   decomposition (:mod:`svdharm_cli.core.spectrum`), and each result measured as compare
   measures it, at the fixed yardstick cuts (:class:`MeasureCandidates`); the unharmonized
   image too. Features travel back, never pixels.
4. The candidates' measures and the rule's choice (:mod:`svdharm_cli.evidence.tuning`), then
   the reference fitted with the chosen cuts on the target site's images by
   :func:`~svdharm_cli.run.fitting.reference_from_files`, as ``fit-reference`` fits it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli.core.bands import Bands
from svdharm_cli.core.masks import MaskMode
from svdharm_cli.core.methods import Moments, pool, slice_moments
from svdharm_cli.core.reference import Reference, describe_kind
from svdharm_cli.core.spectrum import (
    SliceSpectrum,
    decompose_once,
    harmonized,
    harmonizing_map,
    slice_spectrum,
)
from svdharm_cli.errors import UsageError
from svdharm_cli.evidence.compare import (
    DEFAULT_FOLDS,
    Sample,
    sample_from_moments,
    slice_features,
)
from svdharm_cli.evidence.tuning import (
    WASSERSTEIN_PIXELS,
    YARDSTICK,
    Candidate,
    Tuning,
    choose,
    default_margin,
    measures,
    reference_of,
)
from svdharm_cli.files.formats import NORMALIZED, Image
from svdharm_cli.files.inputs import input_masks, read_input, volumes_of
from svdharm_cli.files.manifest import Manifest
from svdharm_cli.run.executors import Executor, OneByOne
from svdharm_cli.run.executors.local import LocalPool
from svdharm_cli.run.executors.work import gather
from svdharm_cli.run.fitting import reference_from_files
from svdharm_cli.run.options import ReadOptions
from svdharm_cli.run.results import OK, SKIPPED, FileResult, outcome_of
from svdharm_cli.run.sampling import Grouped, listed_groups, of_one_kind, walked_groups

DEFAULT_SAMPLE = 50
"""Images (inputs: a series or volume counts once) sampled per site."""
CACHE_BYTES = 512 * 2**20
"""An input's slice decompositions kept between the statistics and the harmonization (a
larger volume's further slices are decomposed again)."""
VALUES_BYTES = 256 * 2**20
"""Pixel values kept per input for the percentiles, all rows together (beyond: a seeded
share of each slice's, the same for every row)."""

Kind = tuple[str, str, int]
"""(kind, unit, channel count)."""


@dataclass(frozen=True)
class Plan:
    """What tune will do, known before any image is read (the estimate it prints)."""

    sites: list[str]
    inputs: list[int]
    """Inputs found per site."""
    sampled: list[int]
    """Inputs sampled per site."""
    references: int
    """Sampled inputs the candidates' references are fitted on."""
    candidates: int
    largest: float
    """The largest cut any candidate or the yardstick asks for."""
    fits: int
    """Classifier fits per row."""
    fitted_on: int
    """Inputs the chosen reference is fitted on."""

    @classmethod
    def of(
        cls,
        names: list[str],
        items: Sequence[Grouped],
        sampled: Sequence[Grouped],
        candidates: Sequence[Candidate],
        labelled: bool,
        folds: int,
        goal: int | None,
    ) -> Plan:
        """The plan of sites ``names`` with ``items`` found and ``sampled``; the references
        fitted on site ``goal`` (all when None)."""
        found = [sum(i.group == k for i in items) for k in range(len(names))]
        return cls(
            names,
            found,
            [sum(i.group == k for i in sampled) for k in range(len(names))],
            sum(goal is None or i.group == goal for i in sampled),
            len(candidates),
            max(f for c in candidates for f in (*c.fractions, *YARDSTICK)),
            folds + (folds + len(names) if labelled else 0),
            len(items) if goal is None else found[goal],
        )

    def describe(self) -> str:
        sampled, found, n = sum(self.sampled), sum(self.inputs), self.candidates
        return (
            f"tune: {len(self.sites)} sites, {sampled} of {found} images sampled "
            f"({', '.join(f'{s} {k}' for s, k in zip(self.sites, self.sampled))}), "
            f"{n} candidates. Work: {self.references} reference images decomposed once for "
            f"all candidates' statistics; every sampled image decomposed once (up to "
            f"{100 * self.largest:g} % of its singular values), harmonized {n} times from that "
            f"decomposition and each result decomposed to be measured ({sampled} x {n + 1} "
            f"measured, against {sampled} x {3 * n} decompositions for {n} separate tries); "
            f"{n + 1} x {self.fits} classifier fits; the reference fitted on "
            f"{self.fitted_on} images"
        )


def tune(
    folders: Sequence[Path],
    read: ReadOptions = ReadOptions(),
    *,
    output: Path,
    manifest: Manifest | None = None,
    label: str | None = None,
    target: str | None = None,
    candidates: Sequence[Candidate] = (),
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    folds: int = DEFAULT_FOLDS,
    margin: float | None = None,
    on_plan: Callable[[Plan], None] = lambda p: None,
    on_result: Callable[[FileResult], None] = lambda r: None,
    executor: Executor | None = None,
) -> tuple[Tuning, Reference]:
    """Measure every candidate on a seeded sample of every site, choose one by the rule of
    :func:`~svdharm_cli.evidence.tuning.choose`, and fit the reference with its cuts and mask
    on the target site's images (every site's when ``target`` is None) as fit-reference
    does. ``margin`` defaults to :func:`~svdharm_cli.evidence.tuning.default_margin`;
    ``output`` is only recorded (the caller writes the reference); ``on_result`` hears
    every file of every step (references, measurement, the final fit: a progress callback).
    Raises
    :class:`UsageError` for fewer than two sites, an unknown target site, or no image.
    """
    start = time.perf_counter()
    executor = executor or LocalPool(1)
    if manifest is not None:
        names, items, problems = listed_groups(manifest, label, executor.worker_path)
    else:
        names, items, problems = walked_groups(folders, read, executor.worker_path)
    if len(names) < 2:
        raise UsageError("tune needs at least two sites (folders, or sites of a manifest)")
    goal = None if target is None else _site(names, target)
    chosen = sampled_per_site(items, len(names), sample, seed)
    plan = Plan.of(names, items, chosen, candidates, label is not None, folds, goal)
    on_plan(plan)
    executor.check(sorted({item.root for item in items}), [])
    modes = tuple(dict.fromkeys(c.mask for c in candidates))
    measured = next((m for m in modes if m != MaskMode.NONE.value), MaskMode.NONE.value)
    fit = FitCandidates(tuple(candidates), read)
    fitted: list[Fitted] = gather(
        executor, fit, [i for i in chosen if goal is None or i.group == goal], on_result
    )
    kept = [f for f in fitted if f.kind is not None]
    if not kept:
        raise UsageError("no sampled reference image could be read", hint=_first(fitted))
    kind, _ = of_one_kind([_Kinded(*f.kind) for f in kept if f.kind], [])
    references = [
        reference_of([f.statistics[k] for f in kept if f.kind == kind])
        for k in range(len(candidates))
    ]
    task = MeasureCandidates(tuple(candidates), tuple(references), read, measured, kind, seed)
    outcomes: list[Measured] = gather(executor, task, chosen, on_result)
    problems = problems + [r for o in outcomes for r in o.results if r.status != OK]
    samples = [o.samples for o in outcomes if o.samples]
    unharmonized = measures([s[0] for s in samples], names, label, folds, seed)
    if margin is None:
        margin = default_margin((unharmonized["label"] or {}).get("accuracy"), len(samples))
    rows = [
        measures([s[k + 1] for s in samples], names, label, folds, seed)
        for k in range(len(candidates))
    ]
    choice = choose(candidates, rows, unharmonized, label, margin)
    best = candidates[choice.index]
    reference, fit_problems, _ = reference_from_files(
        [folders[goal]] if manifest is None and goal is not None else list(folders),
        best.fractions,
        replace(read, mask=MaskMode(best.mask)),
        on_result=on_result,
        executor=executor,
        manifest=None if manifest is None else _of_site(manifest, names, goal),
    )
    reported = {p.path for p in problems}  # the fit meets the same damaged files again
    sites = [
        {"name": name, "path": str(folders[k]) if manifest is None else str(manifest.source)}
        | {"count": plan.inputs[k], "sampled": sum(s[0].group == k for s in samples)}
        for k, name in enumerate(names)
    ]
    tuning = Tuning(
        sites=sites,
        candidates=list(candidates),
        rows=rows,
        unharmonized=unharmonized,
        choice=choice,
        label=label,
        margin=margin,
        target=target,
        measured=measured,
        kind=kind[0],
        unit=kind[1],
        channels=kind[2],
        sample=sample,
        seed=seed,
        folds=folds,
        problems=problems + [p for p in fit_problems if p.path not in reported],
        reference=str(output),
        seconds=time.perf_counter() - start,
    )
    return tuning, reference


def _site(names: Sequence[str], target: str) -> int:
    if target not in names:
        raise UsageError(f"--target-site {target!r} is none of the sites: {', '.join(names)}")
    return list(names).index(target)


def _of_site(manifest: Manifest, names: Sequence[str], goal: int | None) -> Manifest:
    """The manifest's rows of site ``goal`` (all rows when None)."""
    if goal is None:
        return manifest
    return replace(manifest, rows=tuple(r for r in manifest.rows if r.site == names[goal]))


def _first(outcomes: Sequence[Fitted]) -> str | None:
    return next((r.reason for o in outcomes for r in o.results if r.reason), None)


@dataclass(frozen=True)
class _Kinded:
    kind: str
    unit: str
    channels: int
    path: str = ""


def sampled_per_site(items: Sequence[Grouped], sites: int, sample: int, seed: int) -> list[Grouped]:
    """At most ``sample`` inputs of each site, drawn with ``seed`` (the same draw for the
    same inputs and seed), in input order and numbered afresh."""
    rng = np.random.default_rng(seed)
    kept: list[Grouped] = []
    for site in range(sites):
        members = [item for item in items if item.group == site]
        if len(members) > sample:
            picked = np.sort(rng.choice(len(members), sample, replace=False))
            members = [members[i] for i in picked]
        kept.extend(members)
    kept.sort(key=lambda item: item.index)
    return [replace(item, index=k) for k, item in enumerate(kept)]


@dataclass(frozen=True)
class _Slices:
    """An input read for tune: its images, slices, each mask mode's planes, its volumes."""

    images: list[Image]
    frames: list[np.ndarray]
    planes: dict[str, list[np.ndarray | None]]
    volumes: list[list[int]]

    @property
    def kind(self) -> Kind:
        image = self.images[0]
        return (image.kind, image.unit, image.channel_count)


def _read(item: Grouped, read: ReadOptions, modes: Sequence[str]) -> _Slices:
    root, inp = item.root, item.inp
    images = read_input(root, inp, read.max_pixels, read.slice_axis, kinds=read.kinds)
    planes: dict[str, list[np.ndarray | None]] = {}
    for mode in dict.fromkeys(modes):
        how = replace(read, mask=MaskMode(mode))
        masks = input_masks(images, inp, root, how.mask, how.mask_files, read.slice_axis)
        planes[mode] = [
            None if volume_mask is None else volume_mask[f]
            for image, volume_mask in zip(images, masks)
            for f in range(image.frame_count)
        ]
    frames = [frame for image in images for frame in image.frames]
    return _Slices(images, frames, planes, volumes_of(images))


def _spectra(
    slices: _Slices, candidates: Sequence[Candidate], extra: Sequence[Sequence[float]] = ()
) -> Iterator[tuple[int, list[Bands], SliceSpectrum]]:
    """Each slice decomposed once (up to the largest cut of the candidates and ``extra``),
    with its spectrum for the candidates' statistics, slice by slice."""
    cut_sets = [c.fractions for c in candidates]
    for f, frame in enumerate(slices.frames):
        bands = decompose_once(frame, [*cut_sets, *extra])
        planes = {m: slices.planes[m][f] for m in slices.planes}
        yield f, bands, slice_spectrum(bands, cut_sets, planes)


def _pooled(
    slices: _Slices, spectra: Sequence[SliceSpectrum], candidates: Sequence[Candidate]
) -> list[list[Moments]]:
    """Each candidate's moments of the input, pooled per volume."""
    return [
        [
            pool([spectra[i].moments(c.fractions, c.mask) for i in volume])
            for volume in slices.volumes
        ]
        for c in candidates
    ]


@dataclass(frozen=True)
class Fitted:
    """A reference image's outcome: its kind and each candidate's per-volume moments."""

    index: int
    results: list[FileResult]
    kind: Kind | None
    statistics: list[list[Moments]]


@dataclass(frozen=True)
class FitCandidates(OneByOne):
    """Step 2: a reference image decomposed once for every candidate's statistics
    (payload :class:`Fitted`)."""

    candidates: tuple[Candidate, ...]
    read: ReadOptions

    def one(
        self, item: Grouped, threads: int, report: Callable[[Any], None], stop: Any = None
    ) -> None:
        try:
            slices = _read(item, self.read, [c.mask for c in self.candidates])
            spectra = [spectrum for _, _, spectrum in _spectra(slices, self.candidates)]
            statistics = _pooled(slices, spectra, self.candidates)
        except Exception as exc:  # the input's failure, never the run's (outcome_of)
            found = outcome_of(exc, item.inp, item.shown / item.inp.files[0])
            report(Fitted(item.index, item.results(found.status, found.reason), None, []))
            return
        report(Fitted(item.index, item.results(OK), slices.kind, statistics))

    def lost(self, item: Grouped, reason: str) -> Fitted:
        return Fitted(item.index, item.lost(reason), None, [])


@dataclass(frozen=True)
class Measured:
    """A sampled image's outcome: a result per file and, when it was measured, its
    samples: unharmonized first, then one per candidate."""

    index: int
    results: list[FileResult]
    samples: list[Sample]


@dataclass(frozen=True)
class MeasureCandidates(OneByOne):
    """Step 3: a sampled image decomposed once, harmonized with every candidate and each
    result measured as compare measures it (payload :class:`Measured`). An image of another
    kind than ``kind`` is left out, saying why."""

    candidates: tuple[Candidate, ...]
    references: tuple[tuple[np.ndarray, np.ndarray], ...]
    read: ReadOptions
    measured: str
    kind: Kind
    seed: int

    def one(
        self, item: Grouped, threads: int, report: Callable[[Any], None], stop: Any = None
    ) -> None:
        try:
            samples = self.measure(item)
        except Exception as exc:  # the input's failure, never the run's (outcome_of)
            found = outcome_of(exc, item.inp, item.shown / item.inp.files[0])
            report(Measured(item.index, item.results(found.status, found.reason), []))
            return
        if isinstance(samples, str):
            report(Measured(item.index, item.results(SKIPPED, samples), []))
            return
        report(Measured(item.index, item.results(OK), samples))

    def lost(self, item: Grouped, reason: str) -> Measured:
        return Measured(item.index, item.lost(reason), [])

    def measure(self, item: Grouped) -> list[Sample] | str:
        """The samples, or why the image is left out."""
        modes = [c.mask for c in self.candidates] + [self.measured]
        slices = _read(item, self.read, modes)
        shown = _shown(item)
        if slices.kind != self.kind:
            ours, theirs = (
                describe_kind(u, c, k or "no kind") for k, u, c in (slices.kind, self.kind)
            )
            return (
                f"{shown}: is {ours} but the reference images are {theirs}: "
                "only images of one kind are compared"
            )
        kept: dict[int, list[Bands]] = {}
        spectra: list[SliceSpectrum] = []
        for f, bands, spectrum in _spectra(slices, self.candidates, [YARDSTICK]):
            spectra.append(spectrum)
            if sum(_nbytes(b) for b in [*kept.values(), bands]) <= CACHE_BYTES:
                kept[f] = bands  # beyond the budget, a slice is decomposed again below
        statistics = _pooled(slices, spectra, self.candidates)
        maps = [
            [harmonizing_map(m, self.references[k]) for m in statistics[k]]
            for k in range(len(self.candidates))
        ]
        volume_of = {f: v for v, volume in enumerate(slices.volumes) for f in volume}
        picks = _picks(slices, self.measured, len(self.candidates) + 1, self.seed, item.index)
        rows = [_Row(slices.kind[2]) for _ in range(len(self.candidates) + 1)]
        cut_sets = [c.fractions for c in self.candidates] + [YARDSTICK]
        for f, frame in enumerate(slices.frames):
            bands = kept.pop(f) if f in kept else decompose_once(frame, cut_sets)
            plane, pick = slices.planes[self.measured][f], picks[f]
            rows[0].add(*_input_features(bands, plane), pick)
            for k, candidate in enumerate(self.candidates):
                scales, offsets = maps[k][volume_of[f]]
                y = harmonized(bands, candidate.fractions, scales, offsets)
                keep = slices.planes[candidate.mask][f] if candidate.mask != "none" else None
                if keep is not None:
                    y[:, ~keep] = frame[:, ~keep]
                if self.kind[1] == NORMALIZED:
                    np.clip(y, 0.0, 1.0, out=y)
                moments, values = slice_features([(y, plane)], YARDSTICK, y.shape[0])
                rows[k + 1].add(moments[0], [v[0] for v in values], pick)
        return [self._sample(item, shown, row.moments, row.values) for row in rows]

    def _sample(
        self, item: Grouped, shown: str, moments: list[Moments], values: list[list[np.ndarray]]
    ) -> Sample:
        rng = np.random.default_rng([self.seed, item.index])
        s = sample_from_moments(item.group, shown, self.kind[1], moments, values, rng, self.kind[0])
        return replace(s, label=item.label, pixels=s.pixels[:, :WASSERSTEIN_PIXELS])


def _shown(item: Grouped) -> str:
    inp = item.inp
    return str(item.shown / inp.files[0] if inp.volume is None else item.shown / inp.volume)


class _Row:
    """One row's features of an input, gathered slice by slice."""

    def __init__(self, channels: int) -> None:
        self.moments: list[Moments] = []
        self.values: list[list[np.ndarray]] = [[] for _ in range(channels)]

    def add(self, moments: Moments, values: list[np.ndarray], pick: np.ndarray | None) -> None:
        self.moments.append(moments)
        for c, v in enumerate(values):
            self.values[c].append(v if pick is None else v[pick])


def _input_features(
    bands: list[Bands], plane: np.ndarray | None
) -> tuple[Moments, list[np.ndarray]]:
    """compare's features of one slice (:func:`~svdharm_cli.evidence.compare.slice_features`)
    at the yardstick, from its decomposition cut again there."""
    cut = [_masked(b.recut(YARDSTICK), plane) for b in bands]
    values = []
    for b in bands:
        x = b.x.T if b.transposed else b.x
        values.append(x[plane] if plane is not None else x.ravel())
    return slice_moments(cut), values


def _masked(bands: Bands, plane: np.ndarray | None) -> Bands:
    """``bands`` with statistics over ``plane`` (as :func:`~svdharm_cli.core.bands.decompose`
    takes a mask: None when every pixel is in)."""
    if plane is None or plane.all():
        return bands
    return replace(bands, mask=plane.T if bands.transposed else plane)


def _nbytes(bands: list[Bands]) -> int:
    return sum(b.x.nbytes + b.nbytes for b in bands)


def _picks(
    slices: _Slices, measured: str, rows: int, seed: int, index: int
) -> list[np.ndarray | None]:
    """Which measured pixels of each slice the percentiles keep: all of them, unless the
    rows' values would pass :data:`VALUES_BYTES` (a large volume), then a seeded share of
    each slice, the same pixels for every row."""
    counts = [
        f.shape[1] * f.shape[2] if p is None else int(p.sum())
        for f, p in zip(slices.frames, slices.planes[measured])
    ]
    channels = slices.kind[2]
    share = VALUES_BYTES / max(1, 8 * rows * channels * sum(counts))
    if share >= 1.0:
        return [None] * len(counts)
    rng = np.random.default_rng([seed, index, 1])
    return [np.sort(rng.choice(n, max(1, round(n * share)), replace=False)) for n in counts]
