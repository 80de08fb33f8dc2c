"""A run's options as frozen values, built once by the CLI, carried by the job, read by the
worker, and written to the run log's ``parameters`` from the same objects.

- :class:`ReadOptions`: what is read and how (pixel limit, slices, masks);
- :class:`DrawOptions`: what is drawn (copies, coefficient range, per channel, seed);
- :class:`~svdharm_cli.files.formats.WriteOptions`: how outputs are encoded;
- :class:`WalkOptions`: which inputs a run takes (globs, hidden files, what is already done,
  files still arriving);
- :class:`WorkerOptions`: where the work runs (local workers, a cluster, a device).

A new option is a field of one of these: the log records it by its field name
(:func:`logged`), with no list to keep by hand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from svdharm_cli.core.masks import MaskMode
from svdharm_cli.core.methods import DEFAULT_HIGH, DEFAULT_LOW, Method
from svdharm_cli.files.formats import DEFAULT_MAX_PIXELS, WriteOptions
from svdharm_cli.files.inputs import MaskFiles
from svdharm_cli.files.kinds import KindRule
from svdharm_cli.files.manifest import Manifest


def logged(options: Any) -> dict[str, Any]:
    """The fields of a frozen options value as the run log writes them: paths as strings,
    tuples as lists, enums as their values, in field order."""
    return {
        f.name: _plain(getattr(options, f.name))
        for f in dataclasses.fields(options)
        if f.metadata.get("logged", True)
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ReadOptions:
    """What is read, and how: the same for every input of a run."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    """Refuse images with more pixels than this, before decoding."""
    per_slice: bool = False
    """Each slice's statistics on its own instead of pooled over its volume."""
    slice_axis: int = 2
    """The voxel axis NIfTI volumes are cut into slices along."""
    mask: MaskMode = MaskMode.NONE
    mask_dir: Path | None = None
    """Where mask files mirror the inputs (``mask`` is then :attr:`MaskMode.DIR`)."""
    kinds: tuple[KindRule, ...] = ()
    """The user's kind rules (``--kind NAME=GLOB``), first match first."""
    listed_masks: MaskFiles | None = field(default=None, metadata={"logged": False})
    """Mask files listed per input (a manifest's ``mask`` column), instead of ``mask_dir``;
    not logged (the log names the manifest, and the provenance records each mask file)."""

    @property
    def mask_files(self) -> MaskFiles | None:
        """Where the mask files are, when masks come from files."""
        if self.mask != MaskMode.DIR:
            return None
        return self.listed_masks or (None if self.mask_dir is None else MaskFiles(self.mask_dir))


@dataclass(frozen=True)
class DrawOptions:
    """What de-harmonization draws (METHOD.md sections 6-7)."""

    copies: int = 1
    low: float = DEFAULT_LOW
    high: float = DEFAULT_HIGH
    per_channel: bool = False
    seed: int | None = None
    """The base seed: the user's, or one drawn for the run (harmonize: None)."""

    def parameters(self, random: bool) -> dict[str, Any]:
        """As logged: harmonize draws nothing (one output, no range). The seed is logged
        beside the parameters, with whether it was given."""
        return {
            "copies": self.copies if random else 1,
            "low": self.low if random else None,
            "high": self.high if random else None,
            "per_channel": self.per_channel,
        }


@dataclass(frozen=True)
class WalkOptions:
    """Which files under IN a run takes."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    skip_existing: bool = False
    """Leave out inputs whose outputs are up to date (:mod:`svdharm_cli.run.resume`)."""
    settle: float = 0.0
    """Leave for the next run files modified less than this many seconds ago."""


@dataclass(frozen=True)
class WorkerOptions:
    """Where the work runs: ``workers`` local processes, or a Dask cluster's workers; the
    numbers on the CPU or on a device."""

    workers: int = 1
    scheduler: str | None = None
    scheduler_file: Path | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class RunRequest:
    """What the user asked of harmonize or augment, as the CLI composed it."""

    command: str
    inp: Path
    out: Path
    method: Method
    reference: Path | None = None
    fractions: tuple[float, ...] | None = None
    """None: the reference's, else the default."""
    read: ReadOptions = field(default_factory=ReadOptions)
    draw: DrawOptions = field(default_factory=DrawOptions)
    write: WriteOptions = field(default_factory=WriteOptions)
    walk: WalkOptions = field(default_factory=WalkOptions)
    where: WorkerOptions = field(default_factory=WorkerOptions)
    log: Path | None = None
    argv: tuple[str, ...] = ()
    manifest: Manifest | None = None
    """The table of inputs (``--manifest``), when a table gives them; ``inp`` is then its
    root."""

    @property
    def random(self) -> bool:
        """Whether the method draws coefficients (augment)."""
        return self.method is not Method.HARMONIZE

    def parameters(self, fractions: tuple[float, ...], remote: bool) -> dict[str, Any]:
        """The run log's ``parameters``: the method, the fractions used, and every option
        value (the workers only for a local run: a cluster's are in ``executor``)."""
        return {
            "method": self.method.value,
            "fractions": list(fractions),
            **self.draw.parameters(self.random),
            "workers": None if remote else self.where.workers,
            **logged(self.walk),
            **logged(self.write),
            **logged(self.read),
            "manifest": None if self.manifest is None else str(self.manifest.source),
        }
