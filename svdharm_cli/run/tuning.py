"""The work of ``svdharm tune``: what the client does; the workers' tasks are in
:mod:`svdharm_cli.run.candidates`.

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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from svdharm_cli.core.masks import MaskMode
from svdharm_cli.core.reference import Reference
from svdharm_cli.errors import UsageError
from svdharm_cli.evidence.compare import DEFAULT_FOLDS
from svdharm_cli.evidence.tuning import (
    YARDSTICK,
    Candidate,
    Tuning,
    choose,
    default_margin,
    measures,
    reference_of,
)
from svdharm_cli.files.manifest import Manifest
from svdharm_cli.run.candidates import FitCandidates, Fitted, Kind, MeasureCandidates, Measured
from svdharm_cli.run.executors import Executor
from svdharm_cli.run.executors.local import LocalPool
from svdharm_cli.run.executors.work import gather
from svdharm_cli.run.fitting import reference_from_files
from svdharm_cli.run.options import ReadOptions
from svdharm_cli.run.results import OK, FileResult
from svdharm_cli.run.sampling import Grouped, listed_groups, walked_groups

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
    kind: Kind = Counter(f.kind for f in kept if f.kind).most_common(1)[0][0]  # the references'
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
