"""How a command meets the terminal: errors become one line and an exit code, work runs
on workers behind a progress bar, and a run's outcome becomes its summary and exit code."""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from svdharm_cli.ui.parameters import (
    DeviceOption,
    Exclude,
    Include,
    IncludeHidden,
    JpegQuality,
    Kind,
    Log,
    ManifestOption,
    Mask,
    MaskChoice,
    MaskDir,
    MaxPixels,
    PerSlice,
    PngCompression,
    Quiet,
    Report,
    Scheduler,
    SchedulerFile,
    Settle,
    SkipExisting,
    SliceAxis,
    Workers,
    manifest_options,
    read_options,
    walk_options,
    worker_options,
)

if TYPE_CHECKING:
    from svdharm_cli.core.methods import Method
    from svdharm_cli.files.formats import WriteOptions
    from svdharm_cli.files.manifest import Manifest
    from svdharm_cli.run.options import DrawOptions, ReadOptions, WalkOptions, WorkerOptions


def user_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn :class:`SvdharmError` into one line on stderr (plus a hint) and its exit code.

    Any other exception is a bug and keeps its traceback.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from svdharm_cli.errors import SvdharmError

        try:
            command(*args, **kwargs)
        except SvdharmError as exc:
            from svdharm_cli.ui import display

            display.print_error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


@contextlib.contextmanager
def on_workers(
    label: str, quiet: bool, where: WorkerOptions, unwritten: str
) -> Iterator[tuple[Any, Callable[[Any], None]]]:
    """The executor (local pool or cluster) and the progress callback of a command that
    writes its result at the end (fit-reference, compare); a stop there is reported as
    ``interrupted by SIGINT: <unwritten> written``, exit status 130 or 143."""
    from svdharm_cli.files.safety import Interrupted
    from svdharm_cli.run.executors import open_executor
    from svdharm_cli.ui import display

    try:
        with (
            open_executor(where.workers, where.scheduler, where.scheduler_file, where.device) as ex,
            display.progress(label, quiet) as (_, on_result),
        ):
            yield ex, on_result
    except Interrupted as exc:
        display.print_error(f"interrupted by {exc}: {unwritten} written")
        raise typer.Exit(exc.exit_code) from None


@dataclass(frozen=True)
class RunSettings:
    """What harmonize and augment share, composed from their common parameters."""

    read: ReadOptions
    write: WriteOptions
    walk: WalkOptions
    where: WorkerOptions
    log: Optional[Path]
    quiet: bool
    report: bool
    manifest: Optional[Manifest] = None


def run_parameters(
    workers: Workers = None,
    scheduler: Scheduler = None,
    scheduler_file: SchedulerFile = None,
    device: DeviceOption = "cpu",
    log: Log = None,
    quiet: Quiet = False,
    include: Include = None,
    exclude: Exclude = None,
    png_compression: PngCompression = 4,  # formats.DEFAULT_PNG_COMPRESSION
    jpeg_quality: JpegQuality = 95,
    max_pixels: MaxPixels = 100_000_000,
    skip_existing: SkipExisting = False,
    settle: Settle = 0.0,
    include_hidden: IncludeHidden = False,
    per_slice: PerSlice = False,
    slice_axis: SliceAxis = 2,
    mask: Mask = MaskChoice.NONE,
    mask_dir: MaskDir = None,
    kind: Kind = None,
    manifest: ManifestOption = None,
    report: Report = False,
) -> RunSettings:
    """The parameters harmonize and augment share, declared once (:func:`with_run_parameters`
    gives them to both commands), composed into option values."""
    from svdharm_cli.files.formats import WriteOptions

    table, read = manifest_options(
        manifest, read_options(max_pixels, per_slice, slice_axis, mask, mask_dir, kind)
    )
    return RunSettings(
        read,
        WriteOptions(png_compression, jpeg_quality),
        walk_options(include, exclude, include_hidden, skip_existing, settle),
        worker_options(workers, scheduler, scheduler_file, device),
        log,
        quiet,
        report,
        table,
    )


def with_run_parameters(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` (whose last parameter is ``settings: RunSettings``) as Typer sees it: its
    own parameters followed by those of :func:`run_parameters`, whose values it receives
    composed as ``settings``."""
    own = inspect.signature(command).parameters
    hints = typing.get_type_hints(command, include_extras=True)
    shared = inspect.signature(run_parameters).parameters
    shared_hints = typing.get_type_hints(run_parameters, include_extras=True)
    params = [p.replace(annotation=hints[name]) for name, p in own.items() if name != "settings"]
    params += [p.replace(annotation=shared_hints[name]) for name, p in shared.items()]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        settings = run_parameters(**{name: kwargs.pop(name) for name in shared})
        command(**kwargs, settings=settings)

    wrapper.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def run(
    what: tuple[str, list[Path], Method, Optional[Path], Optional[tuple[float, ...]]],
    draw: DrawOptions,
    settings: RunSettings,
) -> None:
    """Compose the run request (``what``: the command, IN and OUT, or OUT alone with a
    manifest, the method, reference and fractions), run it, show the outcome, set the exit
    code."""
    from svdharm_cli.run import jobs
    from svdharm_cli.run.options import RunRequest
    from svdharm_cli.ui import display

    command, paths, method, reference, fractions = what
    manifest = settings.manifest
    if manifest is not None and len(paths) != 1:
        raise typer.BadParameter("with --manifest, give OUT alone: the table lists the inputs")
    if manifest is None and len(paths) != 2:
        raise typer.BadParameter("give IN and OUT (or --manifest TABLE and OUT)")
    inp, out = (manifest.root, paths[0]) if manifest is not None else (paths[0], paths[1])
    s, quiet = settings, settings.quiet
    request = RunRequest(
        command,
        inp,
        out,
        method,
        reference,
        fractions,
        s.read,
        draw,
        s.write,
        s.walk,
        s.where,
        s.log,
        tuple(sys.argv),
        manifest,
    )
    with display.progress(request.command, quiet) as (on_start, on_result):
        summary = jobs.run(request, on_start, on_result)
    display.summary(summary, quiet)
    if settings.report and summary.log_path is not None:
        from svdharm_cli.ui.report import write_report

        html = write_report(summary.log_path, summary.log_path.with_suffix(".html"))
        display.print_line(f"report: {html}", quiet)
    if summary.interrupted is not None:
        raise typer.Exit(128 + summary.interrupted)
    if summary.failed or summary.log_path is None:
        raise typer.Exit(1)
