"""The HTML page of ``svdharm compare``: groups, separability, distances, statistics plots."""

from __future__ import annotations

from typing import Any

import numpy as np

from svdharm_cli import __version__
from svdharm_cli.evidence.compare import Comparison
from svdharm_cli.ui.html import figure_uri, pyplot, templates


def render_html(result: Comparison) -> str:
    """A self-contained page: groups, separability, distances, statistics plots."""
    sep = result.separability
    if sep["accuracy"] is None:
        verdict = f"Separability could not be measured: {sep.get('reason', '')}."
    else:
        verdict = (
            f"A classifier tells the groups apart with {100 * sep['accuracy']:.0f} % accuracy "
            f"({sep['folds']}-fold cross-validated; chance is {100 * sep['chance']:.0f} %): run "
            "svdharm compare on the inputs and on the harmonized outputs, and a drop towards "
            "chance is the evidence that harmonization removed what told the sites apart."
        )
    return (
        templates()
        .get_template("compare.html.j2")
        .render(
            data=result.to_dict(),
            version=__version__,
            verdict=verdict,
            statistics_plot=_statistics_plot(result),
            measures_plot=_measures_plot(result.to_dict()),
            histogram=_histogram(result),
        )
    )


def _statistics_plot(result: Comparison) -> str:
    from svdharm_cli.ui.panel import component_names

    plt = pyplot()
    n = len(result.fractions) + 1
    names = component_names(n)
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 5.2), squeeze=False)
    rng = np.random.default_rng(0)
    for row, (label, attr) in enumerate((("mean", "means"), ("std", "stds"))):
        for i in range(n):
            ax = axes[row, i]
            for k, group in enumerate(result.groups):
                values = [
                    float(getattr(s, attr)[:, i].mean()) for s in result.samples if s.group == k
                ]
                x = k + rng.uniform(-0.15, 0.15, len(values))
                ax.plot(x, values, "o", markersize=4, alpha=0.7, label=group["name"])
            ax.set_xticks(range(len(result.groups)))
            ax.set_xticklabels([g["name"] for g in result.groups], fontsize=7, rotation=20)
            ax.set_title(f"{names[i]}: {label}", fontsize=9)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    uri = figure_uri(fig)
    plt.close(fig)
    return uri


def _histogram(result: Comparison) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for k, group in enumerate(result.groups):
        members = [s.pixels.mean(axis=0) for s in result.samples if s.group == k]
        if members:
            ax.hist(
                np.concatenate(members), bins=80, histtype="step", density=True, label=group["name"]
            )
    ax.set_xlabel(f"intensity ({result.unit} units, channel mean)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    uri = figure_uri(fig)
    plt.close(fig)
    return uri


def _measures_plot(data: dict[str, Any]) -> str | None:
    """Bars of each measure, before and (with a reference) after, each with its chance."""
    rows = [
        ("site separability", data["separability"], (data.get("after") or {}).get("separability"))
    ]
    label = data.get("label")
    if label:
        after = (data.get("after") or {}).get("label") or {}
        rows.append(("label accuracy", {**label}, after and {**after}))
        rows.append(
            (
                "label, leave one site out",
                {"accuracy": label.get("leave_one_site_out"), "chance": label.get("chance")},
                after
                and {"accuracy": after.get("leave_one_site_out"), "chance": after.get("chance")},
            )
        )
    if len(rows) == 1 and data.get("after") is None:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    for i, (_, before, after) in enumerate(rows):
        for offset, values, colour, what in (
            (-0.2, before, "#888", "before"),
            (0.2, after, "#1f5fbf", "after"),
        ):
            if values and values.get("accuracy") is not None:
                ax.bar(
                    i + offset,
                    values["accuracy"],
                    0.36,
                    color=colour,
                    label=what if i == 0 else None,
                )
        if before and before.get("chance") is not None:
            ax.hlines(
                before["chance"],
                i - 0.42,
                i + 0.42,
                colors="#c00",
                linestyles="dashed",
                label="chance" if i == 0 else None,
            )
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r[0] for r in rows], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    uri = figure_uri(fig)
    plt.close(fig)
    return uri
