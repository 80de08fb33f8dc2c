"""Find inputs, plan outputs, process files in worker processes, collect per-file outcomes.

The worker is the top-level function :func:`process_file`: a relative path and a frozen
:class:`JobConfig` in, a frozen :class:`FileResult` out. It never raises for a bad file; the
outcome (``ok`` / ``skipped`` / ``failed`` with a message naming the file) is a value that
goes straight into the run log.

Parallelism: ``workers`` processes (spawned, so no lock inherited from the parent's threads),
fed one file per task, or chunks of up to 64 when many small files remain, and told how
many BLAS threads to use for each task: one while every worker is busy
(two processes each letting BLAS use every core oversubscribe the machine badly), and the
spare cores' share once fewer files than workers remain.
"""

from __future__ import annotations

import fnmatch
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli.atomic import TEMP_MARKER, atomic_path
from svdharm_cli.errors import ImageError, SkipImage, UsageError
from svdharm_cli.formats import (
    DEFAULT_MAX_PIXELS,
    OutputContext,
    WriteOptions,
    handler_for,
    read_image,
    write_image,
)
from svdharm_cli.methods import (
    DEFAULT_HIGH,
    DEFAULT_LOW,
    Method,
    decompose_channels,
    draw_coefficients,
    output_seed,
    transform,
)
from svdharm_cli.reference import Reference
from svdharm_cli.safety import LOCK_NAME, Interrupted, ignore_signals_in_worker

OK, SKIPPED, FAILED = "ok", "skipped", "failed"


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


@dataclass(frozen=True)
class OutputRecord:
    """One written file: its path relative to OUT, and what made it."""

    path: str
    seed: int | None = None
    coefficients: list[list[float | None]] | None = None


@dataclass(frozen=True)
class FileResult:
    """The outcome for one input."""

    path: str
    status: str
    reason: str | None = None
    outputs: tuple[OutputRecord, ...] = ()
    seconds: float = 0.0


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def check_roots(inp: Path, out: Path) -> None:
    """Refuse runs that could overwrite inputs: OUT equal to IN, or IN inside OUT."""
    if not inp.exists():
        raise UsageError(f"input {inp} does not exist")
    rin, rout = inp.resolve(), out.resolve()
    if rin == rout:
        raise UsageError(f"output {out} is the input itself; choose another folder")
    if rout in rin.parents:
        raise UsageError(f"input {inp} lies inside output {out}; outputs could overwrite inputs")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder")


def discover(
    inp: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    skip_dirs: Sequence[Path] = (),
    include_hidden: bool = False,
) -> tuple[Path, list[str]]:
    """The input root and the sorted relative paths (POSIX form) of the images under it.

    A file given directly is taken as it is. In a folder: hidden files and folders (names
    starting with ``.``) are skipped unless ``include_hidden``; symbolic links to folders
    are not followed (so link loops cannot hang a run); files no format recognizes (by
    extension or first bytes) are ignored; globs are matched against the relative path
    (``*`` also matches ``/``), and a file is taken when it matches some ``include`` (or
    none are given) and no ``exclude``.
    """
    if inp.is_file():
        return inp.parent, [inp.name]
    skip = {p.resolve() for p in skip_dirs}
    found = []
    for dirpath, dirnames, filenames in os.walk(inp):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if (include_hidden or not d.startswith(".")) and (here / d).resolve() not in skip
        )
        for name in filenames:
            if name.startswith(".") and not include_hidden:
                continue
            if name.endswith(TEMP_MARKER) or name == LOCK_NAME:
                continue
            rel = (here / name).relative_to(inp).as_posix()
            if include and not any(fnmatch.fnmatch(rel, g) for g in include):
                continue
            if any(fnmatch.fnmatch(rel, g) for g in exclude):
                continue
            if handler_for(here / name) is not None:
                found.append(rel)
    return inp, sorted(found)


def output_paths(rel: str, config: JobConfig) -> list[str]:
    """Relative output paths for one input: the same path, or ``<stem>_aug<j><suffix>``."""
    if config.method is Method.HARMONIZE:
        return [rel]
    p = Path(rel)
    return [(p.parent / f"{p.stem}_aug{j}{p.suffix}").as_posix() for j in range(config.copies)]


def process_file(rel: str, config: JobConfig) -> FileResult:
    """Read, transform and write one input; every expected problem becomes a FileResult."""
    start = time.perf_counter()
    src = config.in_root / rel

    def result(status: str, reason: str | None, outputs: Sequence[OutputRecord] = ()) -> FileResult:
        return FileResult(rel, status, reason, tuple(outputs), time.perf_counter() - start)

    planned = output_paths(rel, config)
    if config.skip_existing and all((config.out_root / o).exists() for o in planned):
        return result(SKIPPED, f"{src}: outputs already exist (--skip-existing)")
    try:
        for out_rel in planned:
            _check_inside(config.out_root, config.out_root / out_rel)
        image = read_image(src, config.max_pixels)
        ref = config.reference
        if ref is not None and ref.channels != image.channel_count:
            raise ImageError(
                f"{src}: has {image.channel_count} colour channel(s) but the reference has "
                f"{ref.channels}; use a reference fitted on images like this one"
            )
        reference = (ref.mean, ref.std) if ref is not None else None
        random = config.method is not Method.HARMONIZE
        seeds = [
            output_seed(_seed(config), rel, j) if random else None for j in range(len(planned))
        ]
        coefficients = [_coefficients(config, seed, image.channel_count) for seed in seeds]
        # Frames outer, copies inner: one decomposition per frame serves every copy.
        news = [np.empty(image.frames.shape, dtype=np.float32) for _ in planned]
        for f in range(image.frame_count):
            mask = None if image.mask is None else image.mask[f]
            bands = decompose_channels(image.frames[f], config.fractions, mask)
            for new, coef in zip(news, coefficients):
                new[f] = transform(bands, reference=reference, coefficients=coef)
        outputs = []
        for j, (out_rel, new, seed, coef) in enumerate(zip(planned, news, seeds, coefficients)):
            context = OutputContext(
                description=config.provenance,
                instance_key=f"{config.provenance}|{rel}|{j}",
                series_key=f"{config.provenance}|{j}",
            )
            with atomic_path(config.out_root / out_rel) as tmp:
                write_image(image, new, tmp, config.write, context)
            outputs.append(OutputRecord(out_rel, seed, _logged(coef, config.method)))
        return result(OK, None, outputs)
    except SkipImage as exc:
        return result(SKIPPED, exc.message)
    except ImageError as exc:
        return result(FAILED, exc.message)
    except np.linalg.LinAlgError as exc:
        return result(FAILED, f"{src}: the decomposition did not converge ({exc})")
    except MemoryError:
        return result(FAILED, f"{src}: not enough memory to process this image")
    except OSError as exc:
        where = exc.filename or src
        return result(FAILED, f"{where}: {exc.strerror or exc}")


def _seed(config: JobConfig) -> int:
    assert config.seed is not None, "random methods need a base seed"
    return config.seed


def _coefficients(config: JobConfig, seed: int | None, channels: int) -> np.ndarray | None:
    """The coefficients of one output (shared by its frames), or None for harmonize."""
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


def _check_inside(root: Path, target: Path) -> None:
    """Refuse an output whose folder resolves outside OUT (a symbolic link planted in OUT)."""
    parent = target.parent
    while not parent.exists() and parent != root:
        parent = parent.parent
    if not parent.exists():
        return  # nothing exists below OUT yet, so no link can redirect the write
    real_root, real = root.resolve(), parent.resolve()
    if real != real_root and real_root not in real.parents:
        raise ImageError(f"{target}: would be written outside the output folder ({real})")


def _logged(coefficients: np.ndarray | None, method: Method) -> list[list[float | None]] | None:
    """Coefficients as logged: one row per channel; the base's is null when it was matched."""
    if coefficients is None:
        return None
    rows: list[list[float | None]] = [[float(v) for v in row] for row in coefficients]
    if method is Method.HARMONIZE_DEHARMONIZE:
        for row in rows:
            row[0] = None
    return rows


# -- the pool ----------------------------------------------------------------------------

MAX_CHUNK = 64
_WORKER_CONFIG: JobConfig | None = None
_BLAS: dict[str, Any] = {}


def _init_worker(config: JobConfig) -> None:
    global _WORKER_CONFIG
    ignore_signals_in_worker()
    _WORKER_CONFIG = config


def _set_blas_threads(n: int) -> None:
    """Limit BLAS threads in this process, changing the limit only when it differs."""
    if _BLAS.get("threads") == n:
        return
    from threadpoolctl import ThreadpoolController

    controller = _BLAS.setdefault("controller", ThreadpoolController())
    controller.limit(limits=n, user_api="blas")
    _BLAS["threads"] = n


def _worker_task(rels: list[str], blas_threads: int) -> list[FileResult]:
    assert _WORKER_CONFIG is not None
    _set_blas_threads(blas_threads)
    return [process_file(rel, _WORKER_CONFIG) for rel in rels]


def chunk_size(remaining: int, workers: int) -> int:
    """Files per task: one while few remain (even load, fine progress); up to 64 when many
    do, since dispatching a task costs about as much as processing a small image."""
    return max(1, min(MAX_CHUNK, remaining // (workers * 8)))


@dataclass(frozen=True)
class BatchOutcome:
    """The files that finished (in input order), and the signal that stopped the run, if any."""

    results: list[FileResult]
    interrupted: int | None = None


def run_files(
    rels: Sequence[str],
    config: JobConfig,
    workers: int,
    on_result: Callable[[FileResult], None] = lambda r: None,
) -> BatchOutcome:
    """Process ``rels``, calling ``on_result`` in this process as each file finishes.

    With one worker, or one file, everything runs in this process. When SIGINT or SIGTERM
    arrives (as :class:`Interrupted` or KeyboardInterrupt) nothing more is dispatched, the
    workers are terminated, and the files finished so far are returned.
    """
    results: dict[str, FileResult] = {}
    interrupted = None
    try:
        for res in _results(rels, config, workers):
            results[res.path] = res
            on_result(res)
    except Interrupted as exc:
        interrupted = exc.signum
    except KeyboardInterrupt:
        interrupted = signal.SIGINT
    return BatchOutcome([results[r] for r in rels if r in results], interrupted)


def _results(rels: Sequence[str], config: JobConfig, workers: int) -> Iterator[FileResult]:
    cpus = available_cpus()
    workers = max(1, min(workers, len(rels)))
    if workers == 1:
        for rel in rels:
            yield process_file(rel, config)
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, context, _init_worker, (config,))
    try:
        pending = list(reversed(rels))
        running: set[Future[list[FileResult]]] = set()
        while pending or running:
            while pending and len(running) < workers:
                busy = min(workers, len(pending) + len(running))
                size = chunk_size(len(pending), workers)
                chunk = [pending.pop() for _ in range(min(size, len(pending)))]
                running.add(pool.submit(_worker_task, chunk, max(1, cpus // busy)))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()
    except BaseException:
        _terminate(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """End the pool's workers now (the executor has no public way before Python 3.14)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
