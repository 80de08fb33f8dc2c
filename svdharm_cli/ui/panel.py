"""The band panel: an image, its base and each band side by side, labelled (paper Figure 1).

Display mapping (what a tile shows, in 8 bits):

- the input and the base are intensities: ``clip(x, 0, 1) * 255``, rounded;
- a band is signed and small, so it is shown around mid-gray with a contrast stretch:
  ``clip(0.5 + g * c, 0, 1) * 255`` with ``g = 0.5 / (4 * std(c))`` (so +-4 standard
  deviations span black to white); the gain ``g`` is printed in the tile's label.

Normalized values are shown as they are (so a MONOCHROME1 DICOM is shown in MONOCHROME2
polarity); Hounsfield units and raw NIfTI values through a window spanning the input's 1st to
99th percentile, since they have no [0, 1] range.
Tiles wider or taller than :data:`MAX_TILE` pixels are shrunk for display (the statistics
are always those of the full-size image). This module only computes arrays and draws;
the CLI reads and writes the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from svdharm_cli.core.bands import DEFAULT_FRACTIONS, decompose
from svdharm_cli.core.device import CPU, Device
from svdharm_cli.files.formats import NORMALIZED, Image

MAX_TILE = 512
LABEL_HEIGHT = 44
GAP = 8
MARGIN = 8
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class ComponentInfo:
    """One component of one channel: ranks, share of the channel's energy (sum of squared
    singular values), mean and std in normalized units."""

    channel: int
    name: str
    first_rank: int
    last_rank: int
    energy_share: float
    mean: float
    std: float


@dataclass(frozen=True)
class Panel:
    """Tiles (float display values in [0, 1], ``(h, w, c)``) with their labels, and the rows
    of the statistics table."""

    tiles: list[np.ndarray]
    labels: list[tuple[str, str]]
    rows: list[ComponentInfo]


def component_names(n_components: int) -> list[str]:
    return ["base"] + [f"band {i}" for i in range(1, n_components - 1)] + ["finest band"]


def display_window(image: Image, frame: int = 0) -> tuple[float, float]:
    """The working-unit values shown black and white.

    DICOM: the image's own VOI window (Window Center/Width, the first when there are
    several, also from the enhanced functional groups), else the frame's 1st to 99th
    percentile. MONOCHROME1 is already inverted in working units, so it shows as a viewer
    shows it. Other normalized images: [0, 1]; Hounsfield units and raw NIfTI values
    without a window: the 1st to 99th percentile.
    """
    if image.format == "dicom":
        window = _voi_window(image.meta["dataset"])
        if window is not None:
            center, width = window
            low, high = center - width / 2, center + width / 2
            if image.unit != NORMALIZED:
                return low, high
            offset, scale = image.meta["scale"]
            low, high = (low - offset) / scale, (high - offset) / scale
            if str(image.meta["dataset"].PhotometricInterpretation) == "MONOCHROME1":
                low, high = 1.0 - high, 1.0 - low
            return low, high
    elif image.unit == NORMALIZED:
        return 0.0, 1.0
    lo, hi = np.percentile(image.frames[frame], [1, 99])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _voi_window(ds: object) -> tuple[float, float] | None:
    """The first Window Center/Width of a data set or its functional groups, if valid."""
    places = [ds]
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = getattr(ds, group, None) or []
        if items:
            places.extend(getattr(items[0], "FrameVOILUTSequence", None) or [])
    for item in places:
        center, width = getattr(item, "WindowCenter", None), getattr(item, "WindowWidth", None)
        if center is None or width is None:
            continue
        try:
            c = float(center[0] if isinstance(center, (list, tuple)) else center)
            w = float(width[0] if isinstance(width, (list, tuple)) else width)
        except (TypeError, ValueError, IndexError):
            continue
        if np.isfinite(c) and np.isfinite(w) and w > 0:
            return c, w
    return None


def build_panel(
    channels: np.ndarray,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    window: tuple[float, float] = (0.0, 1.0),
    device: Device = CPU,
) -> Panel:
    """Decompose ``(c, h, w)`` channels (on ``device``) and lay out what the panel shows;
    the input and the base are shown through ``window``."""
    bands = [decompose(device.put(ch), fractions) for ch in channels]
    comps = np.stack([device.host(b.components()) for b in bands], axis=1)  # (n, c, h, w)
    n = comps.shape[0]
    r = min(channels.shape[1:])
    edges = (0, *bands[0].ranks, r)
    total = float(np.einsum("ijkl,ijkl->", comps, comps)) or 1.0
    names = component_names(n)
    tiles = [to_display(channels, window=window)]
    colour = "gray" if channels.shape[0] == 1 else f"{channels.shape[0]} channels"
    labels = [("input", f"{channels.shape[2]}x{channels.shape[1]}, {colour}")]
    rows = []
    for i in range(n):
        energy = float(np.einsum("jkl,jkl->", comps[i], comps[i])) / total
        first, last = edges[i] + 1, max(edges[i + 1], edges[i] + 1)
        if i == 0:
            tiles.append(to_display(comps[i], window=window))
            stretch = "intensity"
        else:
            gain = band_gain(comps[i])
            tiles.append(to_display(comps[i], gain))
            stretch = f"mid-gray, x{gain:.3g}"
        labels.append(
            (f"{names[i]}: ranks {first}-{last}", f"energy {100 * energy:.3g}%, {stretch}")
        )
        for k, b in enumerate(bands):
            m, s = b.stats
            share = float(np.sum(comps[i, k] ** 2)) / (float(np.sum(comps[:, k] ** 2)) or 1.0)
            rows.append(ComponentInfo(k, names[i], first, last, share, float(m[i]), float(s[i])))
    rows.sort(key=lambda row: row.channel)
    return Panel(tiles, labels, rows)


def band_gain(component: np.ndarray) -> float:
    """Contrast stretch of a signed band: +-4 standard deviations fill the display range."""
    return 0.5 / max(4.0 * float(component.std()), 1e-9)


def to_display(
    channels: np.ndarray,
    gain: float | None = None,
    window: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """``(c, h, w)`` to display values ``(h, w, 3)`` in [0, 1] (gray repeated to RGB): a
    band around mid-gray with ``gain``, else intensities through ``window``."""
    lo, hi = window
    x = 0.5 + gain * channels if gain is not None else (channels - lo) / (hi - lo)
    x = np.clip(np.moveaxis(x, 0, -1), 0.0, 1.0)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def to_uint8(display: np.ndarray) -> np.ndarray:
    return np.rint(display * 255).astype(np.uint8)


def column_width(labels: Sequence[tuple[str, str]], tile_width: int) -> int:
    """A column wide enough for its tile and both lines of every label (so labels never run
    into the next column, even for 128-pixel images)."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=13)
    text = max(font.getlength(line) for label in labels for line in label)
    return max(tile_width, 150, int(np.ceil(text)) + GAP)


def tile_origin(index: int, tile_width: int) -> tuple[int, int]:
    """Top-left corner ``(x, y)`` of tile ``index`` in the rendered panel."""
    return MARGIN + index * (tile_width + GAP), MARGIN + LABEL_HEIGHT


def render(panel: Panel) -> np.ndarray:
    """Draw the panel as an RGB uint8 array with each tile's two-line label above it."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    tiles = [to_uint8(t) for t in panel.tiles]
    h, w = tiles[0].shape[:2]
    scale = min(1.0, MAX_TILE / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        tiles = [
            np.asarray(PILImage.fromarray(t).resize(size, PILImage.Resampling.LANCZOS))
            for t in tiles
        ]
        h, w = tiles[0].shape[:2]
    tile_w = column_width(panel.labels, w)
    width = 2 * MARGIN + len(tiles) * tile_w + (len(tiles) - 1) * GAP
    height = 2 * MARGIN + LABEL_HEIGHT + h
    canvas = PILImage.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    for k, (tile, (title, subtitle)) in enumerate(zip(tiles, panel.labels)):
        x, y = tile_origin(k, tile_w)
        canvas.paste(PILImage.fromarray(tile), (x, y))
        draw.text((x, MARGIN), title, fill=(0, 0, 0), font=font)
        draw.text((x, MARGIN + 18), subtitle, fill=(70, 70, 70), font=font)
    return np.asarray(canvas)
