"""The ``svdharm`` command: a thin Typer app, one function per command, no logic of its own.

Exit status: 0 when no file failed, 1 when any file failed (the others are still written),
2 for usage errors (bad option values, missing or invalid reference, OUT equal to IN).
Heavy modules (numpy, scipy, imaging) are imported inside the commands so that ``--help``
and ``--version`` return at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from svdharm_cli import __version__
from svdharm_cli.ui.parameters import (
    BandFractions,
    CompareReference,
    DeviceOption,
    Exclude,
    Fractions,
    Groups,
    Include,
    InOut,
    Kind,
    Label,
    ManifestOption,
    Mask,
    MaskChoice,
    MaskDir,
    MaxPixels,
    PerSlice,
    Quiet,
    Scheduler,
    SchedulerFile,
    SliceAxis,
    Workers,
    fractions_option,
    manifest_options,
    read_options,
    walk_options,
    worker_options,
)
from svdharm_cli.ui.runs import RunSettings, on_workers, run, user_errors, with_run_parameters
from svdharm_cli.ui.tuning import tune

if TYPE_CHECKING:
    pass

app = typer.Typer(
    name="svdharm",
    help="SVD band harmonization and de-harmonization of PNG, JPEG, TIFF, NIfTI and DICOM "
    "images and volumes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"svdharm {__version__}")
        raise typer.Exit()


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
@user_errors
def fit_reference(
    output: Annotated[Path, typer.Option("--output", "-o", help="Reference JSON to write.")],
    refs: Annotated[
        Optional[list[Path]],
        typer.Argument(
            metavar="[REF]...",
            help="Reference images, volumes or folders (a cohort); or --manifest, or both.",
            show_default=False,
        ),
    ] = None,
    manifest: ManifestOption = None,
    fractions: Fractions = None,
    max_pixels: MaxPixels = 100_000_000,
    per_slice: PerSlice = False,
    slice_axis: SliceAxis = 2,
    include: Include = None,
    exclude: Exclude = None,
    mask: Mask = MaskChoice.NONE,
    mask_dir: MaskDir = None,
    kind: Kind = None,
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
    from svdharm_cli.core.bands import DEFAULT_FRACTIONS
    from svdharm_cli.run import fitting
    from svdharm_cli.run.results import Status
    from svdharm_cli.ui import display

    table, read = manifest_options(
        manifest, read_options(max_pixels, per_slice, slice_axis, mask, mask_dir, kind)
    )
    if not refs and table is None:
        raise typer.BadParameter("give reference files or folders, or --manifest", param_hint="REF")
    if refs and table is not None and table.masks:
        raise typer.BadParameter(
            "a manifest with a mask column cannot be mixed with REF folders", param_hint="REF"
        )
    where = worker_options(workers, scheduler, scheduler_file, device)
    with on_workers("fitting", quiet, where, "no reference") as (executor, on_result):
        reference, problems, ignored = fitting.reference_from_files(
            refs or [],
            fractions_option(fractions) or DEFAULT_FRACTIONS,
            read,
            walk_options(include, exclude),
            on_result,
            executor,
            table,
        )
    fitting.save_reference(reference.without_paths() if no_paths else reference, output)
    display.report_failures(problems)
    display.print_line(
        f"reference from {display.plural(len(reference.sources), 'file')} "
        f"({reference.kinds()}), fractions {list(reference.fractions)} written to {output}"
        + (f"; ignored {display.plural(ignored, 'file')} that are not images" if ignored else ""),
        quiet,
    )
    if any(p.status is Status.FAILED for p in problems):
        raise typer.Exit(1)


@app.command()
@user_errors
@with_run_parameters
def harmonize(
    paths: InOut,
    reference: Annotated[Path, typer.Option(help="Reference JSON, or an image to fit one from.")],
    fractions: Fractions = None,
    *,
    settings: RunSettings,
) -> None:
    """Match every band's mean and std to the reference's (pooled over each volume)."""
    from svdharm_cli.core.methods import Method
    from svdharm_cli.run.options import DrawOptions

    what = ("harmonize", paths, Method.HARMONIZE, reference, fractions_option(fractions))
    run(what, DrawOptions(), settings)


@app.command()
@user_errors
@with_run_parameters
def augment(
    paths: InOut,
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
    *,
    settings: RunSettings,
) -> None:
    """Write de-harmonized copies (random band coefficients) of every input; each copy of
    a volume draws one coefficient set for all its slices."""
    from svdharm_cli.core.methods import Method
    from svdharm_cli.run.options import DrawOptions

    if low > high:
        raise typer.BadParameter(f"--low {low} is above --high {high}", param_hint="--low")
    method = Method.DEHARMONIZE if reference is None else Method.HARMONIZE_DEHARMONIZE
    what = ("augment", paths, method, reference, fractions_option(fractions))
    run(what, DrawOptions(copies, low, high, per_channel, seed), settings)


@app.command("merge-references")
@user_errors
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
    from svdharm_cli.errors import UsageError
    from svdharm_cli.run import fitting
    from svdharm_cli.ui import display

    if len(refs) < 2:
        raise UsageError("merge-references needs two or more references")
    if any(output.resolve() == ref.resolve() for ref in refs):
        raise UsageError(f"output {output} is one of the references; choose another file")
    merged = fitting.merge_references(refs)
    fitting.save_reference(merged, output)
    display.print_line(
        f"merged {display.plural(len(refs), 'reference')} "
        f"({display.plural(sum(e.images for e in merged.entries), 'image')}: "
        f"{merged.kinds()}) into {output}",
        quiet,
    )


@app.command()
@user_errors
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
    from svdharm_cli.core.bands import DEFAULT_FRACTIONS
    from svdharm_cli.errors import ImageError, SkipImage, UsageError
    from svdharm_cli.files.atomic import atomic_path
    from svdharm_cli.files.formats import read_image
    from svdharm_cli.ui import display
    from svdharm_cli.ui.panel import build_panel, display_window, render

    try:
        picture = read_image(image, slice_axis=slice_axis)
    except SkipImage as exc:  # nothing to show is a failure here, not a skip
        raise ImageError(exc.message) from None
    if frame >= picture.frame_count:
        count = display.plural(picture.frame_count, "slice")
        raise UsageError(f"--frame {frame}: {image} has {count} (numbered from 0)")
    from svdharm_cli.core.device import resolve

    panel = build_panel(
        picture.frames[frame],
        fractions_option(fractions) or DEFAULT_FRACTIONS,
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
@user_errors
def compare(
    groups: Groups = None,
    manifest: ManifestOption = None,
    label: Label = None,
    reference: CompareReference = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="HTML report to write.", show_default="none"),
    ] = None,
    json_path: Annotated[
        Optional[Path],
        typer.Option("--json", help="JSON result to write.", show_default="none"),
    ] = None,
    mask: Mask = MaskChoice.NONE,
    mask_dir: Annotated[
        Optional[Path],
        typer.Option(
            help="Mask files: one subfolder per group, named like the group, mirroring it.",
            file_okay=False,
        ),
    ] = None,
    kind: Kind = None,
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

    from svdharm_cli.core.bands import DEFAULT_FRACTIONS
    from svdharm_cli.files.atomic import write_text
    from svdharm_cli.run import fitting, sampling
    from svdharm_cli.run.results import Status
    from svdharm_cli.ui import display
    from svdharm_cli.ui.comparison import render_html

    table, read = manifest_options(
        manifest, read_options(max_pixels, False, slice_axis, mask, mask_dir, kind)
    )
    if table is not None and groups:
        raise typer.BadParameter("give GROUP folders or --manifest, not both", param_hint="GROUP")
    if label is not None and table is None:
        raise typer.BadParameter("--label names a column of --manifest", param_hint="--label")
    fitted, fr = None, fractions_option(fractions)
    if reference is not None:
        fitted, _ = fitting.load_reference(reference, fr, read)
        fr = fitted.fractions
    where = worker_options(workers, scheduler, scheduler_file, device)
    with on_workers("comparing", quiet, where, "nothing") as (executor, on_result):
        result = sampling.compare(
            groups or [],
            fr or DEFAULT_FRACTIONS,
            read,
            manifest=table,
            label=label,
            reference=fitted,
            folds=folds,
            seed=seed,
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
    if any(p.status is Status.FAILED for p in result.problems):
        raise typer.Exit(1)


app.command()(user_errors(tune))


@app.command()
@user_errors
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
    from svdharm_cli.ui import display
    from svdharm_cli.ui.report import write_report

    target = write_report(log, output or log.with_suffix(".html"))
    display.print_line(f"report: {target}", quiet)


def main() -> None:
    """Console-script entry point."""
    from svdharm_cli.files.safety import quiet_libraries

    quiet_libraries()
    app()
