"""Readers and writers: every supported layout round-trips; unsupported ones say why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image

from svdharm_cli.errors import ImageError
from svdharm_cli.files.formats import WriteOptions, handler_for, read_image, write_image
from tests.images import load

RNG = np.random.default_rng(7)


def _roundtrip(path: Path, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(path)
    out = tmp_path / ("out" + path.suffix)
    write_image(image, image.frames, out, WriteOptions())
    return load(path), load(out)


@pytest.mark.parametrize(
    ("mode", "shape", "dtype", "channels", "alpha"),
    [
        ("L", (20, 30), np.uint8, 1, False),
        ("LA", (20, 30, 2), np.uint8, 1, True),
        ("RGB", (20, 30, 3), np.uint8, 3, False),
        ("RGBA", (20, 30, 4), np.uint8, 3, True),
        ("I;16", (20, 30), np.uint16, 1, False),
    ],
)
def test_png_modes_roundtrip_exactly(tmp_path: Path, mode, shape, dtype, channels, alpha) -> None:
    top = np.iinfo(dtype).max
    arr = RNG.integers(0, top, shape, endpoint=True).astype(dtype)
    path = tmp_path / "in.png"
    Image.fromarray(arr).save(path)
    image = read_image(path)
    assert image.channel_count == channels
    assert (image.alpha is not None) == alpha
    assert image.bits == (16 if dtype == np.uint16 else 8)
    assert image.channels.min() >= 0 and image.channels.max() <= 1
    before, after = _roundtrip(path, tmp_path)
    assert after.dtype == before.dtype and after.shape == before.shape
    np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize(
    ("planes", "greyscale", "alpha"), [(3, False, False), (4, False, True), (2, True, True)]
)
def test_16bit_colour_png_keeps_16_bits(
    tmp_path: Path, planes: int, greyscale: bool, alpha: bool
) -> None:
    arr = RNG.integers(0, 65535, (12, 17, planes), endpoint=True).astype(np.uint16)
    path = tmp_path / "deep.png"
    with open(path, "wb") as f:
        png.Writer(17, 12, greyscale=greyscale, alpha=alpha, bitdepth=16).write(
            f, arr.reshape(12, -1)
        )
    image = read_image(path)
    assert image.bits == 16
    assert image.channel_count == planes - int(alpha)
    # Values below 256 prove the low byte was kept (Pillow would have dropped it).
    np.testing.assert_allclose(image.channels[0] * 65535, arr[:, :, 0], atol=1e-6)
    out = tmp_path / "out.png"
    write_image(image, image.frames, out, WriteOptions())
    with open(out, "rb") as f:
        _, _, rows, info = png.Reader(file=f).asDirect()
        written = np.vstack([np.asarray(r) for r in rows]).reshape(arr.shape)
    assert info["bitdepth"] == 16 and info["planes"] == planes
    np.testing.assert_array_equal(written, arr)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_roundtrip_close(tmp_path: Path, mode: str) -> None:
    yy, xx = np.mgrid[0:32, 0:40]
    arr = ((xx * 5 + yy * 3) % 256).astype(np.uint8)
    if mode == "RGB":
        arr = np.stack([arr, arr[::-1], 255 - arr], axis=-1)
    path = tmp_path / "in.jpg"
    Image.fromarray(arr).save(path, quality=98, subsampling=0)
    before, after = _roundtrip(path, tmp_path)
    assert after.shape == before.shape and after.dtype == np.uint8
    assert np.abs(after.astype(int) - before.astype(int)).mean() < 2.0


def test_icc_profile_and_dpi_kept(tmp_path: Path) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "in.png"
    Image.fromarray(RNG.integers(0, 255, (8, 8, 3)).astype(np.uint8)).save(
        path, icc_profile=icc, dpi=(300, 300)
    )
    image = read_image(path)
    out = tmp_path / "out.png"
    write_image(image, image.frames, out, WriteOptions())
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == icc
        assert round(im.info["dpi"][0]) == 300


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: Image.new("P", (8, 8)).save(p), "palette"),
        (lambda p: Image.new("1", (8, 8)).save(p), "1-bit"),
        (lambda p: p.write_bytes(b""), "not a valid PNG"),
        (lambda p: p.write_text("hello, I am text"), "not a valid PNG"),
    ],
)
def test_unsupported_png_inputs_name_file_and_reason(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert str(path) in info.value.message and message in info.value.message


def test_truncated_png_and_cmyk_jpeg(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(RNG.integers(0, 255, (64, 64)).astype(np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageError, match="cut.png: cannot decode PNG"):
        read_image(cut)
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8)).save(cmyk)
    with pytest.raises(ImageError, match="CMYK"):
        read_image(cmyk)


def test_too_many_pixels_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (200, 100)).save(path)
    with pytest.raises(ImageError, match="exceeds the limit"):
        read_image(path, max_pixels=19_999)
    assert read_image(path, max_pixels=20_000).channels.shape == (1, 100, 200)


def test_handlers_by_extension_and_content(tmp_path: Path) -> None:
    noext = tmp_path / "scan"
    Image.new("L", (4, 4)).save(noext, format="PNG")
    assert handler_for(noext) is not None and handler_for(noext).name == "png"
    upper = tmp_path / "X.JPEG"
    Image.new("L", (4, 4)).save(upper, format="JPEG")
    assert handler_for(upper).name == "jpeg"
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert handler_for(text) is None
