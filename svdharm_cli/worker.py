"""One unit of work in, one frozen result per input file out (pure of pools and clusters).

:func:`process_unit` takes a :class:`~svdharm_cli.plan.Unit` (a file, or the files of a
DICOM series) and a frozen :class:`JobConfig`. It never raises for a bad file: the outcome
(``ok`` / ``skipped`` / ``failed`` with a message naming the file) is a value that goes
straight into the run log.

A unit is a volume (METHOD.md section 3a). With a reference, and unless ``per_slice``, two
steps run: every slice is decomposed and its moments taken, the moments are pooled over the
volume (each 3-D volume of a 4-D NIfTI on its own), and then the same per-component map is
applied to every slice. Decompositions are kept between the steps while they fit in
:data:`CACHE_BYTES` (a 200-slice 512 x 512 series needs about 400 MiB); slices beyond that are
decomposed again, so memory stays bounded whatever the volume's size. Slices are spread over
``threads`` threads (NumPy's linear algebra releases the GIL), each using one BLAS thread.

A task's chunk goes through :func:`process_units`: small single images (up to
:data:`STACK_PIXELS` pixels per channel, no mask) are decomposed as one stack, since for
them one call per channel costs more than the arithmetic (10,000 28 x 28 PNGs: 0.42 ms per
file against 0.6 ms one by one, in one process); every image's result is the one it gets
alone, so outputs never depend on how files were chunked.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from svdharm_cli.atomic import Staged, staged
from svdharm_cli.bands import components_stack
from svdharm_cli.device import BOUND, CPU, LOCK, Device, resolve, solver_errors
from svdharm_cli.errors import ImageError, SkipImage, SvdharmError, exception_name, exception_record
from svdharm_cli.formats import (
    DEFAULT_MAX_PIXELS,
    RAW,
    Image,
    OutputContext,
    WriteOptions,
    write_images,
)
from svdharm_cli.methods import (
    DEFAULT_HIGH,
    DEFAULT_LOW,
    Method,
    draw_coefficients,
    output_seed,
    transform_stack,
)
from svdharm_cli.plan import Unit, output_paths
from svdharm_cli.provenance import Identity, identity
from svdharm_cli.reference import Entry, Reference
from svdharm_cli.safety import signals_deferred
from svdharm_cli.units import entry_for, read_unit, unit_masks, volumes_of
from svdharm_cli.volume import CACHE_BYTES, Map, transform_volume

OK, SKIPPED, FAILED = "ok", "skipped", "failed"
ALREADY_DONE = "outputs are up to date (--skip-existing)"
"""The reason of a file skipped because an earlier run made its outputs from the same
input, reference and parameters (:mod:`svdharm_cli.provenance`)."""

T = TypeVar("T")


@dataclass(frozen=True)
class JobConfig:
    """Everything a worker needs; pickled once per worker process."""

    method: Method
    fractions: tuple[float, ...]
    in_root: Path
    out_root: Path
    reference: Reference | None = None
    copies: int = 1
    low: float = DEFAULT_LOW
    high: float = DEFAULT_HIGH
    per_channel: bool = False
    seed: int | None = None
    write: WriteOptions = field(default_factory=WriteOptions)
    max_pixels: int = DEFAULT_MAX_PIXELS
    skip_existing: bool = False
    provenance: str = ""
    label: str = ""
    per_slice: bool = False
    slice_axis: int = 2
    mask: str = "none"
    mask_dir: Path | None = None
    device: str = "cpu"
    """``cpu`` (NumPy) or ``cuda:N``: where the unit's numbers are computed
    (:mod:`svdharm_cli.device`); files are read and written on the CPU either way."""


@dataclass(frozen=True)
class OutputRecord:
    """One written file: its path relative to OUT, and what made it."""

    path: str
    seed: int | None = None
    coefficients: list[list[float | None]] | None = None


@dataclass(frozen=True)
class FileResult:
    """The outcome for one input file; ``volume`` names its series, if it belongs to one."""

    path: str
    status: str
    reason: str | None = None
    outputs: tuple[OutputRecord, ...] = ()
    seconds: float = 0.0
    volume: str | None = None
    foreground: float | None = None
    error: dict[str, Any] | None = None
    """The exception behind a failure (:func:`~svdharm_cli.errors.exception_record`: type
    and frames, no message), when one was raised; the run log keeps it."""
    fallback: str | None = None
    """Why a unit meant for the device was computed on the CPU, when it was."""
    identity: Identity | None = None
    """The input file's size, modification time and SHA-256 as it was read (an OK
    result; None when it changed while it was read): what the provenance record keeps."""
    mask_identity: Identity | None = None
    """The same for its mask file under ``--mask-dir``."""
    redone: str | None = None
    """Why ``--skip-existing`` made this file again (set by the run, not the worker)."""


def walk_results(
    root: Path, unlisted: Sequence[tuple[str, str]], notes: Sequence[str]
) -> list[FileResult]:
    """What the walk found besides images, as records: a folder that could not be listed
    fails (the run exits 1; its files were never seen), and what was left out for what it
    is (a FIFO, another run's output folder) is a skip whose reason says so."""
    failed = [FileResult(rel, FAILED, f"{root / rel}: {why}") for rel, why in unlisted]
    skipped = [FileResult(n.split(": ", 1)[0], SKIPPED, n) for n in notes]
    return failed + skipped


def process_file(rel: str, config: JobConfig) -> FileResult:
    """Process one file as a unit of its own."""
    return process_unit(Unit((rel,), rel), config)[0]


Report = Callable[[list[FileResult]], None]
Stop = Callable[[], bool]


class Stopped(Exception):
    """The run was asked to stop (a cluster run's client got SIGINT or SIGTERM): the unit
    is abandoned before its outputs reach their final names."""


STACK_PIXELS = 64 * 64
"""Single-image units of at most this many pixels per channel (and no mask) are
transformed together with the other small images of their chunk
(:func:`~svdharm_cli.bands.components_stack`): for them, one call per channel costs more
than the arithmetic. Whether an image is stacked depends only on the image, so outputs do
not depend on how files were chunked."""

INTERNAL = "internal error"
"""How a failure that no bad input explains (a bug in svdharm) begins its message."""


@dataclass(frozen=True)
class Outcome:
    """What an exception raised while processing a unit means for its files."""

    status: str
    reason: str
    error: dict[str, Any] | None = None


def outcome_of(exc: Exception, unit: Unit, first: Path) -> Outcome:
    """The unit's outcome when processing it raised ``exc`` (this is the worker's boundary:
    every exception becomes the unit's result, none ends the batch).

    A skip or a bad file (:class:`SkipImage`, :class:`ImageError`, raised by the formats
    or the checks) keeps its message; a decomposition that did not converge, memory
    exhaustion and OS errors (writing outputs) are named; anything else is a bug in
    svdharm's own code and says so (``internal error``), its type and frames kept in the
    log record's ``error`` so that it stays visible without stopping the batch.
    """
    error = None if isinstance(exc, SvdharmError) else exception_record(exc)
    if isinstance(exc, SkipImage):
        return Outcome(SKIPPED, _in_volume(exc.message, unit))
    if isinstance(exc, ImageError):
        return Outcome(FAILED, _in_volume(exc.message, unit), exc.error)
    if isinstance(exc, SvdharmError):
        return Outcome(FAILED, _in_volume(exc.message, unit))
    if isinstance(exc, np.linalg.LinAlgError):
        message = f"{first}: the decomposition did not converge"
    elif isinstance(exc, MemoryError):
        message = f"{first}: not enough memory to process it"
    elif isinstance(exc, OSError):
        where = exc.filename2 or exc.filename or first  # a failed rename: its destination
        message = f"{where}: {exc.strerror or exception_name(exc)}"
    else:
        message = (
            f"{first}: {INTERNAL} ({exception_name(exc)}), a bug in svdharm; the run log's "
            "record of this file says where it was raised"
        )
    return Outcome(FAILED, _in_volume(message, unit), error)


@dataclass
class _Prepared:
    """A unit read and checked, ready to be transformed and written."""

    unit: Unit
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
    """Per file: what was read (:func:`~svdharm_cli.provenance.identity`), taken before."""

    @property
    def foreground(self) -> list[float | None]:
        return [None if m is None else round(float(m.mean()), 6) for m in self.masks]

    def finals(self, config: JobConfig) -> list[Path]:
        """Final output paths, copy-major: copy j's are ``[j * files : (j + 1) * files]``."""
        copies = len(self.planned[0])
        return [config.out_root / outs[j] for j in range(copies) for outs in self.planned]

    def results(
        self,
        status: str,
        reason: str | None = None,
        outputs: Sequence[Sequence[OutputRecord]] = (),
        foreground: Sequence[float | None] | None = None,
        error: dict[str, Any] | None = None,
    ) -> list[FileResult]:
        files = self.unit.files
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
                self.unit.volume,
                f,
                error,
                self.fallback,
                ident,
                mask_ident,
            )
            for rel, out, f, ident, mask_ident in zip(files, per_file, fg, idents, masks)
        ]

    def failure(
        self, exc: Exception, config: JobConfig, foreground: Sequence[float | None] = ()
    ) -> list[FileResult]:
        """The results of a unit that raised ``exc`` (:func:`outcome_of`)."""
        found = outcome_of(exc, self.unit, config.in_root / self.unit.files[0])
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


def process_unit(
    unit: Unit,
    config: JobConfig,
    threads: int = 1,
    report: Report | None = None,
    stop: Stop | None = None,
) -> list[FileResult]:
    """Read, transform and write one unit; every expected problem becomes its results.

    ``report`` receives the results as soon as they are final. For a unit that wrote
    files it is called right after the outputs are renamed into place, with SIGINT and
    SIGTERM held back across both, so that no stop can leave an output on disk that was
    not reported (the run log is built from what was reported).

    ``stop`` is asked between slices and before the outputs are renamed; once it says
    yes the unit is abandoned (temporaries removed) and the result is empty: the unit was
    not processed. Local pools end their workers instead; a cluster's workers cannot be
    ended from the client, so its tasks are asked to stop this way.
    """
    return process_units([unit], config, threads, report, stop)


def process_units(
    units: Sequence[Unit],
    config: JobConfig,
    threads: int = 1,
    report: Report | None = None,
    stop: Stop | None = None,
) -> list[FileResult]:
    """:func:`process_unit` for each of ``units`` (a task's chunk); returns all results.

    Small single images (:data:`STACK_PIXELS`) are read first and transformed together at
    the end, then written and renamed into place together and reported in one call (still
    only after their renames, signals held back across both). ``stop`` is asked before
    each unit.
    """
    results: list[FileResult] = []
    stacked: list[_Prepared] = []

    def tell(done: list[FileResult]) -> None:
        results.extend(done)
        if report is not None and done:
            with signals_deferred():  # never die holding the result queue's lock
                report(done)

    for unit in units:
        if stop is not None and stop():
            return results
        prepared = _prepare(unit, config, tell)
        if prepared is None:
            continue
        if prepared.stackable:
            stacked.append(prepared)
        else:
            _transform_unit(prepared, config, threads, tell, stop)
    if stacked:
        _transform_stacked(stacked, config, tell, stop)
    return results


def _prepare(unit: Unit, config: JobConfig, tell: Report) -> _Prepared | None:
    """Read and check ``unit``; None when its outcome is already told (done before, or
    unreadable)."""
    start = time.perf_counter()
    planned = [
        output_paths(rel, config.method is Method.HARMONIZE, config.copies) for rel in unit.files
    ]
    prepared = _Prepared(unit, planned, [], [], None, start)
    first = config.in_root / unit.files[0]
    if config.skip_existing and all((config.out_root / o).exists() for p in planned for o in p):
        tell(prepared.results(SKIPPED, f"{first}: {ALREADY_DONE}"))
        return None
    try:
        for outs in planned:
            for out_rel in outs:
                _check_inside(config.out_root, out_rel)
        # What is read, before it is read: the provenance record's identity of each file.
        prepared.identities = [identity(config.in_root / rel) for rel in unit.files]
        if config.mask == "dir" and config.mask_dir is not None:
            prepared.mask_identities = [identity(config.mask_dir / rel) for rel in unit.files]
        prepared.images = read_unit(
            config.in_root, unit, config.max_pixels, config.slice_axis, config.reference
        )
        prepared.entry = entry_for(config.reference, prepared.images[0].info, first)
        prepared.masks = unit_masks(
            prepared.images, unit, config.in_root, config.mask, config.mask_dir, config.slice_axis
        )
        random = config.method is not Method.HARMONIZE
        for j in range(len(planned[0])):
            seed = output_seed(_require(config.seed), unit.key, j) if random else None
            prepared.seeds.append(seed)
            channels = prepared.images[0].channel_count
            prepared.coefficients.append(_coefficients(config, seed, channels))
    except Exception as exc:
        tell(prepared.failure(exc, config))
        return None
    return prepared


def _transform_unit(
    prepared: _Prepared, config: JobConfig, threads: int, tell: Report, stop: Stop | None
) -> None:
    """Transform and write one unit (a volume's slices over ``threads`` threads), rename
    its outputs into place and tell its results."""
    foreground = prepared.foreground
    try:
        with staged(prepared.finals(config)) as stage:
            outputs = _transform_and_write(prepared, config, threads, stage, stop)
            if stop is not None and stop():
                raise Stopped
            done = prepared.results(OK, None, outputs, foreground)
            with signals_deferred():
                try:
                    stage.commit()
                except OSError:
                    stage.undo()
                    raise
                tell(done)
    except Stopped:
        return
    except Exception as exc:
        tell(prepared.failure(exc, config, foreground))


def _transform_stacked(
    group: list[_Prepared], config: JobConfig, tell: Report, stop: Stop | None
) -> None:
    """Transform small single images together (one stack per size), write each to its
    temporaries, then rename them all into place and tell their results in one call."""
    by_size: dict[tuple[int, ...], list[_Prepared]] = {}
    for prepared in group:
        by_size.setdefault(prepared.images[0].frames.shape[2:], []).append(prepared)
    stages: list[Staged] = []
    written: list[tuple[_Prepared, Staged, list[list[OutputRecord]]]] = []
    done: list[FileResult] = []
    try:
        for same in by_size.values():
            try:
                values = _stacked_values(same, config)
            except Exception:  # each image alone, so that one cannot fail the others
                for prepared in same:
                    _transform_unit(prepared, config, 1, tell, stop)
                continue
            for prepared, news in zip(same, values):
                stage = Staged(prepared.finals(config))
                stages.append(stage)
                try:
                    outputs = _write_copies(prepared, config, news, stage)
                except Exception as exc:
                    stage.discard()
                    done.extend(prepared.failure(exc, config))
                else:
                    written.append((prepared, stage, outputs))
        if stop is not None and stop():
            tell(done)
            return
        with signals_deferred():
            for prepared, stage, outputs in written:
                try:
                    stage.commit()
                except OSError as exc:
                    stage.undo()
                    done.extend(prepared.failure(exc, config))
                else:
                    done.extend(prepared.results(OK, None, outputs, [None]))
            tell(done)
    finally:  # what was not renamed into place (a stop, an error) leaves no temporary
        for stage in stages:
            stage.discard()


def _stacked_values(same: list[_Prepared], config: JobConfig) -> list[list[list[np.ndarray]]]:
    """New values of single images of one size, ``[image][copy][0]`` shaped like the image's
    frames, from one :func:`~svdharm_cli.bands.components_stack` over all their channels."""
    images = [prepared.images[0] for prepared in same]
    channels = np.concatenate([image.frames[0] for image in images])
    reference = None
    if config.reference is not None:
        means, stds = [], []
        for prepared in same:
            entry = prepared.entry
            assert entry is not None, "with a reference, every image read has an entry"
            means.append(entry.mean)
            stds.append(entry.std)
        reference = (np.concatenate(means), np.concatenate(stds))
    copies = len(same[0].planned[0])

    def compute(device: Device) -> list[np.ndarray]:
        components = components_stack(device.put(channels), config.fractions)
        news = []
        for j in range(copies):
            rows = [row for prepared in same if (row := prepared.coefficients[j]) is not None]
            coefficients = np.concatenate(rows) if rows else None
            new = transform_stack(components, reference=reference, coefficients=coefficients)
            news.append(device.host(new))
        return news

    key = same[0].unit.key
    news, fallback = on_device(config_device(config), key, compute)
    values: list[list[list[np.ndarray]]] = [[] for _ in same]
    for prepared in same:
        prepared.fallback = fallback
    for new in news:
        at = 0
        for k, image in enumerate(images):
            c = image.channel_count
            dtype = np.float64 if image.unit == RAW else np.float32
            values[k].append([new[at : at + c][None].astype(dtype)])
            at += c
    return values


T2 = TypeVar("T2")


def config_device(config: JobConfig) -> Device:
    return CPU if config.device == "cpu" else resolve(config.device)


def on_device(device: Device, key: str, compute: Callable[[Device], T2]) -> tuple[T2, str | None]:
    """``compute(device)``; on the CPU instead when the device's solver fails (the second
    value then says why). The device computes one unit at a time (:data:`device.LOCK`)."""
    if device.is_cpu:
        return compute(device), None
    try:
        with LOCK:
            device.check_failure(key)
            return compute(device), None
    except solver_errors() as exc:
        why = f"the device's solver failed ({exception_name(exc)}); computed on the CPU"
        return compute(CPU), why


def _transform_and_write(
    prepared: _Prepared,
    config: JobConfig,
    threads: int,
    stage: Staged,
    stop: Stop | None = None,
) -> list[list[OutputRecord]]:
    """Transform every slice and write every copy to the stage's temporaries; return the
    records of each file's outputs. Raises :class:`Stopped` when ``stop`` says so."""
    news = unit_values(prepared, config, threads, stop)
    return _write_copies(prepared, config, news, stage)


def unit_values(
    prepared: _Prepared,
    config: JobConfig,
    threads: int = 1,
    stop: Stop | None = None,
    device: Device | None = None,
) -> list[list[np.ndarray]]:
    """The new values of a prepared unit, ``[copy][file]`` shaped like each file's frames
    (float32, float64 for raw units), computed on ``device`` (the config's by default).
    Raises :class:`Stopped` when ``stop`` says so."""
    images, masks, entry = prepared.images, prepared.masks, prepared.entry
    where = [(k, f) for k, image in enumerate(images) for f in range(image.frame_count)]
    planes = [images[k].frames[f] for k, f in where]
    planes_masks = [_plane(masks[k], f) for k, f in where]
    news = [
        [np.empty(im.frames.shape, np.float64 if im.unit == RAW else np.float32) for im in images]
        for _ in prepared.coefficients
    ]

    def check() -> None:
        if stop is not None and stop():
            raise Stopped

    def compute(on: Device) -> None:
        def store(j: int, i: int, values: Any) -> None:
            k, f = where[i]
            news[j][k][f] = on.host(values)

        with _slice_threads(threads if on.is_cpu else 1, len(planes)) as run:
            transform_volume(
                [on.put(p) for p in planes],
                config.fractions,
                reference=None if entry is None else (entry.mean, entry.std),
                coefficients=prepared.coefficients,
                masks=[on.put(m) for m in planes_masks],
                groups=volumes_of(images),
                per_slice=config.per_slice,
                run=run,
                check=check,
                cache_bytes=CACHE_BYTES,
                sink=store,
            )

    _, prepared.fallback = on_device(device or config_device(config), prepared.unit.key, compute)
    return news


def device_check(units: Sequence[Unit], config: JobConfig, tries: int = 5) -> dict[str, Any] | None:
    """The safety net of a device run: the first unit that reads (of the first ``tries``)
    computed on the device and on the CPU path, before anything is written. Returns the
    largest difference, in normalized units (relative to the input's value range for HU
    and raw data), against :data:`svdharm_cli.device.BOUND`; None when no unit could be
    computed both ways (each unit then still falls back or fails on its own)."""
    device = config_device(config)
    on_cpu = replace(config, device="cpu")
    for unit in units[:tries]:
        prepared = _prepare(unit, replace(config, skip_existing=False), lambda done: None)
        if prepared is None:
            continue
        try:
            if prepared.stackable:
                ours = [copy[0] for copy in _stacked_values([prepared], config)[0]]
                theirs = [copy[0] for copy in _stacked_values([prepared], on_cpu)[0]]
            else:
                ours = [v for copy in unit_values(prepared, config, device=device) for v in copy]
                theirs = [v for copy in unit_values(prepared, on_cpu) for v in copy]
        except Exception:
            continue
        if prepared.fallback is not None:
            continue  # the device did not compute it: nothing to compare
        image = prepared.images[0]
        if image.unit in ("normalized",):
            scale, what = 1.0, "normalized units"
        else:
            values = np.concatenate([im.frames.ravel() for im in prepared.images])
            scale, what = float(np.ptp(values)) or 1.0, f"relative to the {image.unit} range"
        worst = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(ours, theirs))
        return {
            "unit": str(config.in_root / unit.files[0]) if unit.volume is None else unit.volume,
            "largest_difference": worst / scale,
            "bound": BOUND,
            "scale": what,
            "passed": worst / scale <= BOUND,
        }
    return None


def _write_copies(
    prepared: _Prepared, config: JobConfig, news: list[list[np.ndarray]], stage: Staged
) -> list[list[OutputRecord]]:
    """Write ``news[j][k]`` (copy j of the unit's file k) to the stage's temporaries;
    return the records of each file's outputs."""
    unit, files = prepared.unit, len(prepared.unit.files)
    outputs: list[list[OutputRecord]] = [[] for _ in unit.files]
    for j, new in enumerate(news):
        context = OutputContext(
            description=config.provenance,
            instance_key=f"{config.provenance}|{unit.key}|{j}",
            series_key=f"{config.provenance}|{j}",
            label=config.label,
            copy=j,
        )
        write_images(
            prepared.images, new, stage.temps[j * files : (j + 1) * files], config.write, context
        )
        logged = _logged(prepared.coefficients[j], config.method)
        for k in range(files):
            outputs[k].append(OutputRecord(prepared.planned[k][j], prepared.seeds[j], logged))
    return outputs


def _plane(mask: np.ndarray | None, f: int) -> np.ndarray | None:
    return None if mask is None else mask[f]


@contextlib.contextmanager
def _slice_threads(threads: int, count: int) -> Iterator[Map]:
    """Yield ``run(fn, indices)``: a map over slices, threaded when that helps."""
    if threads <= 1 or count <= 1:
        yield lambda fn, items: [fn(i) for i in items]
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool_:
        yield lambda fn, items: list(pool_.map(fn, items))


def _in_volume(message: str, unit: Unit) -> str:
    if unit.volume is None:
        return message
    return f"{message} ({unit.volume}: none of its {len(unit.files)} files was written)"


def _require(seed: int | None) -> int:
    assert seed is not None, "random methods need a base seed"
    return seed


def _coefficients(config: JobConfig, seed: int | None, channels: int) -> np.ndarray | None:
    """The coefficients of one output (shared by its slices), or None for harmonize."""
    if seed is None:
        return None
    return draw_coefficients(
        seed,
        channels,
        len(config.fractions) + 1,
        config.low,
        config.high,
        per_channel=config.per_channel,
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


def _logged(coefficients: np.ndarray | None, method: Method) -> list[list[float | None]] | None:
    """Coefficients as logged: one row per channel; the base's is null when it was matched."""
    if coefficients is None:
        return None
    rows: list[list[float | None]] = [[float(v) for v in row] for row in coefficients]
    if method is Method.HARMONIZE_DEHARMONIZE:
        for row in rows:
            row[0] = None
    return rows
