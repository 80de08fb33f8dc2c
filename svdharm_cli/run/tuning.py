"""The work of ``svdharm tune``: a seeded sample of every site, each image decomposed once
by the workers for every candidate, the candidates measured and one chosen here
(:mod:`svdharm_cli.evidence.tuning`), then the reference fitted with the chosen cuts on the
target site's images, exactly as ``fit-reference`` fits it.

Only what the measures need travels back from the workers: each slice's
:class:`~svdharm_cli.core.spectrum.SliceSpectrum` (moments of its segments, and their values
at 4,096 sampled pixels per input), never the image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli.core.masks import MaskMode
from svdharm_cli.core.reference import Reference
from svdharm_cli.core.spectrum import YARDSTICK, slice_spectrum
from svdharm_cli.errors import UsageError
from svdharm_cli.evidence.compare import DEFAULT_FOLDS
from svdharm_cli.evidence.tuning import (
    Candidate,
    Decomposed,
    Tuning,
    evaluate,
)
from svdharm_cli.files.inputs import input_masks, read_input, volumes_of
from svdharm_cli.files.manifest import Manifest
from svdharm_cli.run.executors import Executor, OneByOne
from svdharm_cli.run.executors.local import LocalPool
from svdharm_cli.run.executors.work import gather
from svdharm_cli.run.fitting import reference_from_files
from svdharm_cli.run.options import ReadOptions
from svdharm_cli.run.results import OK, FileResult, outcome_of
from svdharm_cli.run.sampling import Grouped, listed_groups, of_one_kind, walked_groups

SAMPLE_PIXELS = 4096
"""Pixels sampled per input (per channel, over the measured pixels; all of them in a
smaller image) for the percentiles and the Wasserstein distances of every candidate."""
DEFAULT_SAMPLE = 50
"""Images (inputs: a series or volume counts once) sampled per site."""


@dataclass(frozen=True)
class Plan:
    """What tune will do, known before any image is read (the estimate it prints)."""

    sites: list[str]
    inputs: list[int]
    """Inputs found per site."""
    sampled: list[int]
    """Inputs sampled per site."""
    candidates: int
    largest: float
    """The largest cut any candidate or the yardstick asks for."""
    fits: int
    """Classifier fits per candidate."""
    reference_inputs: int
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
        """The plan of sites ``names`` with ``items`` found and ``sampled``; the reference
        fitted on site ``goal`` (all when None)."""
        found = [sum(i.group == k for i in items) for k in range(len(names))]
        return cls(
            names,
            found,
            [sum(i.group == k for i in sampled) for k in range(len(names))],
            len(candidates),
            max(f for c in candidates for f in (*c.fractions, *YARDSTICK)),
            folds + (folds + len(names) if labelled else 0),
            len(items) if goal is None else found[goal],
        )

    def describe(self) -> str:
        sampled, found = sum(self.sampled), sum(self.inputs)
        return (
            f"tune: {len(self.sites)} sites, {sampled} of {found} images sampled "
            f"({', '.join(f'{s} {n}' for s, n in zip(self.sites, self.sampled))}); "
            f"each decomposed once, up to {100 * self.largest:g} % of its singular values, "
            f"for all {self.candidates} candidates (not {self.candidates} times); then "
            f"{self.candidates + 1} x {self.fits} classifier fits; then the reference fitted "
            f"on {self.reference_inputs} images"
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
    on the target site's images (every site's when ``target`` is None), as
    :func:`~svdharm_cli.run.fitting.reference_from_files` (fit-reference) fits it.
    ``margin`` defaults to :func:`~svdharm_cli.evidence.tuning.default_margin`; ``output``
    is only recorded (the caller writes the reference). Raises
    :class:`UsageError` for fewer than two sites, an unknown target site, or no image.
    """
    start = time.perf_counter()
    executor = executor or LocalPool(1)
    here = executor.worker_path
    if manifest is not None:
        names, items, problems = listed_groups(manifest, label, here)
    else:
        names, items, problems = walked_groups(folders, read, here)
    if len(names) < 2:
        raise UsageError("tune needs at least two sites (folders, or sites of a manifest)")
    goal = None if target is None else _site(names, target)
    chosen_items = sampled_per_site(items, len(names), sample, seed)
    modes = list(dict.fromkeys(c.mask for c in candidates))
    measured = next((m for m in modes if m != MaskMode.NONE.value), MaskMode.NONE.value)
    plan = Plan.of(names, items, chosen_items, candidates, label is not None, folds, goal)
    on_plan(plan)
    executor.check(sorted({item.root for item in items}), [])
    task = DecomposeInputs(
        tuple(dict.fromkeys(c.fractions for c in candidates)), read, tuple(modes), measured, seed
    )
    outcomes: list[Spectra] = gather(executor, task, chosen_items, on_result)
    problems = problems + [r for o in outcomes for r in o.results if r.status != OK]
    records = [o.record for o in outcomes if o.record is not None]
    if not records:
        raise UsageError("no sampled image could be read")
    (kind, unit, channels), kept = of_one_kind(records, problems)
    if goal is not None and not any(r.group == goal for r in kept):
        raise UsageError(f"no sampled image of site {target!r} could be read")
    unharmonized, rows, margin, choice = evaluate(
        kept, names, candidates, label, goal, measured, folds, seed, margin
    )
    best = candidates[choice.index]
    fitted, fit_problems, _ = reference_from_files(
        [folders[goal]] if manifest is None and goal is not None else list(folders),
        best.fractions,
        replace(read, mask=MaskMode(best.mask)),
        on_result=on_result,
        executor=executor,
        manifest=None if manifest is None else _of_site(manifest, names, goal),
    )
    sites = [
        {"name": name, "path": str(folders[k]) if manifest is None else str(manifest.source)}
        | {"count": plan.inputs[k], "sampled": sum(r.group == k for r in kept)}
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
        kind=kind,
        unit=unit,
        channels=channels,
        sample=sample,
        seed=seed,
        folds=folds,
        problems=problems + [p for p in fit_problems if p not in problems],
        reference=str(output),
        seconds=time.perf_counter() - start,
    )
    return tuning, fitted


def _site(names: Sequence[str], target: str) -> int:
    if target not in names:
        raise UsageError(f"--target-site {target!r} is none of the sites: {', '.join(names)}")
    return list(names).index(target)


def _of_site(manifest: Manifest, names: Sequence[str], goal: int | None) -> Manifest:
    """The manifest's rows of site ``goal`` (all rows when None)."""
    if goal is None:
        return manifest
    return replace(manifest, rows=tuple(r for r in manifest.rows if r.site == names[goal]))


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
class Spectra:
    """One input's outcome: a result per file, and its decomposition when it was read."""

    index: int
    results: list[FileResult]
    record: Decomposed | None


@dataclass(frozen=True)
class DecomposeInputs(OneByOne):
    """The task of tune: each input decomposed once for every cut set (payload
    :class:`Spectra`)."""

    cut_sets: tuple[tuple[float, ...], ...]
    read: ReadOptions
    masks: tuple[str, ...]
    """The pixel sets the candidates take statistics over (mask modes)."""
    measured: str
    """The pixel set every candidate is measured over."""
    seed: int

    def one(
        self, item: Grouped, threads: int, report: Callable[[Any], None], stop: Any = None
    ) -> None:
        try:
            record = self.decompose(item)
        except Exception as exc:  # the input's failure, never the run's (outcome_of)
            found = outcome_of(exc, item.inp, item.shown / item.inp.files[0])
            report(Spectra(item.index, item.results(found.status, found.reason), None))
            return
        report(Spectra(item.index, item.results(OK), record))

    def lost(self, item: Grouped, reason: str) -> Spectra:
        return Spectra(item.index, item.lost(reason), None)

    def decompose(self, item: Grouped) -> Decomposed:
        root, inp = item.root, item.inp
        read = replace(self.read, mask_dir=item.mask_dir) if item.mask_dir else self.read
        images = read_input(root, inp, read.max_pixels, read.slice_axis, kinds=read.kinds)
        frames = [frame for image in images for frame in image.frames]
        planes: dict[str, list[np.ndarray | None]] = {}
        for mode in dict.fromkeys((*self.masks, self.measured)):
            how = replace(read, mask=MaskMode(mode))
            masks = input_masks(images, inp, root, how.mask, how.mask_files, read.slice_axis)
            planes[mode] = [
                None if volume_mask is None else volume_mask[f]
                for image, volume_mask in zip(images, masks)
                for f in range(image.frame_count)
            ]
        positions = _positions(
            frames, planes[self.measured], np.random.default_rng([self.seed, item.index])
        )
        slices = [
            slice_spectrum(
                frame, self.cut_sets, {m: planes[m][f] for m in planes}, positions[f], YARDSTICK
            )
            for f, frame in enumerate(frames)
        ]
        shown = item.shown / inp.files[0] if inp.volume is None else item.shown / inp.volume
        image = images[0]
        return Decomposed(
            group=item.group,
            path=str(shown),
            unit=image.unit,
            channels=image.channel_count,
            kind=image.kind,
            label=item.label,
            slices=slices,
            volumes=volumes_of(images),
        )


def _positions(
    frames: Sequence[np.ndarray], planes: Sequence[np.ndarray | None], rng: np.random.Generator
) -> list[np.ndarray]:
    """The measured pixels of all slices, as flat indices into each slice: every one when
    there are at most :data:`SAMPLE_PIXELS`, else that many drawn without replacement."""
    where = [
        np.arange(f.shape[1] * f.shape[2]) if p is None else np.flatnonzero(p)
        for f, p in zip(frames, planes)
    ]
    sizes = np.array([len(w) for w in where])
    total = int(sizes.sum())
    if total == 0:  # nothing measured: every pixel stands in
        where = [np.arange(f.shape[1] * f.shape[2]) for f in frames]
        sizes = np.array([len(w) for w in where])
        total = int(sizes.sum())
    if total <= SAMPLE_PIXELS:
        return where
    drawn = np.sort(rng.choice(total, SAMPLE_PIXELS, replace=False))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [w[drawn[(drawn >= a) & (drawn < b)] - a] for w, a, b in zip(where, bounds, bounds[1:])]
