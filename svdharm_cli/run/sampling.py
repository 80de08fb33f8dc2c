"""The work of ``compare``, run wherever tasks run: every image of every group read and
turned into one :class:`~svdharm_cli.evidence.compare.Sample` of features by the workers
(features travel back, never pixels), then the measures of
:mod:`svdharm_cli.evidence.compare` over them."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli.core.device import CPU, Device, on_device, resolve
from svdharm_cli.core.masks import MaskMode
from svdharm_cli.core.reference import Reference, describe_kind
from svdharm_cli.core.volume import transform_volume
from svdharm_cli.errors import UsageError
from svdharm_cli.evidence.compare import (
    DEFAULT_FOLDS,
    Comparison,
    Sample,
    distances,
    label_measures,
    sample_from_moments,
    separability,
    slice_features,
)
from svdharm_cli.files.formats import NORMALIZED
from svdharm_cli.files.inputs import entry_for, input_masks, read_input, volumes_of
from svdharm_cli.files.manifest import Manifest
from svdharm_cli.files.plan import Input, discover, plan_inputs
from svdharm_cli.run.executors import Executor, OneByOne
from svdharm_cli.run.executors.local import LocalPool
from svdharm_cli.run.executors.work import Rooted, gather
from svdharm_cli.run.options import ReadOptions
from svdharm_cli.run.results import OK, SKIPPED, FileResult, Status, outcome_of, walk_results


def group_names(folders: Sequence[Path]) -> list[str]:
    """Each folder's name, or its path where names repeat (``site_a`` and ``out/site_a``)."""
    names = [f.name or str(f) for f in folders]
    repeated = {n for n, c in Counter(names).items() if c > 1}
    return [str(f) if n in repeated else n for f, n in zip(folders, names)]


def compare(
    folders: Sequence[Path],
    fractions: Sequence[float],
    read: ReadOptions = ReadOptions(),
    *,
    manifest: Manifest | None = None,
    label: str | None = None,
    reference: Reference | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    on_result: Callable[[FileResult], None] = lambda r: None,
    executor: Executor | None = None,
) -> Comparison:
    """Features of every image of every group, then separability and distances; with
    ``label`` (a manifest column) the label's measures (:func:`label_measures`); with a
    ``reference``, every image also harmonized in memory as harmonize would, and the same
    measures after.

    The groups are ``folders``, or a ``manifest``'s sites (its ``site`` column, in order of
    first appearance). ``read.mask_dir`` holds one subfolder of masks per group folder,
    named like the group (a manifest's masks are its ``mask`` column).

    The features are taken by ``executor``'s workers (this process by default); each
    image's pixel sample has its own seed (from ``seed`` and the image's place in the
    groups), so the result does not depend on where or in which order they ran. Raises
    :class:`UsageError` for fewer than two groups, a missing folder, or no images, and
    :class:`Interrupted` on SIGINT/SIGTERM.
    """
    start = time.perf_counter()
    executor = executor or LocalPool(1)
    here = executor.worker_path
    if manifest is not None:
        names, items, walk_problems = listed_groups(manifest, label, here)
    else:
        names, items, walk_problems = walked_groups(folders, read, here)
    if len(names) < 2:
        raise UsageError("compare needs at least two groups (folders, or sites of a manifest)")
    executor.check(
        sorted({item.root for item in items} | ({here(read.mask_dir)} if read.mask_dir else set())),
        [],
    )
    task = SampleInputs(tuple(fractions), read, seed, executor.device, reference)
    ordered: list[Sampled] = gather(executor, task, items, on_result)
    problems = walk_problems + [r for o in ordered for r in o.results if r.status != OK]
    samples = [o.sample for o in ordered if o.sample is not None]
    after = {id(o.sample): o.after for o in ordered if o.sample is not None}
    if not samples:
        raise UsageError("no image in the groups could be read")
    (kind, unit, channels), kept = _of_one_kind(samples, problems)
    groups = [
        {
            "name": name,
            "path": str(folders[k]) if manifest is None else str(manifest.source),
            "count": sum(s.group == k for s in kept),
        }
        for k, name in enumerate(names)
    ]
    harmonized = [after[id(s)] for s in kept] if reference is not None else []
    return Comparison(
        groups=groups,
        fractions=tuple(fractions),
        mask=MaskMode(read.mask).value,
        unit=unit,
        channels=channels,
        samples=kept,
        kind=kind,
        separability=separability(kept, len(names), folds, seed),
        label=None if label is None else label_measures(kept, label, folds, seed),
        after=None
        if reference is None
        else {
            "separability": separability(
                [h for h in harmonized if h is not None], len(names), folds, seed
            ),
            "label": None
            if label is None
            else label_measures([h for h in harmonized if h is not None], label, folds, seed),
        },
        wasserstein=distances(kept, names),
        problems=problems,
        seconds=time.perf_counter() - start,
    )


def _of_one_kind(
    samples: list[Sample], problems: list[FileResult]
) -> tuple[tuple[str, str, int], list[Sample]]:
    """The (kind, unit, channels) most samples have, and those samples; the others are
    added to ``problems`` as left out, saying why."""
    kinds = Counter((s.kind, s.unit, s.channels) for s in samples)
    (kind, unit, channels), _ = kinds.most_common(1)[0]
    kept = []
    for s in samples:
        if (s.kind, s.unit, s.channels) == (kind, unit, channels):
            kept.append(s)
        else:
            reason = (
                f"{s.path}: is {describe_kind(s.unit, s.channels, s.kind or 'no kind')} but "
                f"most images compared are {describe_kind(unit, channels, kind or 'no kind')}: "
                "only images of one kind are compared"
            )
            problems.append(FileResult(s.path, SKIPPED, reason, kind=s.kind))
    return (kind, unit, channels), kept


def walked_groups(
    folders: Sequence[Path], read: ReadOptions, here: Callable[[Path], Path]
) -> tuple[list[str], list[Grouped], list[FileResult]]:
    """The groups' names, the items and the walks' problems of folders as groups (for
    compare and tune)."""
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(f"group {folder} is not a folder")
    names = group_names(folders)
    items: list[Grouped] = []
    problems: list[FileResult] = []
    for k, folder in enumerate(folders):
        found = discover(folder)
        problems.extend(walk_results(found.root, found.unlisted, found.notes))
        root = here(found.root)
        masks = None if read.mask_dir is None else here(read.mask_dir / names[k])
        for work in plan_inputs(root, found.images, found.dicom):
            items.append(Grouped(len(items), root, work, found.root, k, masks))
    return names, items, problems


def listed_groups(
    manifest: Manifest, label: str | None, here: Callable[[Path], Path]
) -> tuple[list[str], list[Grouped], list[FileResult]]:
    """The same for a manifest: its sites as groups, each row's label (an empty cell is a
    usage error: every image compared needs one)."""
    site_column = manifest.column("site")
    label_column = None if label is None else manifest.column(label)
    names: list[str] = []
    for row in manifest.rows:
        site = row.values[site_column]
        if not site:
            raise UsageError(f"{manifest.source}: {row.rel} has no site (the sites are the groups)")
        if label_column is not None and not row.values[label_column]:
            raise UsageError(f"{manifest.source}: {row.rel} has no {label_column!r} value")
        if site not in names:
            names.append(site)
    root = here(manifest.root)
    items: list[Grouped] = []
    problems: list[FileResult] = []
    for folder in manifest.folders():
        problems.extend(walk_results(manifest.root, folder.unlisted, ()))
        for work in plan_inputs(root, folder.images, folder.dicom):
            row = manifest.by_rel[work.files[0]]
            group = names.index(row.values[site_column])
            value = "" if label_column is None else row.values[label_column]
            items.append(Grouped(len(items), root, work, manifest.root, group, None, value))
    return names, items, problems


@dataclass(frozen=True)
class Grouped(Rooted):
    """An input of one group (numbered in input order over all groups), with the
    folder of its group's masks."""

    group: int
    mask_dir: Path | None
    label: str = ""


@dataclass(frozen=True)
class Sampled:
    """One input's outcome: a result per file, and its features when it could be read."""

    index: int
    results: list[FileResult]
    sample: Sample | None
    after: Sample | None = None
    """The same image harmonized in memory (with a reference)."""


@dataclass(frozen=True)
class SampleInputs(OneByOne):
    """The task of compare: the features of each input (payload :class:`Sampled`)."""

    fractions: tuple[float, ...]
    read: ReadOptions
    """``mask_dir``: unused (each group's is its item's)."""
    seed: int
    device: str = "cpu"
    reference: Reference | None = None

    def one(
        self, item: Grouped, threads: int, report: Callable[[Any], None], stop: Any = None
    ) -> None:
        outcome = _sample(
            item,
            self.fractions,
            replace(self.read, mask_dir=item.mask_dir) if item.mask_dir else self.read,
            self.seed,
            CPU if self.device == "cpu" else resolve(self.device),
            self.reference,
        )
        if isinstance(outcome[0], Sample):
            named = [
                None if s is None else replace(s, path=_sample_path(item.shown, item.inp))
                for s in outcome
            ]
            report(Sampled(item.index, item.results(OK), named[0], named[1]))
        else:
            status, reason = outcome
            report(Sampled(item.index, item.results(status, reason), None))

    def lost(self, item: Grouped, reason: str) -> Sampled:
        return Sampled(item.index, item.lost(reason), None)


def _sample_path(root: Path, inp: Input) -> str:
    return str(root / inp.files[0]) if inp.volume is None else f"{root}/{inp.volume}"


def _sample(
    item: Grouped,
    fractions: Sequence[float],
    read: ReadOptions,
    seed: int,
    device: Device = CPU,
    reference: Reference | None = None,
) -> tuple[Sample, Sample | None] | tuple[Status, str]:
    """One input's features, and with a ``reference`` those of the input harmonized in
    memory (as harmonize would: pooled per volume, the outside of a mask kept, normalized
    values clipped to [0, 1]); or ``(status, reason)`` when it cannot be read. Both pixel
    samples are drawn with the same seed."""
    root, inp = item.root, item.inp
    try:
        images = read_input(root, inp, read.max_pixels, read.slice_axis, reference, read.kinds)
        masks = input_masks(images, inp, root, read.mask, read.mask_files, read.slice_axis)
        entry = entry_for(reference, images[0].info, root / inp.files[0])
        frames = [frame for image in images for frame in image.frames]
        planes = [
            None if volume_mask is None else volume_mask[f]
            for image, volume_mask in zip(images, masks)
            for f in range(image.frame_count)
        ]

        def features(on: Device) -> tuple[Any, Any]:
            before = slice_features(zip(frames, planes), fractions, images[0].channel_count, on)
            if entry is None:
                return before, None
            new = transform_volume(
                [on.put(f) for f in frames],
                fractions,
                reference=(entry.mean, entry.std),
                masks=[on.put(m) for m in planes],
                groups=volumes_of(images),
                per_slice=read.per_slice,
            )[0]
            harmonized = [on.host(x) for x in new]
            if images[0].unit == NORMALIZED:
                harmonized = [np.clip(x, 0.0, 1.0) for x in harmonized]
            after = slice_features(zip(harmonized, planes), fractions, images[0].channel_count)
            return before, after

        (before, after), _ = on_device(device, inp.key, features)
    except Exception as exc:  # the input's failure, never the run's (outcome_of)
        found = outcome_of(exc, inp, root / inp.files[0])
        return found.status, found.reason
    image = images[0]

    def sample(moments_values: Any) -> Sample:
        rng = np.random.default_rng([seed, item.index])
        moments, values = moments_values
        s = sample_from_moments(item.group, "", image.unit, moments, values, rng, image.kind)
        return replace(s, label=item.label)

    return sample(before), None if after is None else sample(after)
