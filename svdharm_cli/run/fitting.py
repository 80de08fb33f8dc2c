"""Per-image band statistics, the work of ``fit-reference``, run wherever tasks run.

:func:`input_statistics` reads one input (an image, a series, a NIfTI or TIFF volume) and
returns its pooled per-component statistics (METHOD.md section 3a) and its sources.
:class:`MeasureInputs` is the picklable task that runs it on workers (local processes or a
Dask cluster): statistics travel back, never pixels; the client reduces them into a
:class:`~svdharm_cli.core.reference.Reference` in input order, so the reference does not depend
on where or in which order the work ran.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli.core.bands import DEFAULT_FRACTIONS
from svdharm_cli.core.device import CPU, Device, on_device, resolve
from svdharm_cli.core.masks import MaskMode
from svdharm_cli.core.methods import Moments
from svdharm_cli.core.reference import Reference, Source
from svdharm_cli.core.volume import volume_moments
from svdharm_cli.errors import ImageError, ReferenceFileError, SkipImage, UsageError
from svdharm_cli.files.atomic import write_text
from svdharm_cli.files.inputs import input_masks, read_input, volumes_of
from svdharm_cli.files.manifest import Manifest
from svdharm_cli.files.plan import Input, discover, plan_inputs
from svdharm_cli.run.executors import Executor, OneByOne
from svdharm_cli.run.executors.local import LocalPool
from svdharm_cli.run.executors.work import Rooted, gather
from svdharm_cli.run.options import ReadOptions, WalkOptions
from svdharm_cli.run.results import OK, FileResult, Stop, outcome_of, walk_results

Statistics = tuple[str, np.ndarray, np.ndarray, str]
"""One image's ``(unit, means, stds, kind)``."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def input_statistics(
    root: Path,
    inp: Input,
    fractions: Sequence[float],
    read: ReadOptions = ReadOptions(),
    device: Device = CPU,
) -> tuple[list[Statistics], list[Source]]:
    """Per-image statistics ``(unit, means, stds, kind)`` of one input, and its sources.

    A volume counts as one image, its slices pooled (METHOD.md section 3a); each 3-D volume
    of a 4-D NIfTI counts as one; with ``read.per_slice`` every slice counts as one image.
    """
    images = read_input(root, inp, read.max_pixels, read.slice_axis, kinds=read.kinds)
    masks = input_masks(images, inp, root, read.mask, read.mask_files, read.slice_axis)
    slices = [frame for image in images for frame in image.frames]
    planes = [
        None if volume_mask is None else volume_mask[f]
        for image, volume_mask in zip(images, masks)
        for f in range(image.frame_count)
    ]
    groups = [[i] for i in range(len(slices))] if read.per_slice else volumes_of(images)

    def compute(on: Device) -> list[Moments]:
        return volume_moments(
            [on.put(s) for s in slices], fractions, [on.put(m) for m in planes], groups
        )

    pooled, _ = on_device(device, inp.key, compute)
    stats = [(images[0].unit, m.means, m.stds, images[0].kind) for m in pooled]
    sources = [
        Source(
            str(root / rel), sha256_file(root / rel), im.shape, im.unit, im.channel_count, im.kind
        )
        for rel, im in zip(inp.files, images)
    ]
    return stats, sources


@dataclass(frozen=True)
class Measured:
    """One input's outcome: a result per file, and its statistics and sources when read."""

    index: int
    results: list[FileResult]
    statistics: list[Statistics]
    sources: list[Source]


@dataclass(frozen=True)
class MeasureInputs(OneByOne):
    """The task of fit-reference: the statistics of each input (payload :class:`Measured`)."""

    fractions: tuple[float, ...]
    read: ReadOptions = ReadOptions()
    """``mask_dir`` as the workers reach it."""
    device: str = "cpu"

    def one(
        self,
        item: Rooted,
        threads: int,
        report: Callable[[Any], None],
        stop: Stop | None = None,
    ) -> None:
        start = time.perf_counter()
        inp, shown = item.inp, item.shown
        try:
            stats, sources = input_statistics(
                item.root,
                inp,
                self.fractions,
                self.read,
                CPU if self.device == "cpu" else resolve(self.device),
            )
            sources = [replace(s, path=str(shown / rel)) for s, rel in zip(sources, inp.files)]
            status, reason, error = OK, None, None
        except Exception as exc:  # the input's failure, never the run's (outcome_of)
            stats, sources = [], []
            found = outcome_of(exc, inp, shown / inp.files[0])
            status, reason, error = found.status, found.reason, found.error
        seconds = (time.perf_counter() - start) / len(inp.files)
        results = item.results(status, reason, seconds, error)
        report(Measured(item.index, results, stats, sources))

    def lost(self, item: Rooted, reason: str) -> Measured:
        return Measured(item.index, item.lost(reason), [], [])


def reference_from_files(
    paths: Sequence[Path],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    read: ReadOptions = ReadOptions(),
    walk: WalkOptions = WalkOptions(),
    on_result: Callable[[FileResult], None] = lambda r: None,
    executor: Executor | None = None,
    manifest: Manifest | None = None,
) -> tuple[Reference, list[FileResult], int]:
    """Fit a reference from image files and folders (walked like inputs, with ``walk``'s
    globs) and the files a ``manifest`` lists; also return the problems and how many files
    no format takes were ignored.

    Images are grouped by (unit, channel count), one reference entry per group; a DICOM
    series or other volume counts as one image. The statistics of each input are taken by
    ``executor``'s workers (this process by default) and reduced here in input order, so
    the reference is the same wherever they ran. Files that cannot be read are reported
    through ``on_result`` and left out; the fit uses the rest. Raises :class:`UsageError`
    when no image remains, :class:`Interrupted` on SIGINT/SIGTERM.
    """
    executor = executor or LocalPool(1)
    items: list[Rooted] = []
    ignored = 0
    walk_problems: list[FileResult] = []
    for p in paths:
        if not p.exists():
            raise UsageError(f"reference input {p} does not exist")
        found = discover(p, include=walk.include, exclude=walk.exclude)
        ignored += len(found.ignored)
        walk_problems.extend(walk_results(found.root, found.unlisted, found.notes))
        root = executor.worker_path(found.root)
        inputs = plan_inputs(root, found.images, found.dicom)
        first = len(items)  # items are numbered over all inputs, in input order
        items.extend(Rooted(first + i, root, u, found.root) for i, u in enumerate(inputs))
    if manifest is not None:
        root = executor.worker_path(manifest.root)
        for folder in manifest.folders():
            walk_problems.extend(walk_results(manifest.root, folder.unlisted, ()))
            inputs = plan_inputs(root, folder.images, folder.dicom)
            first = len(items)
            items.extend(Rooted(first + i, root, u, manifest.root) for i, u in enumerate(inputs))
    for result in walk_problems:
        on_result(result)
    if not items:
        raise UsageError(
            "no PNG, JPEG, TIFF, NIfTI or DICOM images found in the reference inputs",
            hint=walk_problems[0].reason if walk_problems else None,
        )
    if read.mask_dir is not None:
        read = replace(read, mask_dir=executor.worker_path(read.mask_dir))
    readable = {item.root for item in items} | ({read.mask_dir} if read.mask_dir else set())
    executor.check(sorted(readable), [])
    task = MeasureInputs(tuple(fractions), read, executor.device)
    outcomes: list[Measured] = gather(executor, task, items, on_result)
    problems = walk_problems + [r for m in outcomes for r in m.results if r.status != OK]
    stats = [s for m in outcomes for s in m.statistics]
    sources = [s for m in outcomes for s in m.sources]
    if not stats:
        raise UsageError("none of the reference images could be read", hint=problems[0].reason)
    reference = Reference.fit(stats, fractions, sources, mask=MaskMode(read.mask).value)
    return reference, problems, ignored


def save_reference(reference: Reference, path: Path) -> None:
    write_text(path, reference.to_json())


def read_reference_json(path: Path) -> tuple[Reference, str]:
    """A reference JSON file, validated, and the SHA-256 of the file."""
    return Reference.read(path), sha256_file(path)


def merge_references(paths: Sequence[Path]) -> Reference:
    """One reference from several reference JSON files (:meth:`Reference.merge`); a file
    that cannot be read, or references whose fractions or masks differ, are usage errors."""
    references, digests = [], []
    for path in paths:
        if path.suffix.lower() != ".json" or not path.is_file():
            raise ReferenceFileError(f"reference {path}: not a reference JSON file")
        reference, digest = read_reference_json(path)
        references.append(reference)
        digests.append(digest)
    try:
        return Reference.merge(references, digests)
    except ValueError as exc:
        raise UsageError(f"cannot merge {len(paths)} references: {exc}") from exc


def load_reference(
    path: Path, fractions: tuple[float, ...] | None, read: ReadOptions = ReadOptions()
) -> tuple[Reference, dict[str, Any]]:
    """A reference from JSON, or fitted on the fly from one image (over every pixel, its
    slices pooled: ``read``'s pixel limit, slice axis and kind rules, matched against its
    name); plus its log record."""
    if path.is_dir():
        raise ReferenceFileError(
            f"reference {path} is a folder; pass a reference JSON written by "
            "svdharm fit-reference, or one image or volume to fit one from",
            hint=f"svdharm fit-reference {path} -o reference.json",
        )
    if not path.is_file():
        raise ReferenceFileError(f"reference {path} does not exist")
    if path.suffix.lower() == ".json":
        reference, digest = read_reference_json(path)
        if fractions is not None and fractions != reference.fractions:
            raise UsageError(
                f"--fractions {list(fractions)} differs from the reference's "
                f"{list(reference.fractions)}; omit --fractions or refit the reference"
            )
        kind = "json"
    else:
        fr = fractions or DEFAULT_FRACTIONS
        inp = Input((path.name,), path.name)
        try:
            whole = ReadOptions(read.max_pixels, slice_axis=read.slice_axis, kinds=read.kinds)
            stats, sources = input_statistics(path.parent, inp, fr, whole)
        except (ImageError, SkipImage) as exc:
            raise ReferenceFileError(f"reference image: {exc.message}") from exc
        reference = Reference.fit(stats, fr, sources)
        kind, digest = "image", sources[0].sha256  # hashed once, while it was read
    data = reference.to_dict()
    record = {
        "path": str(path),
        "kind": kind,
        "sha256": digest,
        "fractions": list(reference.fractions),
        "entries": data["entries"],
        "mask": reference.mask,
        "sources": data["sources"],
    }
    return reference, record
