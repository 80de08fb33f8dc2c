"""TIFF through tifffile (the library behind imageio's TIFF plugin), single or multi-page.

What is read, and written back the same way (dtype, page count, photometric layout):

- 8- and 16-bit unsigned grayscale (MINISBLACK, or MINISWHITE, inverted for processing and
  back after like DICOM MONOCHROME1) and RGB, with or without an alpha sample (carried
  through untouched);
- every page of a file is one slice, and the pages of a file form one volume; pages must
  all have the first page's size and layout (a pyramid or a file with thumbnails is refused).

Values are normalized by the dtype's range (METHOD.md section 1). Outputs keep the input's
resolution tags; pages compressed with Deflate are written with Deflate, others uncompressed.
Refused with a reason: signed, 32-bit and floating-point samples, palette, CMYK and other
photometric layouts.
"""

from __future__ import annotations

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

SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PHOTOMETRIC = {"MINISBLACK": 1, "MINISWHITE": 1, "RGB": 3}
_DEFLATE = {"ADOBE_DEFLATE", "DEFLATE"}


class _Tiff(FileByFile):
    name = "tiff"
    suffixes = (".tif", ".tiff")

    def can_read(self, path: Path, head: bytes) -> bool:
        return path.suffix.lower() in self.suffixes or head[:4] in SIGNATURES

    def read(self, path: Path, how: Reading = READ_ALL) -> Image:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                pages = list(tif.pages)
                first = pages[0]
                layout = _layout(path, first)
                for page in pages[1:]:
                    if _layout(path, page) != layout:
                        raise ImageError(
                            f"{path}: pages differ in size or layout (a pyramid, or a file "
                            "with thumbnails); only stacks of equal pages are supported"
                        )
                (rows, cols, samples, dtype, photometric, extra) = layout
                check_pixels(path, cols, rows * len(pages), how.max_pixels)
                how.check(ImageInfo(_PHOTOMETRIC[photometric], NORMALIZED, len(pages)))
                stack = np.stack([page.asarray() for page in pages])
                meta = _kept_tags(first)
        except ImageError:
            raise
        except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError) as exc:
            raise ImageError.caused_by(
                f"{path}: cannot decode TIFF: damaged or truncated ({exception_name(exc)})", exc
            ) from exc
        stack = stack.reshape(len(pages), rows, cols, samples)
        stack = stack.astype(stack.dtype.newbyteorder("="), copy=False)
        bits = 8 * dtype.itemsize
        colour = _PHOTOMETRIC[photometric]
        alpha = stack[..., colour:] if extra else None
        values = normalize(np.moveaxis(stack[..., :colour], 3, 1), bits)
        if photometric == "MINISWHITE":
            values = np.subtract(1.0, values, out=values)
        meta.update(photometric=photometric, dtype=dtype, alpha=alpha)
        return Image(frames=values, alpha=None, bits=bits, format=self.name, meta=meta)

    def write_one(self, image: Image, new: np.ndarray, path: Path, options: WriteOptions) -> None:
        import tifffile

        meta = image.meta
        x = np.asarray(new, dtype=np.float64)
        if meta["photometric"] == "MINISWHITE":
            x = 1.0 - np.clip(x, 0.0, 1.0)
        stored = np.moveaxis(denormalize(x, image.bits, meta["dtype"]), 1, 3)
        if meta["alpha"] is not None:
            stored = np.concatenate([stored, meta["alpha"]], axis=3)
        if stored.shape[3] == 1:
            stored = stored[..., 0]
        kwargs: dict[str, Any] = {
            "photometric": meta["photometric"].lower(),
            "compression": meta["compression"],
            "metadata": None,
        }
        if meta["alpha"] is not None:
            kwargs["extrasamples"] = meta["extrasamples"]
        if meta["resolution"] is not None:
            kwargs["resolution"] = meta["resolution"]
            kwargs["resolutionunit"] = meta["resolutionunit"]
        data = stored if stored.shape[0] > 1 else stored[0]
        tifffile.imwrite(path, data, **kwargs)


TIFF = _Tiff()


def _layout(path: Path, page: Any) -> tuple[int, int, int, np.dtype[Any], str, int]:
    """Rows, columns, samples, dtype, photometric name and extra samples of one page."""
    photometric = getattr(page.photometric, "name", str(page.photometric))
    dtype = np.dtype(page.dtype) if page.dtype is not None else None
    if photometric not in _PHOTOMETRIC:
        raise ImageError(f"{path}: TIFF photometric {photometric} is not supported")
    if dtype is None or dtype.kind != "u" or dtype.itemsize not in (1, 2):
        what = "unknown" if dtype is None else f"{dtype.kind}{8 * dtype.itemsize}"
        raise ImageError(
            f"{path}: TIFF samples of type {what} are not supported (8- or 16-bit unsigned only)"
        )
    samples = int(page.samplesperpixel)
    extra = samples - _PHOTOMETRIC[photometric]
    if extra not in (0, 1) or int(page.planarconfig) != 1 and samples > 1:
        raise ImageError(f"{path}: TIFF sample layout not supported ({samples} samples per pixel)")
    return int(page.imagelength), int(page.imagewidth), samples, dtype, photometric, extra


def _kept_tags(page: Any) -> dict[str, Any]:
    tags = page.tags
    compression = getattr(page.compression, "name", "")
    resolution = None
    unit = None
    if "XResolution" in tags and "YResolution" in tags:
        resolution = (tags["XResolution"].value, tags["YResolution"].value)
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
    extrasamples = tags["ExtraSamples"].value if "ExtraSamples" in tags else (2,)
    return {
        "compression": "zlib" if compression in _DEFLATE else None,
        "resolution": resolution,
        "resolutionunit": unit,
        "extrasamples": extrasamples,
    }
