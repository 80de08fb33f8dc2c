"""What the HTML pages share: their templates, and figures inlined as ``data:`` URIs."""

from __future__ import annotations

import base64
import io
from typing import Any


def templates() -> Any:
    """The Jinja environment of ``ui/templates`` (autoescaped)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("svdharm_cli.ui", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_uri(fig: Any) -> str:
    """A matplotlib figure as an inline PNG ``data:`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
