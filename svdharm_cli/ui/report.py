"""A self-contained HTML QA report of one run, from its JSON log and its files.

The page (one file; images and plots inline as ``data:`` URIs, a Content-Security-Policy
that forbids any network load) shows the run's parameters and reference, the counts and
every failure with its message, a gallery of before/after thumbnails, the per-component
statistics of inputs and outputs against the reference, and for augment runs the
distribution of the coefficients drawn.

Size stays bounded whatever the run: the gallery and the statistics use a sample of at most
:data:`SAMPLE` inputs evenly spaced in path order (the page says so), and the coefficient
histogram uses every output, which is only numbers. Failures are listed in full.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli import __version__
from svdharm_cli.errors import ImageError, SkipImage, UsageError
from svdharm_cli.files.atomic import write_text
from svdharm_cli.files.formats import Image
from svdharm_cli.run.results import Status
from svdharm_cli.ui.html import figure_uri, pyplot, templates

SAMPLE = 24
THUMBNAIL = 160


def write_report(log_path: Path, out_path: Path) -> Path:
    """Build the report of the run logged at ``log_path`` and write it atomically."""
    try:
        log = json.loads(log_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read run log {log_path}: {exc}") from exc
    if not isinstance(log, dict) or log.get("format") != "svdharm-run-log":
        raise UsageError(f"{log_path} is not an svdharm run log")
    # A file name that is not UTF-8 (surrogate escapes) is shown with backslash escapes.
    html = render(log, log_path).encode("utf-8", "backslashreplace").decode("utf-8")
    write_text(out_path, html)
    return out_path


def render(log: dict[str, Any], log_path: Path) -> str:
    in_root, out_root = _roots(log, log_path)
    files = log["files"]
    ok = [f for f in files if f["status"] == Status.OK and f["outputs"]]
    pairs = _load_pairs(_evenly(ok, SAMPLE), in_root, out_root)
    gallery = [_gallery_item(record, source, result) for record, source, result in pairs]
    stats_plot, stats_note = _statistics_plot(log, pairs)
    coefficient_plot, coefficient_note = _coefficient_plot(log)
    return (
        templates()
        .get_template("report.html.j2")
        .render(
            log=log,
            version=__version__,
            log_name=log_path.name,
            outputs_written=sum(len(f["outputs"]) for f in files),
            failures=[f for f in files if f["status"] == Status.FAILED],
            skipped=[f for f in files if f["status"] == Status.SKIPPED],
            gallery=gallery,
            gallery_note=_sample_note(len(gallery), len(ok), "before/after pairs"),
            stats_plot=stats_plot,
            stats_note=stats_note,
            coefficient_plot=coefficient_plot,
            coefficient_note=coefficient_note,
        )
    )


def _roots(log: dict[str, Any], log_path: Path) -> tuple[Path, Path]:
    """Where the inputs and outputs are: as logged (absolute), else relative to the log."""
    in_root = Path(log.get("input_root_absolute") or log["input"])
    out_root = Path(log.get("output_absolute") or log["output"])
    if not out_root.is_dir():
        out_root = log_path.parent
    return in_root, out_root


def _evenly(items: list[Any], k: int) -> list[Any]:
    if len(items) <= k:
        return items
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in idx]


def _sample_note(shown: int, total: int, what: str) -> str:
    if shown == total:
        return f"All {total} {what}."
    return f"A sample of {shown} of {total} processed inputs, evenly spaced in path order."


def _load_pairs(
    sample: list[dict[str, Any]], in_root: Path, out_root: Path
) -> list[tuple[dict[str, Any], Image, Image]]:
    """Each sampled input with its first output, read once for the gallery and the plots;
    pairs that can no longer be read (moved or deleted since the run) are left out."""
    from svdharm_cli.files.formats import read_image

    pairs = []
    for record in sample:
        try:
            source = read_image(in_root / record["path"])
            result = read_image(out_root / record["outputs"][0]["path"])
        except (ImageError, SkipImage, OSError):
            continue
        pairs.append((record, source, result))
    return pairs


def _png_uri(rgb: np.ndarray, max_side: int | None = THUMBNAIL) -> str:
    from PIL import Image as PILImage

    image = PILImage.fromarray(np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    if max_side:
        image.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _gallery_item(record: dict[str, Any], source: Image, result: Image) -> dict[str, str]:
    from svdharm_cli.ui.panel import display_window, to_display

    return {
        "path": record["path"],
        "kind": record.get("kind") or "",
        "output": record["outputs"][0]["path"],
        "before": _png_uri(to_display(source.frames[0], window=display_window(source))),
        "after": _png_uri(to_display(result.frames[0], window=display_window(source))),
    }


def _statistics_plot(
    log: dict[str, Any], pairs: list[tuple[dict[str, Any], Image, Image]]
) -> tuple[str | None, str]:
    """Per-component mean and std of each sampled input (before) and its output (after)."""
    from svdharm_cli.core.methods import channel_statistics

    fractions = log["parameters"]["fractions"]
    if pairs:  # one kind of image per plot: the first sampled pair's unit and channels
        kind = (pairs[0][1].unit, pairs[0][1].channel_count)
        pairs = [pair for pair in pairs if (pair[1].unit, pair[1].channel_count) == kind]
    before = [channel_statistics(s.frames[0], fractions, _mask(s)) for _, s, _ in pairs]
    after = [channel_statistics(r.frames[0], fractions, _mask(r)) for _, _, r in pairs]
    if not before:
        return None, ""
    plt = pyplot()

    from svdharm_cli.ui.panel import component_names

    n = len(fractions) + 1
    names = component_names(n)
    ref = log.get("reference")
    first, source = pairs[0][0], pairs[0][1]
    ref_stats = _reference_stats(ref, source.unit, source.channel_count, first.get("kind") or "")
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 5.2), squeeze=False)
    x = np.arange(len(before))
    for row, (label, which) in enumerate((("mean", 0), ("std", 1))):
        for i in range(n):
            ax = axes[row, i]
            b = np.array([float(s[which][:, i].mean()) for s in before])
            a = np.array([float(s[which][:, i].mean()) for s in after])
            ax.vlines(x, np.minimum(a, b), np.maximum(a, b), color="#bbbbbb", linewidth=0.8)
            ax.plot(x, b, "o", color="#888888", markersize=4, label="input")
            ax.plot(x, a, "o", color="#1f5fbf", markersize=4, label="output")
            if ref_stats is not None:
                ax.axhline(
                    ref_stats[which][:, i].mean(),
                    color="#c62828",
                    linestyle="--",
                    label="reference",
                )
            ax.set_title(f"{names[i]}: {label}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xticks([])
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    uri = figure_uri(fig)
    plt.close(fig)
    note = (
        f"Each column is one component; each dot one sampled file ({len(before)} shown), "
        "averaged over colour channels; "
        + ("the dashed line is the reference." if ref_stats is not None else "no reference.")
    )
    return uri, note


def _mask(image: Image) -> np.ndarray | None:
    return None if image.mask is None else image.mask[0]


def _reference_stats(
    ref: dict[str, Any] | None, unit: str, channels: int, kind: str = ""
) -> tuple[np.ndarray, np.ndarray] | None:
    """The statistics of the reference entry for ``kind``, ``unit`` and ``channels``, as
    the log recorded them (None without a reference or such an entry; logs of version 0.1
    held one normalized entry as ``mean`` and ``std``; a reference without kinds serves
    every kind)."""
    if not ref:
        return None
    entries = ref.get("entries") or [{"unit": "normalized", **ref}]
    with_kinds = any(isinstance(e, dict) and e.get("kind") for e in entries)
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("unit") != unit:
            continue
        if with_kinds and entry.get("kind", "") != kind:
            continue
        try:
            mean = np.asarray(entry["mean"], dtype=float)
            std = np.asarray(entry["std"], dtype=float)
        except (KeyError, ValueError, TypeError):
            return None
        if mean.shape[0] == channels:
            return mean, std
    return None


def _coefficient_plot(log: dict[str, Any]) -> tuple[str | None, str]:
    rows = [
        row
        for f in log["files"]
        for o in f["outputs"]
        if o.get("coefficients")
        for row in o["coefficients"]
    ]
    if not rows:
        return None, ""
    plt = pyplot()

    from svdharm_cli.ui.panel import component_names

    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    n = values.shape[1]
    names = component_names(n)
    low, high = log["parameters"]["low"], log["parameters"]["high"]
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.6), squeeze=False)
    for i in range(n):
        ax = axes[0, i]
        col = values[:, i][~np.isnan(values[:, i])]
        if col.size:
            ax.hist(col, bins=20, range=(low, high) if low < high else None, color="#1f5fbf")
        else:
            ax.text(0.5, 0.5, "matched to\nthe reference", ha="center", va="center")
        ax.set_title(names[i], fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    uri = figure_uri(fig)
    plt.close(fig)
    return (
        uri,
        f"All {len(rows)} coefficient rows (one per output and channel), Uniform[{low}, {high}].",
    )
