"""One harmonize or augment run from start to end: reference, seed, inputs, workers, log.

The CLI composes a :class:`~svdharm_cli.run.options.RunRequest` and calls :func:`run`,
which returns plain values to display (fit-reference's and compare's work is in
:mod:`~svdharm_cli.run.fitting` and :mod:`~svdharm_cli.run.sampling`).
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from svdharm_cli import __version__
from svdharm_cli.core.bands import DEFAULT_FRACTIONS
from svdharm_cli.core.reference import Reference, kind_names
from svdharm_cli.errors import UsageError
from svdharm_cli.files.atomic import forget_folders
from svdharm_cli.files.manifest import Manifest, check_listed, write_output_table
from svdharm_cli.files.plan import Input, check_roots
from svdharm_cli.files.provenance import Ledger, Recipe
from svdharm_cli.files.safety import OutputLock, sweep_temporaries
from svdharm_cli.run.executors import Executor, open_executor
from svdharm_cli.run.executors.gpu import device_check
from svdharm_cli.run.executors.work import run_inputs
from svdharm_cli.run.fitting import load_reference
from svdharm_cli.run.options import RunRequest
from svdharm_cli.run.results import FAILED, FileResult, Status, walk_results
from svdharm_cli.run.resume import Resume
from svdharm_cli.run.runlog import Spill, Tally, run_log, utc_now, write_log_somewhere
from svdharm_cli.run.walked import Walked, root_of
from svdharm_cli.run.worker import JobConfig


@dataclass(frozen=True)
class RunSummary:
    """What a finished run did: its records' :class:`~svdharm_cli.run.runlog.Tally` (counts
    and the first failures and skips), not the records themselves (they are in the log)."""

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
    """Inputs ``--skip-existing`` made again, by reason."""
    log_problem: str | None = None
    """Why the log is not where it was asked for (:func:`runlog.write_log_somewhere`)."""

    def count(self, status: Status) -> int:
        return self.tally.counts.get(status, 0)

    @property
    def failed(self) -> int:
        return self.count(FAILED)


@dataclass(frozen=True)
class _Facts:
    """What the run knows before its dispatch that its log records."""

    started: datetime
    clock: float
    checked: dict[str, Any] | None
    """The device check's record (:func:`_checked_on_device`)."""
    reference: dict[str, Any] | None
    """The reference's log record."""


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
    started, clock = utc_now(), time.perf_counter()
    check_roots(request.inp, request.out)
    if request.manifest is not None:
        check_listed(request.manifest, request.out)
    reference, ref_record = None, None
    if request.reference is not None:  # before OUT is created: a bad reference leaves no trace
        reference, ref_record = load_reference(request.reference, request.fractions, request.read)
    where = request.where
    with (
        open_executor(where.workers, where.scheduler, where.scheduler_file, where.device) as ex,
        OutputLock(request.out),
    ):
        sweep_temporaries(request.out)
        forget_folders()  # OUT may have been removed since this process's last run
        walked = Walked(request, root_of(request.inp))
        config = _job(request, reference, ref_record, ex, walked.root)
        inputs, checked = _checked_on_device(walked.inputs(), config, ex)
        if on_start is not None:
            walked.count_for(on_start)
        facts = _Facts(started, clock, checked, ref_record)
        summary = _dispatch(request, config, ex, walked, inputs, on_result, facts)
        # What a stopped or dead worker was writing (a worker killed from outside can die
        # between two chunks' reports unnoticed by the pool); nothing else writes into OUT
        # while the lock is held. One listing of OUT, no stat.
        sweep_temporaries(request.out)
    return summary


def _job(
    request: RunRequest,
    reference: Reference | None,
    ref_record: dict[str, Any] | None,
    executor: Executor,
    root: Path,
) -> JobConfig:
    """What every worker gets: the options with the run's seed and the paths as the
    workers reach them. Refuses unless the workers can read IN and write OUT."""
    here = executor.worker_path
    read = request.read
    executor.check(
        [here(root)] + ([] if read.mask_dir is None else [here(read.mask_dir)]),
        [here(request.out)],
    )
    fractions = reference.fractions if reference else (request.fractions or DEFAULT_FRACTIONS)
    seed = request.draw.seed
    if request.random and seed is None:
        seed = secrets.randbits(63)
    return JobConfig(
        method=request.method,
        fractions=fractions,
        in_root=here(root),
        out_root=here(request.out),
        reference=reference,
        read=read if read.mask_dir is None else replace(read, mask_dir=here(read.mask_dir)),
        draw=replace(request.draw, seed=seed),
        write=request.write,
        provenance=_provenance(request, fractions, seed, ref_record),
        label=f"svdharm {request.command}",
        device=executor.device,
    )


def _checked_on_device(
    inputs: Iterator[Input], config: JobConfig, executor: Executor
) -> tuple[Iterator[Input], dict[str, Any] | None]:
    """On a device in this process, :func:`~svdharm_cli.run.executors.gpu.device_check`
    on the first inputs before the first output is written; a failed check is a usage
    error and nothing is written."""
    if config.device == "cpu" or executor.remote:
        return inputs, None
    first = list(itertools.islice(inputs, 5))
    checked = device_check(first, config)
    if checked is not None and not checked["passed"]:
        raise UsageError(
            f"--device {config.device}: on {checked['unit']} its results differ from "
            f"the CPU path's by {checked['largest_difference']:.3g} (the bound is "
            f"{checked['bound']:.3g}, {checked['scale']}); nothing was written",
            hint="use --device cpu, and report the device and torch version",
        )
    return itertools.chain(first, inputs), checked


def _dispatch(
    request: RunRequest,
    config: JobConfig,
    executor: Executor,
    walked: Walked,
    inputs: Iterator[Input],
    on_result: Callable[[FileResult], None],
    facts: _Facts,
) -> RunSummary:
    """Run the inputs past the provenance records to the executor, and write the log."""
    previous_failures = _previous_failures(request) if request.walk.skip_existing else None
    warnings = _mask_warnings(config.reference, request)
    spill, ledger = Spill(request.out), Ledger(request.out)
    parameters = request.parameters(config.fractions, executor.remote)

    def told(result: FileResult) -> None:
        spill.add(_with_row(request.manifest, result))
        on_result(result)

    walked.told = told
    resume = Resume(
        ledger,
        _recipe(request, parameters, facts.reference),
        walked.root,
        request.out,
        request.read.mask_files,
        skip_existing=request.walk.skip_existing,
        told=told,
    )
    kinds: set[str] = set()

    def sink(result: FileResult) -> None:
        kinds.add(result.kind)
        spill.add(resume.take(_with_row(request.manifest, result)))

    try:
        outcome = run_inputs(executor, resume.inputs(inputs), config, on_result, sink=sink)
        warnings.extend(executor.warnings + _kind_warnings(config.reference, kinds))
        if outcome.interrupted is not None:
            walked.finish()  # count what was not walked yet: the counts stay exact
        for result in walk_results(walked.root, walked.unlisted, ()):
            told(result)
        warnings.extend(walked.notes)
        tally = spill.tally(previous_failures)
        retried = None if previous_failures is None else tally.retried
        seconds = time.perf_counter() - facts.clock
        data = run_log(
            request,
            started=facts.started,
            seconds=seconds,
            root=walked.root,
            parameters=parameters,
            executor=executor.describe(),
            device_check=facts.checked,
            reference=facts.reference,
            seed=config.draw.seed,
            tally=tally,
            redone=resume.redone,
            retried=retried,
            walked=walked,
            warnings=warnings,
            interrupted=outcome.interrupted,
        )
        warnings.extend(_record_warnings(spill, ledger))
        log_path, log_problem = write_log_somewhere(
            data, request.out, request.command, request.log, spill.lines
        )
        if request.manifest is not None and log_path is not None:
            _output_table(request.manifest, spill, log_path, warnings)
    finally:
        spill.close()
        ledger.close()
    return RunSummary(
        tally,
        seconds,
        log_path,
        config.draw.seed,
        request.draw.seed is not None,
        total=walked.images,
        interrupted=outcome.interrupted,
        ignored=len(walked.ignored),
        retried=retried,
        warnings=tuple(warnings),
        redone=dict(resume.redone),
        log_problem=log_problem,
    )


def _mask_warnings(reference: Reference | None, request: RunRequest) -> list[str]:
    """A warning when the reference's statistics were masked differently from this run's."""
    if reference is None or reference.mask == request.read.mask:
        return []
    return [
        f"the reference's statistics were taken with --mask {reference.mask} but this run "
        f"uses --mask {request.read.mask}: their band statistics are not comparable"
    ]


def _record_warnings(spill: Spill, ledger: Ledger) -> list[str]:
    """What went wrong keeping the run's records (in the log, in the provenance ledger)."""
    warnings = []
    if spill.problem is not None:
        warnings.append(f"the run's records were kept in memory ({spill.problem})")
    if ledger.problem is not None:
        warnings.append(
            f"provenance records could not be written ({ledger.problem}): the next "
            "--skip-existing run makes these outputs again"
        )
    return warnings


def _with_row(manifest: Manifest | None, result: FileResult) -> FileResult:
    """``result`` with its manifest row's cells, when a table listed it."""
    row = None if manifest is None else manifest.by_rel.get(result.path)
    return result if row is None else replace(result, columns=row.values)


def _output_table(manifest: Manifest, spill: Spill, log_path: Path, warnings: list[str]) -> None:
    """The output table beside the log (:func:`~svdharm_cli.files.manifest.write_output_table`)."""
    suffix = ".tsv" if manifest.delimiter == "\t" else ".csv"
    records = (json.loads(line) for line in spill.lines())
    try:
        write_output_table(manifest, records, log_path.with_suffix(suffix))
    except OSError as exc:
        warnings.append(f"the output table could not be written ({exc.strerror or exc})")


def _kind_warnings(reference: Reference | None, kinds: set[str]) -> list[str]:
    """A warning when a reference without kinds served inputs of some kind (it is applied
    by unit and channel count alone, as before kinds existed)."""
    if reference is None or reference.has_kinds or not kinds - {""}:
        return []
    return [
        f"the reference has no kinds but inputs of kind {kind_names(sorted(kinds - {''}))} "
        "were harmonized with it by unit and channel count; refit it on images of each kind "
        "to keep kinds apart"
    ]


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
    request: RunRequest,
    fractions: tuple[float, ...],
    seed: int | None,
    ref_record: dict[str, Any] | None,
) -> str:
    """One line naming the tool, the method and its parameters (DICOM Derivation Description)."""
    method, draw = request.method, request.draw
    parts = [f"svdharm {__version__}", f"SVD band {method.value}", f"fractions={list(fractions)}"]
    if ref_record is not None:
        parts.append(f"reference sha256={ref_record['sha256']}")
    if request.random:
        parts.append(f"coefficients~U[{draw.low},{draw.high}]")
        parts.append(f"per_channel={draw.per_channel}")
        parts.append(f"seed={seed}")
    return "; ".join(parts)


NOT_IN_RECIPE = (
    "workers",
    "include",
    "exclude",
    "include_hidden",
    "skip_existing",
    "settle",
    "mask_dir",
    "manifest",
)
"""The logged parameters that do not decide the outputs' bytes
(:mod:`svdharm_cli.files.provenance`): the workers, the walk, where masks were read from
(their files are recorded one by one), the table that listed the inputs. The device is not
a parameter: its results agree within the accuracy bound."""


def _recipe(
    request: RunRequest, parameters: dict[str, Any], ref_record: dict[str, Any] | None
) -> Recipe:
    """What decides the outputs besides the inputs: the logged ``parameters`` but
    :data:`NOT_IN_RECIPE`, the command, and the seed when one was given (a run without
    one may make any draw)."""
    decisive = {k: v for k, v in parameters.items() if k not in NOT_IN_RECIPE}
    decisive.update(command=request.command, seed=request.draw.seed if request.random else None)
    reference = None if ref_record is None else str(ref_record["sha256"])
    return Recipe(__version__, reference, decisive)
