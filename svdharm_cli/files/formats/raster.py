"""PNG and JPEG through Pillow, and 16-bit colour PNG through pypng.

Pillow is called directly: imageio's plugin layer in front of it cost about 0.6 ms per read
and per write here (measured on 28x28 PNGs), more than decoding the image itself.

What is read, and written back the same way:

- 8-bit grayscale (``L``), grayscale + alpha (``LA``), ``RGB``, ``RGBA``; 16-bit grayscale
  PNG (``I;16``).
- 16-bit colour or grayscale+alpha PNG: Pillow silently reduces these to 8 bits, so they go
  through pypng, which keeps all 16.
- JPEG: 8-bit ``L`` and ``RGB``; outputs are re-encoded at ``--jpeg-quality`` with 4:4:4
  chroma. ICC profile, resolution and EXIF are copied; pixels are never rotated.

Refused with a reason: palette PNG (values are indices into a colour table), 1-bit images,
CMYK JPEG, 32-bit integer and float images, and any other Pillow mode.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli.errors import ImageError, exception_name
from svdharm_cli.files.formats import (
    NORMALIZED,
    READ_ALL,
    FileByFile,
    Image,
    ImageInfo,
    Reading,
    WriteOptions,
    check_pixels,
    denormalize,
    normalize,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

_MODES: dict[str, tuple[int, bool]] = {
    # Pillow mode -> (bits, has alpha)
    "L": (8, False),
    "LA": (8, True),
    "RGB": (8, False),
    "RGBA": (8, True),
    "I;16": (16, False),
    "I;16B": (16, False),
    "I;16L": (16, False),
}
_REFUSED: dict[str, str] = {
    "P": "palette images are not supported (their values are colour-table indices)",
    "PA": "palette images are not supported (their values are colour-table indices)",
    "1": "1-bit images are not supported (they hold labels, not intensities)",
    "CMYK": "CMYK images are not supported (convert them to RGB first)",
    "I": "32-bit integer images are not supported",
    "F": "floating-point images are not supported",
}
_KEPT_META = ("icc_profile", "dpi", "exif")
_PNG_CHANNELS = {0: 1, 2: 3, 4: 1, 6: 3}  # IHDR colour type -> colour channels (alpha apart)


@dataclass(frozen=True)
class _PillowFormat(FileByFile):
    name: str
    suffixes: tuple[str, ...]
    signature: bytes

    def can_read(self, path: Path, head: bytes) -> bool:
        return path.suffix.lower() in self.suffixes or head.startswith(self.signature)

    def read(self, path: Path, how: Reading = READ_ALL) -> Image:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, whichever reader takes it
        except OSError as exc:
            raise ImageError(f"{path}: cannot open: {exc.strerror or exc}") from exc
        with f:
            head = f.read(33)
            if not head.startswith(self.signature):
                raise ImageError(f"{path}: not a valid {self.name.upper()} file (bad signature)")
            f.seek(0)
            if self.name == "png":
                width, height, depth, colour = _png_header(path, head)
                check_pixels(path, width, height, how.max_pixels)
                if depth == 16 and colour in _PNG_CHANNELS and colour != 0:
                    how.check(ImageInfo(_PNG_CHANNELS[colour], NORMALIZED, 1))
                    return _read_pypng(path, f)
            return self._read_pillow(path, f, how)

    def _read_pillow(self, path: Path, f: Any, how: Reading) -> Image:
        from PIL import Image as PILImage

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
                with PILImage.open(f, formats=[self.name.upper()]) as im:
                    mode = im.mode
                    width, height = im.size
                    check_pixels(path, int(width), int(height), how.max_pixels)
                    if mode in _REFUSED:
                        raise ImageError(f"{path}: {_REFUSED[mode]}")
                    if mode not in _MODES:
                        raise ImageError(f"{path}: unsupported image mode {mode!r}")
                    how.check(ImageInfo(3 if mode.startswith("RGB") else 1, NORMALIZED, 1))
                    im.load()
                    meta = dict(im.info)
                    pixels = np.asarray(im)
                    if pixels.dtype.byteorder == ">":
                        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
        except ImageError:
            raise
        except PILImage.DecompressionBombError as exc:
            raise ImageError.caused_by(
                f"{path}: the image declares more pixels than Pillow accepts", exc
            ) from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageError.caused_by(
                f"{path}: cannot decode {self.name.upper()}: damaged or truncated "
                f"({exception_name(exc)})",
                exc,
            ) from exc
        bits, has_alpha = _MODES[mode]
        kept = {k: meta[k] for k in _KEPT_META if k in meta}
        return _make_image(pixels, bits, has_alpha, self.name, kept)

    def write_one(
        self, image: Image, frames: np.ndarray, path: Path, options: WriteOptions
    ) -> None:
        dtype = np.uint16 if image.bits == 16 else np.uint8
        pixels = _interleave(denormalize(frames[0], image.bits, dtype), image.alpha)
        if image.bits == 16 and pixels.ndim == 3:
            _write_pypng(pixels, path, options)
            return
        from PIL import Image as PILImage

        kwargs: dict[str, Any] = {k: image.meta[k] for k in _KEPT_META if k in image.meta}
        if self.name == "png":
            kwargs["compress_level"] = options.png_compression
        else:
            kwargs.update(quality=options.jpeg_quality, subsampling=0)
        PILImage.fromarray(pixels).save(path, format=self.name.upper(), **kwargs)


PNG = _PillowFormat("png", (".png",), PNG_SIGNATURE)
JPEG = _PillowFormat("jpeg", (".jpg", ".jpeg", ".jpe"), JPEG_SIGNATURE)


def _png_header(path: Path, head: bytes) -> tuple[int, int, int, int]:
    """Width, height, bit depth and colour type from the IHDR chunk."""
    if len(head) < 29 or head[12:16] != b"IHDR":
        raise ImageError(f"{path}: not a valid PNG file (no IHDR header)")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, colour


def _make_image(
    pixels: np.ndarray, bits: int, has_alpha: bool, fmt: str, meta: dict[str, Any]
) -> Image:
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    alpha = pixels[:, :, -1].copy() if has_alpha else None
    colour = pixels[:, :, :-1] if has_alpha else pixels
    channels = normalize(np.moveaxis(colour, 2, 0), bits)
    return Image(frames=channels[None], alpha=alpha, bits=bits, format=fmt, meta=meta)


def _interleave(stored: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """``(c, h, w)`` stored values (+ alpha) to Pillow's ``(h, w[, c])`` layout."""
    planes = list(stored)
    if alpha is not None:
        planes.append(alpha.astype(stored.dtype))
    if len(planes) == 1:
        return planes[0]
    return np.ascontiguousarray(np.stack(planes, axis=-1))


def _read_pypng(path: Path, f: Any) -> Image:
    import png

    try:
        width, height, rows, info = png.Reader(file=f).asDirect()
        flat = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except (png.Error, OSError, ValueError) as exc:
        raise ImageError.caused_by(
            f"{path}: cannot decode PNG: damaged or truncated ({exception_name(exc)})", exc
        ) from exc
    pixels = flat.reshape(height, width, info["planes"])
    return _make_image(pixels, 16, bool(info["alpha"]), "png", {})


def _write_pypng(pixels: np.ndarray, path: Path, options: WriteOptions) -> None:
    import png

    height, width, planes = pixels.shape
    writer = png.Writer(
        width,
        height,
        greyscale=planes in (1, 2),
        alpha=planes in (2, 4),
        bitdepth=16,
        compression=options.png_compression,
    )
    with open(path, "wb") as f:
        writer.write(f, pixels.reshape(height, width * planes))
