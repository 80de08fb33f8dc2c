"""The ``svdharm`` command: a thin Typer app, one function per command, no logic of its own.

Exit status: 0 when no file failed, 1 when any file failed (the others are still written),
2 for usage errors (bad option values, missing or invalid reference, OUT equal to IN).
Heavy modules (numpy, scipy, imaging) are imported inside the commands so that ``--help``
and ``--version`` return at once.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from svdharm_cli import __version__

app = typer.Typer(
    name="svdharm",
    help="SVD band harmonization and de-harmonization of PNG, JPEG, TIFF, NIfTI and DICOM "
    "images and volumes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _user_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn :class:`SvdharmError` into one line on stderr (plus a hint) and its exit code.

    Any other exception is a bug and keeps its traceback.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from svdharm_cli.errors import SvdharmError

        try:
            command(*args, **kwargs)
        except SvdharmError as exc:
            from svdharm_cli import display

            display.print_error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"svdharm {__version__}")
        raise typer.Exit()


def _fractions(value: Optional[str]) -> Optional[tuple[float, ...]]:
    if value is None:
        return None
    from svdharm_cli.bands import validate_fractions

    try:
        return validate_fractions(float(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


FRACTIONS_HELP = "Increasing band cuts as fractions of the singular values, e.g. 0.07,0.2,0.5."
Fractions = Annotated[
    Optional[str],
    typer.Option(
        help=FRACTIONS_HELP + " With a JSON reference, the reference's own are used.",
        show_default="0.07,0.2,0.5",
    ),
]
BandFractions = Annotated[
    Optional[str], typer.Option("--fractions", help=FRACTIONS_HELP, show_default="0.07,0.2,0.5")
]
Workers = Annotated[
    Optional[int],
    typer.Option(
        min=1,
        help="Worker processes of the local pool, at most: a short batch (under a second of "
        "work) runs in this process alone. With --scheduler, the cluster's workers run.",
        show_default="the CPUs this process may use",
    ),
]
Scheduler = Annotated[
    Optional[str],
    typer.Option(
        envvar="DASK_SCHEDULER_ADDRESS",
        help="Run on the Dask cluster whose scheduler is at this address (tcp://host:8786); "
        "needs svdharm\\[dask] and IN/OUT at the same paths on every worker.",
        show_default="the local pool",
    ),
]
SchedulerFile = Annotated[
    Optional[Path],
    typer.Option(
        help="Run on the Dask cluster named in this file (dask scheduler --scheduler-file).",
        show_default="none",
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where the numbers are computed: cpu (NumPy), or cuda / cuda:N (a GPU, through "
        "PyTorch; needs svdharm\\[torch] with a CUDA build). Files are read and written on "
        "the CPU either way.",
    ),
]
Log = Annotated[
    Optional[Path],
    typer.Option(
        help="Where to write the JSON run log.", show_default="a new timestamped file in OUT"
    ),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only failures and errors (for cron).")
]
Include = Annotated[
    Optional[list[str]],
    typer.Option(help="Only inputs whose relative path matches this glob (repeatable)."),
]
Exclude = Annotated[
    Optional[list[str]],
    typer.Option(help="Skip inputs whose relative path matches this glob (repeatable)."),
]
PngCompression = Annotated[
    int,
    typer.Option(
        min=0,
        max=9,
        help="zlib level of PNG outputs (4: files within 1% of level 6's, written 2-4x faster).",
    ),
]
JpegQuality = Annotated[int, typer.Option(min=1, max=100, help="Quality of JPEG outputs.")]
SkipExisting = Annotated[
    bool,
    typer.Option(
        help="Skip inputs whose outputs this command would make again identically: a record "
        "in OUT says they were made from the same input (size and time, else SHA-256), "
        "series members, reference, parameters and svdharm version; others are made again, "
        "the log says why. Finishes an interrupted run as if it had not been interrupted."
    ),
]
Settle = Annotated[
    float,
    typer.Option(
        min=0.0,
        help="Leave for the next run any input modified less than this many seconds ago "
        "(a DICOM series while any file of its folder is): files still being copied in. "
        "For cron over folders that receive copies; 0 takes every file as it is.",
    ),
]
IncludeHidden = Annotated[
    bool, typer.Option(help="Also process hidden files and folders (names starting with '.').")
]
Report = Annotated[bool, typer.Option(help="Also write the HTML QA report next to the log.")]
MaxPixels = Annotated[
    int, typer.Option(min=1, help="Refuse images with more pixels than this (before decoding).")
]
PerSlice = Annotated[
    bool,
    typer.Option(
        help="Statistics of each slice on its own instead of pooled over its volume (a DICOM "
        "series, multi-frame DICOM, NIfTI volume or TIFF stack)."
    ),
]
SliceAxis = Annotated[
    int,
    typer.Option(min=0, max=2, help="Voxel axis NIfTI volumes are cut into slices along."),
]


class MaskMode(str, Enum):
    """Which pixels the statistics are taken over (METHOD.md section 3b)."""

    NONE = "none"
    AUTO = "auto"


Mask = Annotated[
    MaskMode,
    typer.Option(
        help="Statistics over every pixel (none, the paper's), or over the foreground with "
        "empty border-connected background left out and written back unchanged (auto: "
        "for framings that differ between sites, such as fundus surrounds or air around "
        "a body). DICOM Pixel Padding is always left out.",
        case_sensitive=False,
    ),
]
MaskDir = Annotated[
    Optional[Path],
    typer.Option(
        help="Take masks from files mirroring the input tree (same relative path; PNG, TIFF, "
        "NIfTI or DICOM; nonzero = foreground) instead.",
        file_okay=False,
    ),
]
In = Annotated[
    Path, typer.Argument(metavar="IN", help="Input image, or folder walked recursively.")
]
Out = Annotated[Path, typer.Argument(metavar="OUT", help="Output folder; mirrors the input tree.")]


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """SVD band harmonization and de-harmonization of PNG, JPEG, TIFF, NIfTI and DICOM images
    and volumes."""


@app.command("fit-reference")
@_user_errors
def fit_reference(
    refs: Annotated[
        list[Path],
        typer.Argument(metavar="REF", help="Reference images, volumes or folders (a cohort)."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Reference JSON to write.")],
    fractions: Fractions = None,
    max_pixels: MaxPixels = 100_000_000,
    per_slice: PerSlice = False,
    slice_axis: SliceAxis = 2,
    include: Include = None,
    exclude: Exclude = None,
    mask: Mask = MaskMode.NONE,
    mask_dir: MaskDir = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
    scheduler_file: SchedulerFile = None,
    device: DeviceOption = "cpu",
    quiet: Quiet = False,
    no_paths: Annotated[
        bool,
        typer.Option(
            "--no-paths",
            help="Record sources by SHA-256, shape, unit and channels only: no path or file "
            "name (for a reference sent to another institution).",
        ),
    ] = False,
) -> None:
    """Fit a reference (per-band mean and std) from one image or a cohort.

    A cohort may mix kinds (gray and RGB, CT and other modalities): the reference gets one
    entry per unit and channel count, and harmonize picks the entry that fits each input.
    """
    from svdharm_cli import display, jobs
    from svdharm_cli.bands import DEFAULT_FRACTIONS

    fr = _fractions(fractions) or DEFAULT_FRACTIONS
    mode = _mask_mode(mask, mask_dir)
    with _on_workers(
        "fitting", quiet, workers, scheduler, scheduler_file, "no reference", device
    ) as (
        executor,
        on_result,
    ):
        reference, problems, ignored = jobs.fit_reference(
            refs,
            fr,
            max_pixels,
            on_result,
            per_slice=per_slice,
            slice_axis=slice_axis,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            mask=mode,
            mask_dir=mask_dir,
            executor=executor,
        )
    jobs.save_reference(reference.without_paths() if no_paths else reference, output)
    display.report_failures(problems)
    display.print_line(
        f"reference from {display.plural(len(reference.sources), 'file')} "
        f"({reference.kinds()}), fractions {list(reference.fractions)} written to {output}"
        + (f"; ignored {display.plural(ignored, 'file')} that are not images" if ignored else ""),
        quiet,
    )
    if any(p.status == "failed" for p in problems):
        raise typer.Exit(1)


@app.command()
@_user_errors
def harmonize(
    inp: In,
    out: Out,
    reference: Annotated[Path, typer.Option(help="Reference JSON, or an image to fit one from.")],
    fractions: Fractions = None,
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
    mask: Mask = MaskMode.NONE,
    mask_dir: MaskDir = None,
    report: Report = False,
) -> None:
    """Match every band's mean and std to the reference's (pooled over each volume)."""
    from svdharm_cli.methods import Method

    _run(
        quiet,
        report,
        command="harmonize",
        inp=inp,
        out=out,
        method=Method.HARMONIZE,
        reference=reference,
        fractions=_fractions(fractions),
        workers=workers,
        scheduler=scheduler,
        scheduler_file=scheduler_file,
        device=device,
        log=log,
        include=include,
        exclude=exclude,
        png_compression=png_compression,
        jpeg_quality=jpeg_quality,
        max_pixels=max_pixels,
        skip_existing=skip_existing,
        settle=settle,
        include_hidden=include_hidden,
        per_slice=per_slice,
        slice_axis=slice_axis,
        mask=_mask_mode(mask, mask_dir),
        mask_dir=mask_dir,
    )


@app.command()
@_user_errors
def augment(
    inp: In,
    out: Out,
    copies: Annotated[int, typer.Option(min=1, help="De-harmonized copies per input.")] = 1,
    seed: Annotated[
        Optional[int],
        typer.Option(min=0, help="Base seed.", show_default="drawn at random, printed and logged"),
    ] = None,
    low: Annotated[float, typer.Option(min=0.0, help="Lowest band coefficient.")] = 0.8,
    high: Annotated[float, typer.Option(min=0.0, help="Highest band coefficient.")] = 1.2,
    per_channel: Annotated[
        bool, typer.Option(help="Draw coefficients per colour channel (changes hue).")
    ] = False,
    reference: Annotated[
        Optional[Path],
        typer.Option(help="Also harmonize the base to this reference (the combined method)."),
    ] = None,
    fractions: Fractions = None,
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
    mask: Mask = MaskMode.NONE,
    mask_dir: MaskDir = None,
    report: Report = False,
) -> None:
    """Write de-harmonized copies (random band coefficients) of every input; each copy of
    a volume draws one coefficient set for all its slices."""
    from svdharm_cli.methods import Method

    if low > high:
        raise typer.BadParameter(f"--low {low} is above --high {high}", param_hint="--low")
    method = Method.DEHARMONIZE if reference is None else Method.HARMONIZE_DEHARMONIZE
    _run(
        quiet,
        report,
        command="augment",
        inp=inp,
        out=out,
        method=method,
        reference=reference,
        fractions=_fractions(fractions),
        copies=copies,
        low=low,
        high=high,
        per_channel=per_channel,
        seed=seed,
        workers=workers,
        scheduler=scheduler,
        scheduler_file=scheduler_file,
        device=device,
        log=log,
        include=include,
        exclude=exclude,
        png_compression=png_compression,
        jpeg_quality=jpeg_quality,
        max_pixels=max_pixels,
        skip_existing=skip_existing,
        settle=settle,
        include_hidden=include_hidden,
        per_slice=per_slice,
        slice_axis=slice_axis,
        mask=_mask_mode(mask, mask_dir),
        mask_dir=mask_dir,
    )


@app.command("merge-references")
@_user_errors
def merge_references(
    refs: Annotated[
        list[Path],
        typer.Argument(metavar="REF", help="Reference JSON files, one per site (two or more)."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged reference JSON.")],
    quiet: Quiet = False,
) -> None:
    """Merge references fitted at several sites into one, exactly, without their images.

    Each entry (unit, channel count) becomes the image-count-weighted average of the
    entries of that kind: what fit-reference on the union of the sites' images gives. The
    references must share fractions and mask mode. The result records each merged file's
    SHA-256 and image counts, and no path.
    """
    from svdharm_cli import display, jobs
    from svdharm_cli.errors import UsageError

    if len(refs) < 2:
        raise UsageError("merge-references needs two or more references")
    if any(output.resolve() == ref.resolve() for ref in refs):
        raise UsageError(f"output {output} is one of the references; choose another file")
    merged = jobs.merge_references(refs)
    jobs.save_reference(merged, output)
    display.print_line(
        f"merged {display.plural(len(refs), 'reference')} "
        f"({display.plural(sum(e.images for e in merged.entries), 'image')}: "
        f"{merged.kinds()}) into {output}",
        quiet,
    )


@app.command()
@_user_errors
def bands(
    image: Annotated[
        Path, typer.Argument(metavar="IMAGE", help="Any image or volume svdharm reads.")
    ],
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="Panel PNG to write.",
            show_default="<stem>_bands.png in the current folder",
        ),
    ] = None,
    fractions: BandFractions = None,
    frame: Annotated[
        int, typer.Option(min=0, help="Slice of a volume (multi-frame DICOM, NIfTI, TIFF).")
    ] = 0,
    slice_axis: SliceAxis = 2,
    device: DeviceOption = "cpu",
    quiet: Quiet = False,
) -> None:
    """Show an image's base and bands: a labelled panel PNG and a statistics table."""
    from svdharm_cli import display
    from svdharm_cli.atomic import atomic_path
    from svdharm_cli.bands import DEFAULT_FRACTIONS
    from svdharm_cli.errors import ImageError, SkipImage, UsageError
    from svdharm_cli.formats import read_image
    from svdharm_cli.panel import build_panel, display_window, render

    try:
        picture = read_image(image, slice_axis=slice_axis)
    except SkipImage as exc:  # nothing to show is a failure here, not a skip
        raise ImageError(exc.message) from None
    if frame >= picture.frame_count:
        count = display.plural(picture.frame_count, "slice")
        raise UsageError(f"--frame {frame}: {image} has {count} (numbered from 0)")
    from svdharm_cli.device import resolve

    panel = build_panel(
        picture.frames[frame],
        _fractions(fractions) or DEFAULT_FRACTIONS,
        display_window(picture, frame),
        resolve(device),
    )
    target = output or Path(f"{image.stem}_bands.png")
    from PIL import Image as PILImage

    with atomic_path(target) as tmp:
        PILImage.fromarray(render(panel)).save(tmp, format="PNG")
    display.band_table(image, panel.rows, quiet)
    display.print_line(f"panel: {target}", quiet)


@app.command()
@_user_errors
def compare(
    groups: Annotated[
        list[Path],
        typer.Argument(metavar="GROUP", help="Folders, one per site or scanner (two or more)."),
    ],
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="HTML report to write.", show_default="none"),
    ] = None,
    json_path: Annotated[
        Optional[Path],
        typer.Option("--json", help="JSON result to write.", show_default="none"),
    ] = None,
    mask: Mask = MaskMode.NONE,
    mask_dir: Annotated[
        Optional[Path],
        typer.Option(
            help="Mask files: one subfolder per group, named like the group, mirroring it.",
            file_okay=False,
        ),
    ] = None,
    fractions: BandFractions = None,
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds (at most).")] = 5,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the folds and pixel samples.")] = 0,
    max_pixels: MaxPixels = 100_000_000,
    slice_axis: SliceAxis = 2,
    workers: Workers = None,
    scheduler: Scheduler = None,
    scheduler_file: SchedulerFile = None,
    device: DeviceOption = "cpu",
    quiet: Quiet = False,
) -> None:
    """Can a classifier still tell the groups apart? Separability and distances between
    sites, to run on inputs and on harmonized outputs."""
    import json

    from svdharm_cli import display
    from svdharm_cli.atomic import write_text
    from svdharm_cli.bands import DEFAULT_FRACTIONS
    from svdharm_cli.compare import compare as run_compare
    from svdharm_cli.compare import render_html

    mode = _mask_mode(mask, mask_dir)
    with _on_workers("comparing", quiet, workers, scheduler, scheduler_file, "nothing", device) as (
        executor,
        on_result,
    ):
        result = run_compare(
            groups,
            _fractions(fractions) or DEFAULT_FRACTIONS,
            mask=mode,
            mask_dir=mask_dir,
            folds=folds,
            seed=seed,
            max_pixels=max_pixels,
            slice_axis=slice_axis,
            on_result=on_result,
            executor=executor,
        )
    display.report_failures(result.problems)
    if json_path is not None:
        write_text(json_path, json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    if output is not None:
        write_text(output, render_html(result))
    display.comparison(result.to_dict(), quiet)
    for target in (json_path, output):
        if target is not None:
            display.print_line(f"written: {target}", quiet)
    if any(p.status == "failed" for p in result.problems):
        raise typer.Exit(1)


@app.command()
@_user_errors
def report(
    log: Annotated[Path, typer.Argument(metavar="LOG", help="A run's JSON log.")],
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", help="HTML file to write.", show_default="the log's name, .html"
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Write a self-contained HTML QA report of a harmonize or augment run."""
    from svdharm_cli import display
    from svdharm_cli.report import write_report

    target = write_report(log, output or log.with_suffix(".html"))
    display.print_line(f"report: {target}", quiet)


@contextlib.contextmanager
def _on_workers(
    label: str,
    quiet: bool,
    workers: Optional[int],
    scheduler: Optional[str],
    scheduler_file: Optional[Path],
    unwritten: str,
    device: str = "cpu",
) -> Iterator[tuple[Any, Callable[[Any], None]]]:
    """The executor (local pool or cluster) and the progress callback of a command that
    writes its result at the end (fit-reference, compare); a stop there is reported as
    ``interrupted by SIGINT: <unwritten> written``, exit status 130 or 143."""
    from svdharm_cli import display
    from svdharm_cli.executors import available_cpus, open_executor
    from svdharm_cli.safety import Interrupted

    try:
        with (
            open_executor(
                workers or available_cpus(), scheduler, scheduler_file, device
            ) as executor,
            display.progress(label, quiet) as (_, on_result),
        ):
            yield executor, on_result
    except Interrupted as exc:
        display.print_error(f"interrupted by {exc}: {unwritten} written")
        raise typer.Exit(exc.exit_code) from None


def _mask_mode(mask: MaskMode, mask_dir: Optional[Path]) -> str:
    """``none``, ``auto`` or ``dir``; ``--mask auto`` with ``--mask-dir`` is a usage error."""
    if mask_dir is None:
        return mask.value
    if mask is MaskMode.AUTO:
        raise typer.BadParameter("use either --mask auto or --mask-dir", param_hint="--mask")
    if not mask_dir.is_dir():
        raise typer.BadParameter(f"{mask_dir} is not a folder", param_hint="--mask-dir")
    return "dir"


def _run(
    quiet: bool,
    report: bool,
    *,
    workers: Optional[int],
    include: Optional[list[str]],
    exclude: Optional[list[str]],
    png_compression: int,
    jpeg_quality: int,
    **fields: Any,
) -> None:
    """Build the run request from the options, run it, show the outcome, set the exit code."""
    from svdharm_cli import display, jobs
    from svdharm_cli.executors import available_cpus
    from svdharm_cli.formats import WriteOptions

    request = jobs.RunRequest(
        workers=workers or available_cpus(),
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        write=WriteOptions(png_compression=png_compression, jpeg_quality=jpeg_quality),
        argv=tuple(sys.argv),
        **fields,
    )
    with display.progress(request.command, quiet) as (on_start, on_result):
        summary = jobs.run(request, on_start, on_result)
    display.summary(summary, quiet)
    if report and summary.log_path is not None:
        from svdharm_cli.report import write_report

        html = write_report(summary.log_path, summary.log_path.with_suffix(".html"))
        display.print_line(f"report: {html}", quiet)
    if summary.interrupted is not None:
        raise typer.Exit(128 + summary.interrupted)
    if summary.failed or summary.log_path is None:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    from svdharm_cli.safety import quiet_libraries

    quiet_libraries()
    app()
