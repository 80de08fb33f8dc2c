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
from svdharm_cli.core.reference import describe_kind
from svdharm_cli.errors import UsageError
from svdharm_cli.evidence.compare import (
    DEFAULT_FOLDS,
    Comparison,
    Sample,
    distances,
    sample_from_moments,
    separability,
    slice_features,
)
from svdharm_cli.files.inputs import input_masks, read_input
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
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    on_result: Callable[[FileResult], None] = lambda r: None,
    executor: Executor | None = None,
) -> Comparison:
    """Features of every image of every group, then separability and distances.

    ``read.mask_dir`` holds one subfolder of masks per group, named like the group.

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
        masks = None if read.mask_dir is None else here(read.mask_dir / names[k])
        for work in plan_inputs(root, found.images, found.dicom):
            items.append(Grouped(len(items), root, work, found.root, k, masks))
    executor.check(
        sorted({item.root for item in items} | ({here(read.mask_dir)} if read.mask_dir else set())),
        [],
    )
    task = SampleInputs(tuple(fractions), read, seed, executor.device)
    ordered: list[Sampled] = gather(executor, task, items, on_result)
    problems = walk_problems + [r for o in ordered for r in o.results if r.status != OK]
    samples = [o.sample for o in ordered if o.sample is not None]
    if not samples:
        raise UsageError("no image in the groups could be read")
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
    groups = [
        {"name": names[k], "path": str(f), "count": sum(s.group == k for s in kept)}
        for k, f in enumerate(folders)
    ]
    return Comparison(
        groups=groups,
        fractions=tuple(fractions),
        mask=MaskMode(read.mask).value,
        unit=unit,
        channels=channels,
        samples=kept,
        kind=kind,
        separability=separability(kept, len(folders), folds, seed),
        wasserstein=distances(kept, names),
        problems=problems,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class Grouped(Rooted):
    """An input of one group (numbered in input order over all groups), with the
    folder of its group's masks."""

    group: int
    mask_dir: Path | None


@dataclass(frozen=True)
class Sampled:
    """One input's outcome: a result per file, and its features when it could be read."""

    index: int
    results: list[FileResult]
    sample: Sample | None


@dataclass(frozen=True)
class SampleInputs(OneByOne):
    """The task of compare: the features of each input (payload :class:`Sampled`)."""

    fractions: tuple[float, ...]
    read: ReadOptions
    """``mask_dir``: unused (each group's is its item's)."""
    seed: int
    device: str = "cpu"

    def one(
        self, item: Grouped, threads: int, report: Callable[[Any], None], stop: Any = None
    ) -> None:
        rng = np.random.default_rng([self.seed, item.index])
        outcome = _sample(
            item.group,
            item.root,
            item.inp,
            self.fractions,
            replace(self.read, mask_dir=item.mask_dir),
            rng,
            CPU if self.device == "cpu" else resolve(self.device),
        )
        if isinstance(outcome, Sample):
            named = replace(outcome, path=_sample_path(item.shown, item.inp))
            report(Sampled(item.index, item.results(OK), named))
        else:
            report(Sampled(item.index, item.results(*outcome), None))

    def lost(self, item: Grouped, reason: str) -> Sampled:
        return Sampled(item.index, item.lost(reason), None)


def _sample_path(root: Path, inp: Input) -> str:
    return str(root / inp.files[0]) if inp.volume is None else f"{root}/{inp.volume}"


def _sample(
    group: int,
    root: Path,
    inp: Input,
    fractions: Sequence[float],
    read: ReadOptions,
    rng: np.random.Generator,
    device: Device = CPU,
) -> Sample | tuple[Status, str]:
    """One input's features, or ``(status, reason)`` when it cannot be read."""
    try:
        images = read_input(root, inp, read.max_pixels, read.slice_axis, kinds=read.kinds)
        masks = input_masks(images, inp, root, read.mask, read.mask_dir, read.slice_axis)
        pairs = [
            (frame, None if volume_mask is None else volume_mask[f])
            for image, volume_mask in zip(images, masks)
            for f, frame in enumerate(image.frames)
        ]
        (moments, values), _ = on_device(
            device,
            inp.key,
            lambda on: slice_features(pairs, fractions, images[0].channel_count, on),
        )
    except Exception as exc:  # the input's failure, never the run's (outcome_of)
        found = outcome_of(exc, inp, root / inp.files[0])
        return found.status, found.reason
    return sample_from_moments(
        group,
        _sample_path(root, inp),
        images[0].unit,
        moments,
        values,
        rng,
        images[0].kind,
    )
