"""An input read and checked, ready for the worker: the options every worker gets
(:class:`JobConfig`), and :func:`prepare`, which reads an input's images and masks, checks
its outputs' places and draws its copies' coefficients before anything is computed."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli.core.device import CPU, Device, resolve
from svdharm_cli.core.methods import Method, draw_coefficients, output_seed
from svdharm_cli.core.reference import Entry, Reference
from svdharm_cli.errors import ImageError
from svdharm_cli.files.formats import Image, WriteOptions
from svdharm_cli.files.inputs import entry_for, input_masks, read_input
from svdharm_cli.files.plan import Input, output_paths
from svdharm_cli.files.provenance import Identity, identity
from svdharm_cli.run.options import DrawOptions, ReadOptions
from svdharm_cli.run.results import OK, FileResult, OutputRecord, Report, Status, outcome_of


@dataclass(frozen=True)
class JobConfig:
    """Everything a worker needs; pickled once per worker process."""

    method: Method
    fractions: tuple[float, ...]
    in_root: Path
    out_root: Path
    reference: Reference | None = None
    read: ReadOptions = field(default_factory=ReadOptions)
    """What is read (``mask_dir`` as the workers reach it)."""
    draw: DrawOptions = field(default_factory=DrawOptions)
    """What is drawn (``seed`` the run's, given or drawn)."""
    write: WriteOptions = field(default_factory=WriteOptions)
    provenance: str = ""
    label: str = ""
    device: str = "cpu"
    """``cpu`` (NumPy) or ``cuda:N``: where the input's numbers are computed
    (:mod:`svdharm_cli.core.device`); files are read and written on the CPU either way."""

    @property
    def on(self) -> Device:
        """The :class:`Device` of :attr:`device`."""
        return CPU if self.device == "cpu" else resolve(self.device)


STACK_PIXELS = 64 * 64
"""Single-image inputs of at most this many pixels per channel (and no mask) are
transformed together with the other small images of their chunk
(:func:`~svdharm_cli.core.bands.components_stack`): for them, one call per channel costs
more than the arithmetic. Whether an image is stacked depends only on the image, so
outputs do not depend on how files were chunked."""


@dataclass
class Prepared:
    """An input read and checked, ready to be transformed and written."""

    inp: Input
    planned: list[list[str]]
    images: list[Image]
    masks: list[np.ndarray | None]
    entry: Entry | None
    start: float
    seeds: list[int | None] = field(default_factory=list)
    coefficients: list[np.ndarray | None] = field(default_factory=list)
    """Per copy: the output's seed and coefficients (None for harmonize)."""
    fallback: str | None = None
    identities: list[Identity | None] = field(default_factory=list)
    mask_identities: list[Identity | None] = field(default_factory=list)
    """Per file: what was read (:func:`~svdharm_cli.files.provenance.identity`), taken before."""

    @property
    def foreground(self) -> list[float | None]:
        return [None if m is None else round(float(m.mean()), 6) for m in self.masks]

    def finals(self, config: JobConfig) -> list[Path]:
        """Final output paths, copy-major: copy j's are ``[j * files : (j + 1) * files]``."""
        copies = len(self.planned[0])
        return [config.out_root / outs[j] for j in range(copies) for outs in self.planned]

    def results(
        self,
        status: Status,
        reason: str | None = None,
        outputs: Sequence[Sequence[OutputRecord]] = (),
        foreground: Sequence[float | None] | None = None,
        error: dict[str, Any] | None = None,
    ) -> list[FileResult]:
        files = self.inp.files
        share = (time.perf_counter() - self.start) / len(files)
        per_file = outputs or [()] * len(files)
        fg = foreground or [None] * len(files)
        ok = status == OK
        idents = self.identities if ok and self.identities else [None] * len(files)
        masks = self.mask_identities if ok and self.mask_identities else [None] * len(files)
        return [
            FileResult(
                rel,
                status,
                reason,
                tuple(out),
                share,
                self.inp.volume,
                f,
                error,
                self.fallback,
                ident,
                mask_ident,
                kind=self.images[0].kind if self.images else "",
            )
            for rel, out, f, ident, mask_ident in zip(files, per_file, fg, idents, masks)
        ]

    def failure(
        self, exc: Exception, config: JobConfig, foreground: Sequence[float | None] = ()
    ) -> list[FileResult]:
        """The results of an input that raised ``exc`` (:func:`outcome_of`)."""
        found = outcome_of(exc, self.inp, config.in_root / self.inp.files[0])
        return self.results(
            found.status, found.reason, foreground=foreground or None, error=found.error
        )

    @property
    def stackable(self) -> bool:
        image = self.images[0]
        _, _, h, w = image.frames.shape
        return (
            len(self.images) == 1
            and image.frame_count == 1
            and image.volumes == 1
            and self.masks[0] is None
            and h * w <= STACK_PIXELS
        )


def prepare(inp: Input, config: JobConfig, tell: Report) -> Prepared | None:
    """Read and check ``inp``; None when its outcome is already told (done before, or
    unreadable)."""
    start = time.perf_counter()
    planned = [
        output_paths(rel, config.method is Method.HARMONIZE, config.draw.copies)
        for rel in inp.files
    ]
    prepared = Prepared(inp, planned, [], [], None, start)
    first = config.in_root / inp.files[0]
    read = config.read
    try:
        for outs in planned:
            for out_rel in outs:
                _check_inside(config.out_root, out_rel)
        # What is read, before it is read: the provenance record's identity of each file.
        prepared.identities = [identity(config.in_root / rel) for rel in inp.files]
        files = read.mask_files
        if files is not None:
            prepared.mask_identities = [
                None if (path := files(rel)) is None else identity(path) for rel in inp.files
            ]
        prepared.images = read_input(
            config.in_root, inp, read.max_pixels, read.slice_axis, config.reference, read.kinds
        )
        prepared.entry = entry_for(config.reference, prepared.images[0].info, first)
        prepared.masks = input_masks(
            prepared.images, inp, config.in_root, read.mask, read.mask_files, read.slice_axis
        )
        random = config.method is not Method.HARMONIZE
        for j in range(len(planned[0])):
            seed = output_seed(_require(config.draw.seed), inp.key, j) if random else None
            prepared.seeds.append(seed)
            channels = prepared.images[0].channel_count
            prepared.coefficients.append(_coefficients(config, seed, channels))
    except Exception as exc:
        tell(prepared.failure(exc, config))
        return None
    return prepared


def _require(seed: int | None) -> int:
    assert seed is not None, "random methods need a base seed"
    return seed


def _coefficients(config: JobConfig, seed: int | None, channels: int) -> np.ndarray | None:
    """The coefficients of one output (shared by its slices), or None for harmonize."""
    if seed is None:
        return None
    draw = config.draw
    return draw_coefficients(
        seed, channels, len(config.fractions) + 1, draw.low, draw.high, per_channel=draw.per_channel
    )


def _check_inside(root: Path, rel: str) -> None:
    """Refuse an output (``rel``, POSIX, under OUT) that a symbolic link inside OUT would
    send elsewhere: no folder between OUT and the output may be a link (one ``lstat`` per
    folder level, not a full path resolution per file)."""
    folder = root
    for part in rel.split("/")[:-1]:
        folder = folder / part
        if os.path.islink(folder):
            real = Path(os.path.realpath(folder))
            real_root = Path(os.path.realpath(root))
            if real != real_root and real_root not in real.parents:
                raise ImageError(
                    f"{root / rel}: would be written outside the output folder ({real})"
                )
