"""One input in, one frozen result per input file out (pure of pools and clusters).

:func:`process_input` takes a :class:`~svdharm_cli.files.plan.Input` (a file, or the files of a
DICOM series) and a frozen :class:`JobConfig`. It never raises for a bad file: the outcome
(``ok`` / ``skipped`` / ``failed`` with a message naming the file) is a value that goes
straight into the run log.

An input is a volume (METHOD.md section 3a). With a reference, and unless ``per_slice``, two
steps run: every slice is decomposed and its moments taken, the moments are pooled over the
volume (each 3-D volume of a 4-D NIfTI on its own), and then the same per-component map is
applied to every slice. Decompositions are kept between the steps while they fit in
:data:`CACHE_BYTES` (a 200-slice 512 x 512 series needs about 400 MiB); slices beyond that are
decomposed again, so memory stays bounded whatever the volume's size. Slices are spread over
``threads`` threads (NumPy's linear algebra releases the GIL), each using one BLAS thread.

A task's chunk goes through :func:`process_inputs`: small single images (up to
:data:`STACK_PIXELS` pixels per channel, no mask) are decomposed as one stack, since for
them one call per channel costs more than the arithmetic (10,000 28 x 28 PNGs: 0.42 ms per
file against 0.6 ms one by one, in one process); every image's result is the one it gets
alone, so outputs never depend on how files were chunked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from svdharm_cli.core.bands import components_stack
from svdharm_cli.core.device import Device, on_device
from svdharm_cli.core.methods import Method, transform_stack
from svdharm_cli.core.volume import CACHE_BYTES, Map, transform_volume
from svdharm_cli.files.atomic import Staged, staged
from svdharm_cli.files.formats import RAW, OutputContext, write_images
from svdharm_cli.files.inputs import volumes_of
from svdharm_cli.files.plan import Input
from svdharm_cli.files.safety import signals_deferred
from svdharm_cli.run.prepared import JobConfig, Prepared, prepare
from svdharm_cli.run.results import (
    OK,
    FileResult,
    OutputRecord,
    Report,
    Stop,
    Stopped,
)


def process_file(rel: str, config: JobConfig) -> FileResult:
    """Process one file as an input of its own."""
    return process_input(Input((rel,), rel), config)[0]


def process_input(
    inp: Input,
    config: JobConfig,
    threads: int = 1,
    report: Report | None = None,
    stop: Stop | None = None,
) -> list[FileResult]:
    """Read, transform and write one input; every expected problem becomes its results.

    ``report`` receives the results as soon as they are final. For an input that wrote
    files it is called right after the outputs are renamed into place, with SIGINT and
    SIGTERM held back across both, so that no stop can leave an output on disk that was
    not reported (the run log is built from what was reported).

    ``stop`` is asked between slices and before the outputs are renamed; once it says
    yes the input is abandoned (temporaries removed) and the result is empty: the input was
    not processed. Local pools end their workers instead; a cluster's workers cannot be
    ended from the client, so its tasks are asked to stop this way.
    """
    return process_inputs([inp], config, threads, report, stop)


def process_inputs(
    inputs: Sequence[Input],
    config: JobConfig,
    threads: int = 1,
    report: Report | None = None,
    stop: Stop | None = None,
) -> list[FileResult]:
    """:func:`process_input` for each of ``inputs`` (a task's chunk); returns all results.

    Small single images (:data:`STACK_PIXELS`) are read first and transformed together at
    the end, then written and renamed into place together and reported in one call (still
    only after their renames, signals held back across both). ``stop`` is asked before
    each input.
    """
    results: list[FileResult] = []
    stacked: list[Prepared] = []

    def tell(done: list[FileResult]) -> None:
        results.extend(done)
        if report is not None and done:
            with signals_deferred():  # never die holding the result queue's lock
                report(done)

    for inp in inputs:
        if stop is not None and stop():
            return results
        prepared = prepare(inp, config, tell)
        if prepared is None:
            continue
        if prepared.stackable:
            stacked.append(prepared)
        else:
            _transform_unit(prepared, config, threads, tell, stop)
    if stacked:
        _transform_stacked(stacked, config, tell, stop)
    return results


def _transform_unit(
    prepared: Prepared, config: JobConfig, threads: int, tell: Report, stop: Stop | None
) -> None:
    """Transform and write one input (a volume's slices over ``threads`` threads), rename
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
    group: list[Prepared], config: JobConfig, tell: Report, stop: Stop | None
) -> None:
    """Transform small single images together (one stack per size), write each to its
    temporaries, then rename them all into place and tell their results in one call."""
    by_size: dict[tuple[int, ...], list[Prepared]] = {}
    for prepared in group:
        by_size.setdefault(prepared.images[0].frames.shape[2:], []).append(prepared)
    stages: list[Staged] = []
    written: list[tuple[Prepared, Staged, list[list[OutputRecord]]]] = []
    done: list[FileResult] = []
    try:
        for same in by_size.values():
            try:
                values = stacked_values(same, config)
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


def stacked_values(same: list[Prepared], config: JobConfig) -> list[list[list[np.ndarray]]]:
    """New values of single images of one size, ``[image][copy][0]`` shaped like the image's
    frames, from one :func:`~svdharm_cli.core.bands.components_stack` over all their channels."""
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

    key = same[0].inp.key
    news, fallback = on_device(config.on, key, compute)
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


def _transform_and_write(
    prepared: Prepared,
    config: JobConfig,
    threads: int,
    stage: Staged,
    stop: Stop | None = None,
) -> list[list[OutputRecord]]:
    """Transform every slice and write every copy to the stage's temporaries; return the
    records of each file's outputs. Raises :class:`Stopped` when ``stop`` says so."""
    news = input_values(prepared, config, threads, stop)
    return _write_copies(prepared, config, news, stage)


def input_values(
    prepared: Prepared,
    config: JobConfig,
    threads: int = 1,
    stop: Stop | None = None,
    device: Device | None = None,
) -> list[list[np.ndarray]]:
    """The new values of a prepared inp, ``[copy][file]`` shaped like each file's frames
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
                per_slice=config.read.per_slice,
                run=run,
                check=check,
                cache_bytes=CACHE_BYTES,
                sink=store,
            )

    _, prepared.fallback = on_device(device or config.on, prepared.inp.key, compute)
    return news


def _write_copies(
    prepared: Prepared, config: JobConfig, news: list[list[np.ndarray]], stage: Staged
) -> list[list[OutputRecord]]:
    """Write ``news[j][k]`` (copy j of the input's file k) to the stage's temporaries;
    return the records of each file's outputs."""
    inp, files = prepared.inp, len(prepared.inp.files)
    outputs: list[list[OutputRecord]] = [[] for _ in inp.files]
    for j, new in enumerate(news):
        context = OutputContext(
            description=config.provenance,
            instance_key=f"{config.provenance}|{inp.key}|{j}",
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


def _logged(coefficients: np.ndarray | None, method: Method) -> list[list[float | None]] | None:
    """Coefficients as logged: one row per channel; the base's is null when it was matched."""
    if coefficients is None:
        return None
    rows: list[list[float | None]] = [[float(v) for v in row] for row in coefficients]
    if method is Method.HARMONIZE_DEHARMONIZE:
        for row in rows:
            row[0] = None
    return rows
