"""Per-image band statistics, the work of ``fit-reference``, run wherever tasks run.

:func:`unit_statistics` reads one unit (an image, a series, a NIfTI or TIFF volume) and
returns its pooled per-component statistics (METHOD.md section 3a) and its sources.
:class:`MeasureUnits` is the picklable task that runs it on workers (local processes or a
Dask cluster): statistics travel back, never pixels; the client reduces them into a
:class:`~svdharm_cli.reference.Reference` in input order, so the reference does not depend
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

from svdharm_cli.device import CPU, Device, resolve
from svdharm_cli.executors import OneByOne
from svdharm_cli.executors.work import Rooted
from svdharm_cli.methods import Moments
from svdharm_cli.plan import Unit
from svdharm_cli.reference import Source
from svdharm_cli.units import read_unit, unit_masks, volumes_of
from svdharm_cli.volume import volume_moments
from svdharm_cli.worker import OK, FileResult, Stop, on_device, outcome_of

Statistics = tuple[str, np.ndarray, np.ndarray]
"""One image's ``(unit, means, stds)``."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def unit_statistics(
    root: Path,
    unit: Unit,
    fractions: Sequence[float],
    max_pixels: int,
    *,
    per_slice: bool = False,
    slice_axis: int = 2,
    mask: str = "none",
    mask_dir: Path | None = None,
    device: Device = CPU,
) -> tuple[list[Statistics], list[Source]]:
    """Per-image statistics ``(unit, means, stds)`` of one unit of work, and its sources.

    A volume counts as one image, its slices pooled (METHOD.md section 3a); each 3-D volume
    of a 4-D NIfTI counts as one; with ``per_slice`` every slice counts as one image.
    """
    images = read_unit(root, unit, max_pixels, slice_axis)
    masks = unit_masks(images, unit, root, mask, mask_dir, slice_axis)
    slices = [frame for image in images for frame in image.frames]
    planes = [
        None if volume_mask is None else volume_mask[f]
        for image, volume_mask in zip(images, masks)
        for f in range(image.frame_count)
    ]
    groups = [[i] for i in range(len(slices))] if per_slice else volumes_of(images)

    def compute(on: Device) -> list[Moments]:
        return volume_moments(
            [on.put(s) for s in slices], fractions, [on.put(m) for m in planes], groups
        )

    pooled, _ = on_device(device, unit.key, compute)
    stats = [(images[0].unit, m.means, m.stds) for m in pooled]
    sources = [
        Source(str(root / rel), sha256_file(root / rel), im.shape, im.unit, im.channel_count)
        for rel, im in zip(unit.files, images)
    ]
    return stats, sources


@dataclass(frozen=True)
class Measured:
    """One unit's outcome: a result per file, and its statistics and sources when read."""

    index: int
    results: list[FileResult]
    statistics: list[Statistics]
    sources: list[Source]


@dataclass(frozen=True)
class MeasureUnits(OneByOne):
    """The task of fit-reference: the statistics of each unit (payload :class:`Measured`)."""

    fractions: tuple[float, ...]
    max_pixels: int
    per_slice: bool = False
    slice_axis: int = 2
    mask: str = "none"
    mask_dir: Path | None = None
    device: str = "cpu"

    def one(
        self,
        item: Rooted,
        threads: int,
        report: Callable[[Any], None],
        stop: Stop | None = None,
    ) -> None:
        start = time.perf_counter()
        unit, shown = item.unit, item.shown
        try:
            stats, sources = unit_statistics(
                item.root,
                unit,
                self.fractions,
                self.max_pixels,
                per_slice=self.per_slice,
                slice_axis=self.slice_axis,
                mask=self.mask,
                mask_dir=self.mask_dir,
                device=CPU if self.device == "cpu" else resolve(self.device),
            )
            sources = [replace(s, path=str(shown / rel)) for s, rel in zip(sources, unit.files)]
            status, reason, error = OK, None, None
        except Exception as exc:  # the unit's failure, never the run's (outcome_of)
            stats, sources = [], []
            found = outcome_of(exc, unit, shown / unit.files[0])
            status, reason, error = found.status, found.reason, found.error
        seconds = (time.perf_counter() - start) / len(unit.files)
        results = item.results(status, reason, seconds, error)
        report(Measured(item.index, results, stats, sources))

    def lost(self, item: Rooted, reason: str) -> Measured:
        return Measured(item.index, item.lost(reason), [], [])
