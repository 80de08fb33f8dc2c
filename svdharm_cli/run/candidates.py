"""The workers' part of ``svdharm tune`` (:mod:`svdharm_cli.run.tuning`), run wherever tasks
run: :class:`FitCandidates` (a reference image decomposed once for every candidate's
statistics) and :class:`MeasureCandidates` (a sampled image decomposed once, harmonized with
every candidate from that decomposition, and each result measured as compare measures it, at
the yardstick cuts; the unharmonized image too). Features travel back, never pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from svdharm_cli.core.bands import Bands
from svdharm_cli.core.masks import MaskMode
from svdharm_cli.core.methods import Moments, method_map, pool, slice_moments
from svdharm_cli.core.reference import describe_kind
from svdharm_cli.core.spectrum import SliceSpectrum, decompose_once, harmonized, slice_spectrum
from svdharm_cli.evidence.compare import Sample, sample_from_moments, slice_features
from svdharm_cli.evidence.tuning import WASSERSTEIN_PIXELS, YARDSTICK, Candidate
from svdharm_cli.files.formats import NORMALIZED, Image
from svdharm_cli.files.inputs import input_masks, read_input, volumes_of
from svdharm_cli.run.executors import OneByOne
from svdharm_cli.run.options import ReadOptions
from svdharm_cli.run.results import OK, SKIPPED, FileResult, outcome_of
from svdharm_cli.run.sampling import Grouped

CACHE_BYTES = 512 * 2**20
"""An input's slice decompositions kept between the statistics and the harmonization (a
larger volume's further slices are decomposed again)."""
VALUES_BYTES = 256 * 2**20
"""Pixel values kept per input for the percentiles, all rows together (beyond: a seeded
share of each slice's, the same for every row)."""

Kind = tuple[str, str, int]
"""(kind, unit, channel count)."""


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
            [_harmonizing(m, self.references[k]) for m in statistics[k]]
            for k in range(len(self.candidates))
        ]
        volume_of = {f: v for v, volume in enumerate(slices.volumes) for f in volume}
        picks = _picks(slices, self.measured, len(self.candidates) + 1, self.seed, item.index)
        rows = [_Row(slices.kind[2]) for _ in range(len(self.candidates) + 1)]
        cut_sets = [c.fractions for c in self.candidates] + [YARDSTICK]
        for f, frame in enumerate(slices.frames):
            bands = kept.pop(f) if f in kept else decompose_once(frame, cut_sets)
            plane, pick = slices.planes[self.measured][f], picks[f]
            rows[0].add(*_input_features(bands, frame, plane), pick)
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


def _harmonizing(
    own: Moments, reference: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Harmonization's map (:func:`~svdharm_cli.core.methods.method_map`) of moments ``own``."""
    scales, offsets = method_map(*own.means.shape, reference=reference, own=own)
    assert offsets is not None  # harmonizing: offsets always
    return scales, offsets


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
    bands: list[Bands], frame: np.ndarray, plane: np.ndarray | None
) -> tuple[Moments, list[np.ndarray]]:
    """compare's features of one slice (:func:`~svdharm_cli.evidence.compare.slice_features`)
    at the yardstick, from its decomposition cut again there."""
    cut = [b.recut(YARDSTICK).with_mask(plane) for b in bands]
    return slice_moments(cut), [ch[plane] if plane is not None else ch.ravel() for ch in frame]


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
