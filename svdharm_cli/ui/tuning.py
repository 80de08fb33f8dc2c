"""``svdharm tune``: band cuts chosen on the user's own sites, by evidence (the command, its
terminal lines and its HTML page)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from svdharm_cli.ui.parameters import (
    Kind,
    Label,
    ManifestOption,
    MaskChoice,
    MaxPixels,
    Quiet,
    Scheduler,
    SchedulerFile,
    SliceAxis,
    Workers,
    fractions_option,
    manifest_options,
    read_options,
    worker_options,
)
from svdharm_cli.ui.runs import on_workers

MASK_MODES = ("none", "auto", "dir")


def tune(
    sites: Annotated[
        Optional[list[Path]],
        typer.Argument(
            metavar="[SITE]...",
            help="Folders, one per site (two or more); or --manifest, its 'site' column "
            "naming the sites.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The reference to write, fitted with the chosen cuts (ready for harmonize).",
        ),
    ] = ...,  # type: ignore[assignment]
    manifest: ManifestOption = None,
    label: Label = None,
    target_site: Annotated[
        Optional[str],
        typer.Option(
            help="Fit the references on this site's images (the site the others are "
            "harmonized to).",
            show_default="all sites pooled",
        ),
    ] = None,
    json_path: Annotated[
        Optional[Path],
        typer.Option(
            "--json",
            help="Every candidate's figures and the rule's reasoning.",
            show_default="none",
        ),
    ] = None,
    report: Annotated[
        Optional[Path],
        typer.Option(help="HTML report to write: the table and the plot.", show_default="none"),
    ] = None,
    fractions_grid: Annotated[
        Optional[list[str]],
        typer.Option(
            "--fractions-grid",
            metavar="CUTS",
            help="A candidate's cuts, e.g. 0.07,0.2,0.5; repeatable, or several separated by ';'.",
            show_default="10 sets of 1 to 5 cuts, the paper's among them",
        ),
    ] = None,
    mask: Annotated[
        str,
        typer.Option(
            help="The masks to try, comma-separated: none, auto, dir (dir: the manifest's mask "
            "column's files). Every candidate is measured over the first one that is "
            "not none.",
            show_default="none; dir when the manifest has a mask column",
        ),
    ] = "",
    sample: Annotated[
        int, typer.Option(min=2, help="Images sampled per site (a series or volume is one).")
    ] = 50,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the sample, the pixel samples and the folds.")
    ] = 0,
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds (at most).")] = 5,
    margin: Annotated[
        Optional[float],
        typer.Option(
            min=0.0,
            max=1.0,
            help="With --label: never choose cuts whose label accuracy falls more than this "
            "below the unharmonized images'.",
            show_default="one standard error of the unharmonized accuracy, at least 0.01",
        ),
    ] = None,
    kind: Kind = None,
    max_pixels: MaxPixels = 100_000_000,
    slice_axis: SliceAxis = 2,
    workers: Workers = None,
    scheduler: Scheduler = None,
    scheduler_file: SchedulerFile = None,
    quiet: Quiet = False,
) -> None:
    """Choose band cuts on your own sites: each candidate harmonizes a sample of every site in
    memory and is measured as compare measures; the best by a stated rule is fitted."""
    import json

    from svdharm_cli.evidence.tuning import DEFAULT_GRID
    from svdharm_cli.files.atomic import write_text
    from svdharm_cli.run import fitting, tuning
    from svdharm_cli.run.results import Status
    from svdharm_cli.ui import display

    table, read = manifest_options(
        manifest, read_options(max_pixels, False, slice_axis, MaskChoice.NONE, None, kind)
    )
    if table is not None and sites:
        raise typer.BadParameter("give SITE folders or --manifest, not both", param_hint="SITE")
    if label is not None and table is None:
        raise typer.BadParameter("--label names a column of --manifest", param_hint="--label")
    modes = _modes(mask, read.mask_files is not None)
    grid = _grid(fractions_grid) or DEFAULT_GRID
    candidates = [tuning.Candidate(f, m) for m in modes for f in grid]
    where = worker_options(workers, scheduler, scheduler_file, "cpu")

    def plan(p: tuning.Plan) -> None:
        display.print_line(p.describe(), quiet)

    with on_workers("tuning", quiet, where, "nothing") as (executor, on_result):
        result, reference = tuning.tune(
            sites or [],
            read,
            output=output,
            manifest=table,
            label=label,
            target=target_site,
            candidates=candidates,
            sample=sample,
            seed=seed,
            folds=folds,
            margin=margin,
            on_plan=plan,
            on_result=on_result,
            executor=executor,
        )
    display.report_failures(result.problems)
    fitting.save_reference(reference, output)
    data = result.to_dict()
    if json_path is not None:
        write_text(json_path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    if report is not None:
        write_text(report, render_html(data))
    summary(data, quiet)
    for target in (output, json_path, report):
        if target is not None:
            display.print_line(f"written: {target}", quiet)
    if any(p.status is Status.FAILED for p in result.problems):
        raise typer.Exit(1)


def _modes(value: str, have_files: bool) -> list[str]:
    """The masks to try, in order; ``dir`` needs mask files."""
    modes = [m.strip().lower() for m in value.split(",") if m.strip()]
    if not modes:
        return ["dir" if have_files else "none"]
    for m in modes:
        if m not in MASK_MODES:
            raise typer.BadParameter(
                f"{m!r} is none of {', '.join(MASK_MODES)}", param_hint="--mask"
            )
    if "dir" in modes and not have_files:
        raise typer.BadParameter("dir needs a manifest with a mask column", param_hint="--mask")
    return list(dict.fromkeys(modes))


def _grid(values: Optional[list[str]]) -> list[tuple[float, ...]]:
    """``--fractions-grid`` values as cut sets, each checked, repeats dropped."""
    sets: list[tuple[float, ...]] = []
    for value in values or ():
        for part in value.split(";"):
            if part.strip():
                try:
                    cuts = fractions_option(part)
                except typer.BadParameter as exc:
                    raise typer.BadParameter(
                        f"{part.strip()!r}: {exc.message}", param_hint="--fractions-grid"
                    ) from None
                if cuts is not None and cuts not in sets:
                    sets.append(cuts)
    return sets


def _figure(measured: dict[str, Any] | None, key: str) -> str:
    if not measured or measured.get(key) is None:
        return "-"
    return f"{measured[key]:.3f}"


def summary(data: dict[str, Any], quiet: bool) -> None:
    """The chosen cuts and the figures that chose them, against the unharmonized inputs."""
    if quiet:
        return
    from svdharm_cli.ui.display import safe, stdout

    out = stdout()
    chosen = data["candidates"][data["chosen"]["index"]]
    base = data["unharmonized"]
    cuts = ",".join(f"{f:g}" for f in chosen["fractions"])
    line = (
        f"chosen: --fractions {cuts}"
        + ("" if chosen["mask"] == "none" else f" --mask {chosen['mask']}")
        + f": site separability {_figure(chosen['separability'], 'accuracy')} "
        f"(unharmonized {_figure(base['separability'], 'accuracy')}, "
        f"chance {base['separability']['chance']:.3f})"
    )
    if data["label"] is not None:
        line += (
            f"; {data['label']!r} leave-one-site-out "
            f"{_figure(chosen['label'], 'leave_one_site_out')} "
            f"(unharmonized {_figure(base['label'], 'leave_one_site_out')}), "
            f"cross-validated {_figure(chosen['label'], 'accuracy')} "
            f"(unharmonized {_figure(base['label'], 'accuracy')})"
        )
    out.print(safe(line))
    for sentence in data["reasoning"]:
        out.print(safe(sentence))


def render_html(data: dict[str, Any]) -> str:
    """A self-contained page: the rule, the reasoning, every candidate's figures and the
    plot of separability against label accuracy, the chosen point marked."""
    from svdharm_cli import __version__
    from svdharm_cli.ui.html import templates

    return (
        templates()
        .get_template("tune.html.j2")
        .render(data=data, version=__version__, plot=_plot(data))
    )


def _plot(data: dict[str, Any]) -> str:
    from svdharm_cli.ui.html import figure_uri, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    labelled = data["label"] is not None
    key = "leave_one_site_out" if labelled else None

    def y_of(row: dict[str, Any]) -> float | None:
        if not labelled:
            return row["wasserstein"]
        measured = row["label"] or {}
        value = measured.get(key)
        return measured.get("accuracy") if value is None else value

    chosen = data["chosen"]["index"]
    for k, row in enumerate(data["candidates"]):
        x, y = row["separability"]["accuracy"], y_of(row)
        if x is None or y is None:
            continue
        ax.plot(x, y, "o", color="tab:blue" if row["eligible"] else "tab:gray", alpha=0.8)
        ax.annotate(str(k + 1), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if k == chosen:
            ax.plot(x, y, "o", markersize=14, markerfacecolor="none", color="tab:red")
    base = data["unharmonized"]
    bx, by = base["separability"]["accuracy"], y_of(base)
    if bx is not None and by is not None:
        ax.plot(bx, by, "s", color="black", label="unharmonized")
    chance = base["separability"]["chance"]
    ax.axvline(chance, color="gray", linestyle=":", linewidth=1, label="site chance")
    ax.set_xlabel("site separability (cross-validated accuracy; lower is better)")
    ax.set_ylabel(
        f"{data['label']!r} accuracy, leave one site out (higher is better)"
        if labelled
        else "mean Wasserstein distance between sites"
    )
    ax.set_title(
        "candidates (numbers as in the table; red ring: chosen; "
        "gray: set aside by the label guard)",
        fontsize=8,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_uri(fig)
