"""The band panel: layout and tile values after the documented display mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svdharm_cli.ui.panel import (
    GAP,
    LABEL_HEIGHT,
    MARGIN,
    band_gain,
    build_panel,
    column_width,
    render,
    tile_origin,
)
from tests import oracle
from tests.conftest import svdharm
from tests.images import save, textured


@pytest.mark.parametrize("channels", [1, 3])
def test_tiles_are_the_components_after_display_mapping(channels: int) -> None:
    x = textured(48, 64, seed=4, channels=channels)
    panel = build_panel(x)
    assert len(panel.tiles) == 5  # input, base, two bands, finest band
    comps = np.stack([oracle.components(ch) for ch in x], axis=1)  # (4, c, h, w)
    expect_input = np.moveaxis(x, 0, -1)
    np.testing.assert_allclose(panel.tiles[0][..., :channels], expect_input, atol=1e-12)
    np.testing.assert_allclose(
        panel.tiles[1][..., :channels], np.moveaxis(np.clip(comps[0], 0, 1), 0, -1), atol=1e-9
    )
    for k in range(1, 4):
        gain = 0.5 / (4 * comps[k].std())
        assert band_gain(comps[k]) == pytest.approx(gain, rel=1e-6)
        expected = np.clip(0.5 + gain * np.moveaxis(comps[k], 0, -1), 0, 1)
        np.testing.assert_allclose(panel.tiles[k + 1][..., :channels], expected, atol=1e-6)
    # Energy shares per channel sum to one.
    for c in range(channels):
        assert sum(r.energy_share for r in panel.rows if r.channel == c) == pytest.approx(1.0)
    # r = 48: cuts at 3, 10 and 24 singular values.
    assert [(r.first_rank, r.last_rank) for r in panel.rows[:4]] == [
        (1, 3),
        (4, 10),
        (11, 24),
        (25, 48),
    ]


def test_rendered_layout_and_pixels() -> None:
    x = textured(40, 160, seed=5)
    panel = build_panel(x)
    image = render(panel)
    h, w = 40, 160
    col = column_width(panel.labels, w)
    assert col >= w
    assert image.shape == (2 * MARGIN + LABEL_HEIGHT + h, 2 * MARGIN + 5 * col + 4 * GAP, 3)
    for k, tile in enumerate(panel.tiles):
        x0, y0 = tile_origin(k, col)
        region = image[y0 : y0 + h, x0 : x0 + w]
        np.testing.assert_array_equal(region, np.rint(tile * 255).astype(np.uint8))


def test_bands_command_on_16bit_png_and_dicom(tmp_path: Path) -> None:
    from tests.dicom_files import make_dicom, radiograph

    png = save(tmp_path / "deep.png", textured(50, 60, seed=6), bits=16)
    dcm = make_dicom(tmp_path / "m1.dcm", radiograph(), photometric="MONOCHROME1")
    for src in (png, dcm):
        out = tmp_path / f"{src.stem}_panel.png"
        result = svdharm("bands", src, "-o", out)
        assert result.code == 0, result.stderr
        assert "finest band" in result.stdout and "energy" in result.stdout
        with Image.open(out) as im:
            assert im.mode == "RGB" and im.width > 5 * 50
    assert svdharm("bands", tmp_path / "missing.png").code == 1


def test_labels_do_not_overlap_on_small_images() -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=13)
    panel = build_panel(textured(128, 128, seed=8))
    col = column_width(panel.labels, 128)
    for title, subtitle in panel.labels:
        assert font.getlength(title) + GAP <= col and font.getlength(subtitle) + GAP <= col
    assert render(panel).shape[1] == 2 * MARGIN + 5 * col + 4 * GAP


def test_dicom_ct_tile_has_real_contrast(tmp_path: Path) -> None:
    """pydicom's signed CT_small.dcm shows through its own window, not as flat gray."""
    from svdharm_cli.files.formats import read_image
    from svdharm_cli.ui.panel import display_window, to_display
    from tests.dicom_files import installed_files

    files = {p.name: p for p in installed_files()}
    image = read_image(files["CT_small.dcm"])
    tile = to_display(image.frames[0], window=display_window(image))
    assert tile.std() > 0.2 and 0.05 < tile.mean() < 0.95
    assert len(np.unique(np.rint(tile[..., 0] * 255))) > 100  # a gray scale, not flat
    out = tmp_path / "ct.png"
    assert svdharm("bands", files["CT_small.dcm"], "-o", out).code == 0
    with Image.open(out) as im:
        first = np.asarray(im)[MARGIN + LABEL_HEIGHT :, MARGIN : MARGIN + 128]
    assert first.std() > 40
