"""The parameters the commands share, declared once as ``Annotated`` Typer types, and
their conversion into the option values of :mod:`svdharm_cli.run.options`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from svdharm_cli.core.masks import MaskMode
    from svdharm_cli.files.kinds import KindRule
    from svdharm_cli.files.manifest import Manifest
    from svdharm_cli.run.options import ReadOptions, WalkOptions, WorkerOptions


def fractions_option(value: Optional[str]) -> Optional[tuple[float, ...]]:
    if value is None:
        return None
    from svdharm_cli.core.bands import validate_fractions

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


class MaskChoice(str, Enum):
    """Which pixels the statistics are taken over (METHOD.md section 3b)."""

    NONE = "none"
    AUTO = "auto"


Mask = Annotated[
    MaskChoice,
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
Kind = Annotated[
    Optional[list[str]],
    typer.Option(
        "--kind",
        metavar="NAME=GLOB",
        help="Files whose relative path matches GLOB are of kind NAME (T1w, CT, ...), whatever "
        "their DICOM Modality or BIDS suffix says; repeatable, the first match wins. A "
        "reference keeps one entry per kind; an input uses its own kind's.",
        show_default="the file's Modality or BIDS suffix, else none",
    ),
]
ManifestOption = Annotated[
    Optional[Path],
    typer.Option(
        "--manifest",
        help="A CSV or TSV table of inputs: a 'path' column (relative to the table's folder, "
        "or absolute), and optionally 'mask', 'site' and any others (labels, covariates), "
        "carried into the log.",
        dir_okay=False,
        show_default="none",
    ),
]
Groups = Annotated[
    Optional[list[Path]],
    typer.Argument(
        metavar="[GROUP]...",
        help="Folders, one per site or scanner (two or more); or --manifest, its 'site' "
        "column naming the groups.",
        show_default=False,
    ),
]
Label = Annotated[
    Optional[str],
    typer.Option(
        help="A manifest column: how well the features predict it, cross-validated and "
        "leave-one-site-out, beside chance (does harmonization keep what matters?).",
        show_default="none",
    ),
]
CompareReference = Annotated[
    Optional[Path],
    typer.Option(
        "--reference",
        help="Also harmonize every image in memory to this reference (as harmonize would) "
        "and measure before and after.",
        show_default="none",
    ),
]
InOut = Annotated[
    list[Path],
    typer.Argument(
        metavar="[IN] OUT",
        help="IN: an input image, or a folder walked recursively; OUT: the output folder, "
        "mirroring IN. With --manifest, OUT alone: the table lists the inputs.",
        show_default=False,
    ),
]
In = Annotated[
    Path, typer.Argument(metavar="IN", help="Input image, or folder walked recursively.")
]
Out = Annotated[Path, typer.Argument(metavar="OUT", help="Output folder; mirrors the input tree.")]


def mask_mode(mask: MaskChoice, mask_dir: Optional[Path]) -> MaskMode:
    """``none``, ``auto`` or ``dir``; ``--mask auto`` with ``--mask-dir`` is a usage error."""
    from svdharm_cli.core.masks import MaskMode

    if mask_dir is None:
        return MaskMode(mask.value)
    if mask is MaskChoice.AUTO:
        raise typer.BadParameter("use either --mask auto or --mask-dir", param_hint="--mask")
    if not mask_dir.is_dir():
        raise typer.BadParameter(f"{mask_dir} is not a folder", param_hint="--mask-dir")
    return MaskMode.DIR


def read_options(
    max_pixels: int,
    per_slice: bool,
    slice_axis: int,
    mask: MaskChoice,
    mask_dir: Optional[Path],
    kinds: Optional[list[str]] = None,
) -> ReadOptions:
    from svdharm_cli.run.options import ReadOptions

    mode = mask_mode(mask, mask_dir)
    return ReadOptions(max_pixels, per_slice, slice_axis, mode, mask_dir, kind_rules(kinds))


def kind_rules(values: Optional[list[str]]) -> tuple[KindRule, ...]:
    """``--kind NAME=GLOB`` values as rules; a malformed one is a usage error."""
    from svdharm_cli.files.kinds import KindRule

    try:
        return tuple(KindRule.parse(value) for value in values or ())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--kind") from exc


def walk_options(
    include: Optional[list[str]],
    exclude: Optional[list[str]],
    include_hidden: bool = False,
    skip_existing: bool = False,
    settle: float = 0.0,
) -> WalkOptions:
    from svdharm_cli.run.options import WalkOptions

    return WalkOptions(
        tuple(include or ()), tuple(exclude or ()), include_hidden, skip_existing, settle
    )


def worker_options(
    workers: Optional[int], scheduler: Optional[str], scheduler_file: Optional[Path], device: str
) -> WorkerOptions:
    """Where the work runs; ``workers`` defaults to the CPUs this process may use."""
    from svdharm_cli.run.executors import available_cpus
    from svdharm_cli.run.options import WorkerOptions

    return WorkerOptions(workers or available_cpus(), scheduler, scheduler_file, device)


def manifest_options(
    path: Optional[Path], read: ReadOptions
) -> tuple[Optional[Manifest], ReadOptions]:
    """The table ``--manifest`` names, read and checked, and ``read`` with its ``mask``
    column's files (which replace ``--mask-dir`` and ``--mask auto``: both with a mask
    column are a usage error)."""
    if path is None:
        return None, read
    from dataclasses import replace

    from svdharm_cli.core.masks import MaskMode
    from svdharm_cli.files.inputs import MaskFiles
    from svdharm_cli.files.manifest import read_manifest

    manifest = read_manifest(path)
    if not manifest.masks:
        return manifest, read
    if read.mask != MaskMode.NONE:
        raise typer.BadParameter(
            f"{path} has a mask column: leave out --mask and --mask-dir", param_hint="--mask"
        )
    listed = MaskFiles(listed=manifest.masks)
    return manifest, replace(read, mask=MaskMode.DIR, listed_masks=listed)
