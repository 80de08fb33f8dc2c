"""One command's run from start to end: reference, seed, inputs, workers, log.

The CLI turns options into a :class:`RunRequest` and calls :func:`run` or
:func:`fit_reference`; this module does the work and returns plain values to display.
"""

from __future__ import annotations

import hashlib
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli import __version__
from svdharm_cli.atomic import write_text
from svdharm_cli.bands import DEFAULT_FRACTIONS
from svdharm_cli.batch import (
    FAILED,
    OK,
    SKIPPED,
    FileResult,
    JobConfig,
    check_roots,
    discover,
    run_files,
)
from svdharm_cli.errors import ImageError, ReferenceFileError, SkipImage, UsageError
from svdharm_cli.formats import DEFAULT_MAX_PIXELS, WriteOptions, read_image
from svdharm_cli.methods import DEFAULT_HIGH, DEFAULT_LOW, Method, channel_statistics
from svdharm_cli.reference import Reference, Source
from svdharm_cli.runlog import LOG_FORMAT, LOG_VERSION, file_record, iso, utc_now, write_log
from svdharm_cli.safety import OutputLock, interruptible, sweep_temporaries


@dataclass(frozen=True)
class RunRequest:
    """What the user asked of harmonize or augment."""

    command: str
    inp: Path
    out: Path
    method: Method
    reference: Path | None = None
    fractions: tuple[float, ...] | None = None
    copies: int = 1
    low: float = DEFAULT_LOW
    high: float = DEFAULT_HIGH
    per_channel: bool = False
    seed: int | None = None
    workers: int = 1
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    log: Path | None = None
    write: WriteOptions = field(default_factory=WriteOptions)
    max_pixels: int = DEFAULT_MAX_PIXELS
    skip_existing: bool = False
    include_hidden: bool = False
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSummary:
    """What a finished run did."""

    results: list[FileResult]
    seconds: float
    log_path: Path
    seed: int | None
    seed_given: bool
    total: int = 0
    interrupted: int | None = None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == FAILED]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def image_statistics(
    path: Path, fractions: Sequence[float], max_pixels: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], Source]:
    """Per-channel statistics of each frame of one image file, and its source record.

    Each frame of a multi-frame file counts as one image of the cohort.
    """
    image = read_image(path, max_pixels)
    stats = [
        channel_statistics(frame, fractions, None if image.mask is None else image.mask[f])
        for f, frame in enumerate(image.frames)
    ]
    return stats, Source(str(path), sha256_file(path), image.shape)


def fit_reference(
    paths: Sequence[Path],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_result: Callable[[FileResult], None] = lambda r: None,
) -> tuple[Reference, list[FileResult]]:
    """Fit a reference from image files and folders (walked like inputs).

    Files that cannot be read are reported through ``on_result`` and left out; the fit uses
    the rest. Raises :class:`UsageError` when no image remains or channel counts disagree.
    """
    files: list[Path] = []
    for p in paths:
        if not p.exists():
            raise UsageError(f"reference input {p} does not exist")
        root, rels = discover(p)
        files.extend(root / r for r in rels)
    if not files:
        raise UsageError("no PNG, JPEG or DICOM images found in the reference inputs")
    stats: list[tuple[np.ndarray, np.ndarray]] = []
    sources: list[Source] = []
    problems: list[FileResult] = []
    for path in files:
        start = time.perf_counter()
        try:
            s, src = image_statistics(path, fractions, max_pixels)
        except (ImageError, SkipImage) as exc:
            status = SKIPPED if isinstance(exc, SkipImage) else FAILED
            res = FileResult(str(path), status, exc.message, (), time.perf_counter() - start)
            problems.append(res)
            on_result(res)
            continue
        if stats and s[0][0].shape != stats[0][0].shape:
            raise UsageError(
                f"{path} has {s[0][0].shape[0]} colour channel(s) but {sources[0].path} has "
                f"{stats[0][0].shape[0]}: a reference cohort must be all gray or all RGB"
            )
        stats.extend(s)
        sources.append(src)
        on_result(FileResult(str(path), OK, None, (), time.perf_counter() - start))
    if not stats:
        raise UsageError("none of the reference images could be read", hint=problems[0].reason)
    return Reference.fit(stats, fractions, sources), problems


def save_reference(reference: Reference, path: Path) -> None:
    write_text(path, reference.to_json())


def load_reference(
    path: Path, fractions: tuple[float, ...] | None, max_pixels: int
) -> tuple[Reference, dict[str, Any]]:
    """A reference from JSON, or fitted on the fly from one image; plus its log record."""
    if not path.is_file():
        raise ReferenceFileError(f"reference {path} does not exist or is not a file")
    if path.suffix.lower() == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ReferenceFileError(f"reference {path}: cannot read: {exc}") from exc
        reference = Reference.from_json(text, origin=str(path))
        if fractions is not None and fractions != reference.fractions:
            raise UsageError(
                f"--fractions {list(fractions)} differs from the reference's "
                f"{list(reference.fractions)}; omit --fractions or refit the reference"
            )
        kind = "json"
    else:
        try:
            stats, source = image_statistics(path, fractions or DEFAULT_FRACTIONS, max_pixels)
        except (ImageError, SkipImage) as exc:
            raise ReferenceFileError(f"reference image: {exc.message}") from exc
        reference = Reference.fit(stats, fractions or DEFAULT_FRACTIONS, [source])
        kind = "image"
    record = {
        "path": str(path),
        "kind": kind,
        "sha256": sha256_file(path),
        "fractions": list(reference.fractions),
        "channels": reference.channels,
        "mean": reference.mean.tolist(),
        "std": reference.std.tolist(),
        "sources": reference.to_dict()["sources"],
    }
    return reference, record


def run(
    request: RunRequest,
    on_start: Callable[[int], None] = lambda n: None,
    on_result: Callable[[FileResult], None] = lambda r: None,
) -> RunSummary:
    """Carry out a harmonize or augment run and write its log.

    OUT is locked for the run (a concurrent run into it is refused), temporaries a crashed
    run left there are removed, and a SIGINT or SIGTERM during the batch ends it early with
    the log still written (``status: interrupted``) and ``RunSummary.interrupted`` set.
    """
    started = utc_now()
    clock = time.perf_counter()
    check_roots(request.inp, request.out)
    reference, ref_record = None, None
    if request.reference is not None:  # before OUT is created: a bad reference leaves no trace
        reference, ref_record = load_reference(
            request.reference, request.fractions, request.max_pixels
        )
    with OutputLock(request.out):
        sweep_temporaries(request.out)
        fractions = reference.fractions if reference else (request.fractions or DEFAULT_FRACTIONS)
        seed = request.seed
        if request.method is not Method.HARMONIZE and seed is None:
            seed = secrets.randbits(63)
        root, rels = discover(
            request.inp,
            include=request.include,
            exclude=request.exclude,
            skip_dirs=[request.out],
            include_hidden=request.include_hidden,
        )
        config = JobConfig(
            method=request.method,
            fractions=fractions,
            in_root=root,
            out_root=request.out,
            reference=reference,
            copies=request.copies,
            low=request.low,
            high=request.high,
            per_channel=request.per_channel,
            seed=seed,
            write=request.write,
            max_pixels=request.max_pixels,
            skip_existing=request.skip_existing,
            provenance=_provenance(request.method, fractions, request, seed, ref_record),
        )
        on_start(len(rels))
        with interruptible():
            outcome = run_files(rels, config, request.workers, on_result)
        if outcome.interrupted is not None:
            sweep_temporaries(request.out)
        results = outcome.results
        seconds = time.perf_counter() - clock
        data = {
            "format": LOG_FORMAT,
            "format_version": LOG_VERSION,
            "tool": "svdharm",
            "tool_version": __version__,
            "command": request.command,
            "argv": list(request.argv or sys.argv),
            "status": "completed" if outcome.interrupted is None else "interrupted",
            "signal": None
            if outcome.interrupted is None
            else signal.Signals(outcome.interrupted).name,
            "started": iso(started),
            "finished": iso(utc_now()),
            "seconds": round(seconds, 3),
            "input": str(request.inp),
            "output": str(request.out),
            "input_root_absolute": str(root.resolve()),
            "output_absolute": str(request.out.resolve()),
            "parameters": _parameters(request, fractions),
            "reference": ref_record,
            "seed": seed,
            "seed_given": request.seed is not None,
            "counts": {
                **{s: sum(r.status == s for r in results) for s in (OK, SKIPPED, FAILED)},
                "not_processed": len(rels) - len(results),
            },
            "files": [file_record(r) for r in results],
        }
        log_path = write_log(data, request.out, request.command, request.log)
    return RunSummary(
        results,
        seconds,
        log_path,
        seed,
        request.seed is not None,
        total=len(rels),
        interrupted=outcome.interrupted,
    )


def _provenance(
    method: Method,
    fractions: tuple[float, ...],
    request: RunRequest,
    seed: int | None,
    ref_record: dict[str, Any] | None,
) -> str:
    """One line naming the tool, the method and its parameters (DICOM Derivation Description)."""
    parts = [f"svdharm {__version__}", f"SVD band {method.value}", f"fractions={list(fractions)}"]
    if ref_record is not None:
        parts.append(f"reference sha256={ref_record['sha256']}")
    if method is not Method.HARMONIZE:
        parts.append(f"coefficients~U[{request.low},{request.high}]")
        parts.append(f"per_channel={request.per_channel}")
        parts.append(f"seed={seed}")
    return "; ".join(parts)


def _parameters(request: RunRequest, fractions: tuple[float, ...]) -> dict[str, Any]:
    random = request.method is not Method.HARMONIZE
    return {
        "method": request.method.value,
        "fractions": list(fractions),
        "copies": request.copies if random else 1,
        "low": request.low if random else None,
        "high": request.high if random else None,
        "per_channel": request.per_channel,
        "workers": request.workers,
        "include": list(request.include),
        "exclude": list(request.exclude),
        "include_hidden": request.include_hidden,
        "skip_existing": request.skip_existing,
        "png_compression": request.write.png_compression,
        "jpeg_quality": request.write.jpeg_quality,
        "max_pixels": request.max_pixels,
    }
