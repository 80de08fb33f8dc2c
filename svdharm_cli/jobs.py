"""One command's run from start to end: reference, seed, inputs, workers, log.

The CLI turns options into a :class:`RunRequest` and calls :func:`run` or
:func:`fit_reference`; this module does the work and returns plain values to display.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svdharm_cli import __version__
from svdharm_cli.atomic import write_text
from svdharm_cli.bands import DEFAULT_FRACTIONS
from svdharm_cli.errors import ImageError, ReferenceFileError, SkipImage, UsageError
from svdharm_cli.executors import Executor, open_executor
from svdharm_cli.executors.local import LocalPool
from svdharm_cli.executors.work import Rooted, gather, run_units
from svdharm_cli.fitting import Measured, MeasureUnits, sha256_file, unit_statistics
from svdharm_cli.formats import DEFAULT_MAX_PIXELS, WriteOptions
from svdharm_cli.methods import DEFAULT_HIGH, DEFAULT_LOW, Method
from svdharm_cli.plan import (
    Folder,
    Unit,
    check_roots,
    count_candidates,
    discover,
    plan_units,
    walk,
)
from svdharm_cli.provenance import Ledger, Recipe
from svdharm_cli.reference import Reference
from svdharm_cli.resume import Resume
from svdharm_cli.runlog import (
    LOG_FORMAT,
    LOG_VERSION,
    Spill,
    Tally,
    iso,
    utc_now,
    write_log_somewhere,
)
from svdharm_cli.safety import OutputLock, sweep_temporaries
from svdharm_cli.worker import (
    ALREADY_DONE,
    FAILED,
    OK,
    SKIPPED,
    FileResult,
    JobConfig,
    device_check,
    walk_results,
)


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
    settle: float = 0.0
    include_hidden: bool = False
    per_slice: bool = False
    slice_axis: int = 2
    mask: str = "none"
    mask_dir: Path | None = None
    scheduler: str | None = None
    scheduler_file: Path | None = None
    device: str = "cpu"
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSummary:
    """What a finished run did: its records' :class:`~svdharm_cli.runlog.Tally` (counts and
    the first failures and skips), not the records themselves (they are in the log)."""

    tally: Tally
    seconds: float
    log_path: Path | None
    seed: int | None
    seed_given: bool
    total: int = 0
    interrupted: int | None = None
    ignored: int = 0
    retried: int | None = None
    warnings: tuple[str, ...] = ()
    redone: dict[str, int] = field(default_factory=dict)
    """Units ``--skip-existing`` made again, by reason."""
    log_problem: str | None = None
    """Why the log is not where it was asked for (:func:`runlog.write_log_somewhere`)."""

    def count(self, status: str) -> int:
        return self.tally.counts.get(status, 0)

    @property
    def failed(self) -> int:
        return self.count(FAILED)


def fit_reference(
    paths: Sequence[Path],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_result: Callable[[FileResult], None] = lambda r: None,
    *,
    per_slice: bool = False,
    slice_axis: int = 2,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    mask: str = "none",
    mask_dir: Path | None = None,
    executor: Executor | None = None,
) -> tuple[Reference, list[FileResult], int]:
    """Fit a reference from image files and folders (walked like inputs); also return the
    problems and how many files no format takes were ignored.

    Images are grouped by (unit, channel count), one reference entry per group; a DICOM
    series or other volume counts as one image. The statistics of each unit are taken by
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
        found = discover(p, include=include, exclude=exclude)
        ignored += len(found.ignored)
        walk_problems.extend(walk_results(found.root, found.unlisted, found.notes))
        root = executor.worker_path(found.root)
        units = plan_units(root, found.images, found.dicom)
        first = len(items)  # items are numbered over all inputs, in input order
        items.extend(Rooted(first + i, root, u, found.root) for i, u in enumerate(units))
    for result in walk_problems:
        on_result(result)
    if not items:
        raise UsageError(
            "no PNG, JPEG, TIFF, NIfTI or DICOM images found in the reference inputs",
            hint=walk_problems[0].reason if walk_problems else None,
        )
    if mask_dir is not None:
        mask_dir = executor.worker_path(mask_dir)
    readable = {item.root for item in items} | ({mask_dir} if mask_dir is not None else set())
    executor.check(sorted(readable), [])
    task = MeasureUnits(
        tuple(fractions), max_pixels, per_slice, slice_axis, mask, mask_dir, executor.device
    )
    outcomes: list[Measured] = gather(executor, task, items, on_result)
    problems = walk_problems + [r for m in outcomes for r in m.results if r.status != OK]
    stats = [s for m in outcomes for s in m.statistics]
    sources = [s for m in outcomes for s in m.sources]
    if not stats:
        raise UsageError("none of the reference images could be read", hint=problems[0].reason)
    reference = Reference.fit(stats, fractions, sources, mask=mask)
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
    path: Path, fractions: tuple[float, ...] | None, max_pixels: int, slice_axis: int = 2
) -> tuple[Reference, dict[str, Any]]:
    """A reference from JSON, or fitted on the fly from one image; plus its log record."""
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
        unit = Unit((path.name,), path.name)
        try:
            stats, sources = unit_statistics(
                path.parent, unit, fr, max_pixels, slice_axis=slice_axis
            )
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


def run(
    request: RunRequest,
    on_start: Callable[[int], None] | None = None,
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
            request.reference, request.fractions, request.max_pixels, request.slice_axis
        )
    with (
        open_executor(
            request.workers, request.scheduler, request.scheduler_file, request.device
        ) as executor,
        OutputLock(request.out),
    ):
        sweep_temporaries(request.out)
        fractions = reference.fractions if reference else (request.fractions or DEFAULT_FRACTIONS)
        seed = request.seed
        if request.method is not Method.HARMONIZE and seed is None:
            seed = secrets.randbits(63)
        walked = Walked(request, root_of(request.inp))
        root = walked.root
        here = executor.worker_path
        readable = [here(root)] + ([] if request.mask_dir is None else [here(request.mask_dir)])
        executor.check(readable, [here(request.out)])
        previous_failures = _previous_failures(request) if request.skip_existing else None
        config = JobConfig(
            method=request.method,
            fractions=fractions,
            in_root=here(root),
            out_root=here(request.out),
            reference=reference,
            copies=request.copies,
            low=request.low,
            high=request.high,
            per_channel=request.per_channel,
            seed=seed,
            write=request.write,
            max_pixels=request.max_pixels,
            skip_existing=False,  # decided here, from the provenance records (resume.py)
            provenance=_provenance(request.method, fractions, request, seed, ref_record),
            label=f"svdharm {request.command}",
            per_slice=request.per_slice,
            slice_axis=request.slice_axis,
            mask=request.mask,
            mask_dir=None if request.mask_dir is None else here(request.mask_dir),
            device=executor.device,
        )
        warnings = _mask_warnings(reference, request)
        checked = None
        units = walked.units()
        if config.device != "cpu" and not executor.remote:  # before the first output
            first = list(itertools.islice(units, 5))
            units = itertools.chain(first, units)
            checked = device_check(first, config)
            if checked is not None and not checked["passed"]:
                raise UsageError(
                    f"--device {config.device}: on {checked['unit']} its results differ from "
                    f"the CPU path's by {checked['largest_difference']:.3g} (the bound is "
                    f"{checked['bound']:.3g}, {checked['scale']}); nothing was written",
                    hint="use --device cpu, and report the device and torch version",
                )
        if on_start is not None:
            walked.count_for(on_start)
        spill = Spill(request.out)
        ledger = Ledger(request.out)
        parameters = _parameters(request, fractions, executor)

        def told(result: FileResult) -> None:
            spill.add(result)
            on_result(result)

        walked.told = told
        resume = Resume(
            ledger,
            _recipe(request, parameters, ref_record),
            root,
            request.out,
            request.mask_dir if request.mask == "dir" else None,
            skip_existing=request.skip_existing,
            told=told,
        )
        try:
            outcome = run_units(
                executor,
                resume.units(units),
                config,
                on_result,
                sink=lambda r: spill.add(resume.take(r)),
            )
            warnings.extend(executor.warnings)
            if outcome.interrupted is not None:
                walked.finish()  # count what was not walked yet: the counts stay exact
            for result in walk_results(root, walked.unlisted, ()):
                spill.add(result)
                on_result(result)
            warnings.extend(walked.notes)
            tally = spill.tally(previous_failures)
            retried = None if previous_failures is None else tally.retried
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
                "parameters": parameters,
                "executor": executor.describe(),
                "device_check": checked,
                "reference": ref_record,
                "seed": seed,
                "seed_given": request.seed is not None,
                "counts": {
                    **tally.counts,
                    "already_done": tally.already_done,
                    "redone": sum(resume.redone.values()) if request.skip_existing else None,
                    "retried_failures": retried,
                    "not_processed": walked.images - tally.files,
                    "ignored": len(walked.ignored),
                },
                "ignored": sorted(walked.ignored),
                "redone": dict(sorted(resume.redone.items())),
                "warnings": warnings,
                "volumes": sorted(walked.volumes, key=lambda v: min(v["files"])),
                "files": None,
            }
            if spill.problem is not None:
                warnings.append(f"the run's records were kept in memory ({spill.problem})")
            if ledger.problem is not None:
                warnings.append(
                    f"provenance records could not be written ({ledger.problem}): the next "
                    "--skip-existing run makes these outputs again"
                )
            log_path, log_problem = write_log_somewhere(
                data, request.out, request.command, request.log, spill.lines
            )
        finally:
            spill.close()
            ledger.close()
        # What a stopped or dead worker was writing (a worker killed from outside can die
        # between two chunks' reports unnoticed by the pool); nothing else writes into OUT
        # while the lock is held. One listing of OUT, no stat.
        sweep_temporaries(request.out)
    return RunSummary(
        tally,
        seconds,
        log_path,
        seed,
        request.seed is not None,
        total=walked.images,
        interrupted=outcome.interrupted,
        ignored=len(walked.ignored),
        retried=retried,
        warnings=tuple(warnings),
        redone=dict(resume.redone),
        log_problem=log_problem,
    )


def root_of(inp: Path) -> Path:
    """The input root: IN, or the folder of a single file given as IN."""
    return inp.parent if inp.is_file() else inp


class Walked:
    """The input tree walked folder by folder as the run dispatches (:func:`plan.walk`):
    units come a folder at a time, and what the log needs besides the file records is
    counted on the way (images, the files no format takes, the DICOM series)."""

    def __init__(self, request: RunRequest, root: Path) -> None:
        self.request = request
        self.root = root
        self.images = 0
        """Inputs: the images, and each folder that could not be listed (a failure)."""
        self.ignored: list[str] = []
        self.unlisted: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.volumes: list[dict[str, Any]] = []
        self._walked: Callable[[int], None] = lambda images: None
        self.told: Callable[[FileResult], None] = lambda result: None
        """Where the files left for a later run (``--settle``) are reported."""
        self._folders = walk(
            request.inp,
            include=request.include,
            exclude=request.exclude,
            skip_dirs=[request.out],
            include_hidden=request.include_hidden,
        )

    def _take(self, folder: Folder) -> None:
        self.images += len(folder.images) + len(folder.unlisted)
        self.ignored.extend(folder.ignored)
        self.unlisted.extend(folder.unlisted)
        self.notes.extend(folder.notes)

    def units(self) -> Iterator[Unit]:
        single = self.request.inp.is_file()
        for folder in self._folders:
            self._take(folder)
            young = self._unsettled(folder)
            dicom = folder.dicom or frozenset()
            for unit in plan_units(self.root, folder.images, None if single else folder.dicom):
                held = [rel for rel in unit.files if rel in young]
                if not held and young and unit.files[0] in dicom:
                    held = sorted(young)  # a series may be missing a file still arriving
                if held:
                    why = (
                        f"{self.root / held[0]}: modified {young[held[0]]:.0f} s ago, within "
                        f"--settle {self.request.settle:g} s: left for the next run"
                    )
                    for rel in unit.files:
                        self.told(FileResult(rel, SKIPPED, why, volume=unit.volume))
                    continue
                if unit.volume is not None:
                    self.volumes.append({"volume": unit.volume, "files": list(unit.files)})
                yield unit
        self._walked(self.images)

    def _unsettled(self, folder: Folder) -> dict[str, float]:
        """The files of ``folder`` (images or not: a DICOM file cut short may not be
        recognized yet) modified less than ``--settle`` seconds ago, with their age."""
        settle = self.request.settle
        if settle <= 0:
            return {}
        now = time.time()
        young = {}
        for rel in [*folder.images, *folder.ignored]:
            try:
                age = now - os.stat(self.root / rel).st_mtime
            except OSError:
                continue
            if age < settle:
                young[rel] = max(age, 0.0)
        return young

    def finish(self) -> None:
        """Walk the rest without planning it (after a stop), so that the counts are exact."""
        for folder in self._folders:
            self._take(folder)

    def count_for(self, on_total: Callable[[int], None]) -> None:
        """Give the progress bar its total: first an estimate, the files the walk will
        consider counted by name alone (:func:`plan.count_candidates`, an upper bound: it
        includes files that turn out not to be images), counted in a thread while the run
        starts, so no dispatch waits for it; then, once the walk has ended, the exact
        number of images."""
        lock = threading.Lock()
        exact = [False]

        def walked(images: int) -> None:
            with lock:
                exact[0] = True
                on_total(images)

        def estimate() -> None:
            r = self.request
            count = count_candidates(
                r.inp,
                include=r.include,
                exclude=r.exclude,
                skip_dirs=[r.out],
                include_hidden=r.include_hidden,
            )
            with lock:
                if not exact[0]:
                    on_total(count)

        self._walked = walked
        threading.Thread(target=estimate, name="svdharm-count", daemon=True).start()


def _mask_warnings(reference: Reference | None, request: RunRequest) -> list[str]:
    """A warning when the reference's statistics were masked differently from this run's."""
    if reference is None or reference.mask == request.mask:
        return []
    return [
        f"the reference's statistics were taken with --mask {reference.mask} but this run "
        f"uses --mask {request.mask}: their band statistics are not comparable"
    ]


def _already_done(result: FileResult) -> bool:
    return result.status == SKIPPED and (result.reason or "").endswith(ALREADY_DONE)


def _previous_failures(request: RunRequest) -> set[str] | None:
    """Paths that failed in the latest earlier run of this command into OUT (its default
    log), or None when there is none to read."""
    logs = sorted(
        request.out.glob(f"svdharm-{request.command}-*.json"), key=lambda p: p.stat().st_mtime_ns
    )
    for path in reversed(logs):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {f["path"] for f in data["files"] if f.get("status") == FAILED}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


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


RECIPE = (
    "method",
    "fractions",
    "copies",
    "low",
    "high",
    "per_channel",
    "png_compression",
    "jpeg_quality",
    "max_pixels",
    "per_slice",
    "slice_axis",
    "mask",
)
"""The logged parameters that decide the outputs' bytes (:mod:`svdharm_cli.provenance`):
not the workers, the globs or the device (whose results agree within the accuracy bound)."""


def _recipe(
    request: RunRequest, parameters: dict[str, Any], ref_record: dict[str, Any] | None
) -> Recipe:
    """What decides the outputs besides the inputs: :data:`RECIPE` of the logged
    ``parameters``, the command, and the seed when one was given (a run without one may
    make any draw)."""
    random = request.method is not Method.HARMONIZE
    decisive = {key: parameters[key] for key in RECIPE}
    decisive.update(command=request.command, seed=request.seed if random else None)
    reference = None if ref_record is None else str(ref_record["sha256"])
    return Recipe(__version__, reference, decisive)


def _parameters(
    request: RunRequest, fractions: tuple[float, ...], executor: Executor
) -> dict[str, Any]:
    random = request.method is not Method.HARMONIZE
    return {
        "method": request.method.value,
        "fractions": list(fractions),
        "copies": request.copies if random else 1,
        "low": request.low if random else None,
        "high": request.high if random else None,
        "per_channel": request.per_channel,
        "workers": None if executor.remote else request.workers,  # a cluster's: see executor
        "include": list(request.include),
        "exclude": list(request.exclude),
        "include_hidden": request.include_hidden,
        "skip_existing": request.skip_existing,
        "settle": request.settle,
        "png_compression": request.write.png_compression,
        "jpeg_quality": request.write.jpeg_quality,
        "max_pixels": request.max_pixels,
        "per_slice": request.per_slice,
        "slice_axis": request.slice_axis,
        "mask": request.mask,
        "mask_dir": None if request.mask_dir is None else str(request.mask_dir),
    }
