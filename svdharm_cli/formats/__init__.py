"""File formats behind one small interface.

Each format module provides a :class:`FormatHandler`: ``can_read(path, head)`` says whether
it takes a file (by name or by its first bytes), ``read(path, max_pixels)`` returns an
:class:`Image` whose channels are in normalized units (METHOD.md section 1), and
``write(image, frames, path, options, context)`` writes new pixels back in the input's
format, bit depth, frame count and channel layout. Formats never do the method's math; the
method never opens a file. Adding a format is adding a module and listing its handler in
``_handlers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from svdharm_cli.errors import ImageError

DEFAULT_MAX_PIXELS = 100_000_000
"""Images with more pixels than this are refused before their pixels are decoded."""


DEFAULT_PNG_COMPRESSION = 4
"""zlib level of PNG outputs. Measured on medical images (MR 1024^2 and radiograph 1760^2 at
16 bits, 8-bit chest and RGB fundus): level 4 writes 2-4.5x faster than level 6 (Pillow's
default) for files at most 1 % larger, often smaller; levels above 6 cost up to 6x more time
for 1-3 % smaller files. ``make bench`` prints the table (``png_levels``)."""


@dataclass(frozen=True)
class WriteOptions:
    """How outputs are encoded.

    Attributes
    ----------
    png_compression
        zlib level 0-9 for PNG; see :data:`DEFAULT_PNG_COMPRESSION`.
    jpeg_quality
        JPEG quality 1-100; chroma is not subsampled (4:4:4) so colour detail is kept.
    """

    png_compression: int = DEFAULT_PNG_COMPRESSION
    jpeg_quality: int = 95


@dataclass(frozen=True)
class OutputContext:
    """What one output is, for formats that record provenance (DICOM); others ignore it.

    Attributes
    ----------
    description
        Human-readable method and parameters (e.g. DICOM Derivation Description).
    instance_key
        Unique to this output (method, parameters, input, copy): new instance UIDs derive
        from it deterministically, so reruns give byte-identical files.
    series_key
        Shared by the outputs of one run and copy index: new series UIDs derive from it
        and the source series.
    """

    description: str = ""
    instance_key: str = ""
    series_key: str = ""


@dataclass(frozen=True)
class Image:
    """One decoded image, possibly of several frames.

    Attributes
    ----------
    frames
        float64 array ``(f, c, h, w)`` in normalized units (METHOD.md section 1); each frame
        is processed as its own 2-D image. PNG and JPEG have one frame.
    alpha
        The alpha channel as stored (``(h, w)``), carried through untouched; or None.
    bits
        Nominal bit depth of the stored values (8 or 16 for PNG, 8 for JPEG).
    format
        The handler's name, e.g. ``"png"``.
    meta
        Format-private details the writer needs (ICC profile, resolution, the DICOM
        dataset, ...). Never logged.
    mask
        Optional boolean ``(f, h, w)``: False marks pixels excluded from the statistics and
        written back unchanged (DICOM Pixel Padding Value).
    """

    frames: np.ndarray
    alpha: np.ndarray | None
    bits: int
    format: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None

    @property
    def channels(self) -> np.ndarray:
        """The first frame, ``(c, h, w)``."""
        return self.frames[0]

    @property
    def channel_count(self) -> int:
        return int(self.frames.shape[1])

    @property
    def frame_count(self) -> int:
        return int(self.frames.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """``(h, w)`` or ``(h, w, c)``, preceded by the frame count when there are several."""
        f, c, h, w = self.frames.shape
        plane = (h, w) if c == 1 else (h, w, c)
        return plane if f == 1 else (f, *plane)


class FormatHandler(Protocol):
    """What every format module provides."""

    @property
    def name(self) -> str:
        """Short lower-case name, e.g. ``"png"``; recorded in :attr:`Image.format`."""
        ...

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Lower-case file extensions this handler takes without looking inside."""
        ...

    def can_read(self, path: Path, head: bytes) -> bool:
        """Whether this handler takes ``path``; ``head`` is its first 132 bytes."""
        ...

    def read(self, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
        """Decode ``path``; raise :class:`ImageError` (or :class:`SkipImage`) when it can't."""
        ...

    def write(
        self,
        image: Image,
        frames: np.ndarray,
        path: Path,
        options: WriteOptions,
        context: OutputContext,
    ) -> None:
        """Write ``frames`` (normalized, shaped like ``image.frames``) in image's format."""
        ...


HEAD_BYTES = 132


def _handlers() -> tuple[FormatHandler, ...]:
    from svdharm_cli.formats.dicom import DICOM
    from svdharm_cli.formats.raster import JPEG, PNG

    return (PNG, JPEG, DICOM)


def handler_for(path: Path) -> FormatHandler | None:
    """The handler that takes ``path``, or None when no format does (the file is ignored).

    Known extensions decide without opening the file (walking a tree of thousands of files
    stays cheap); other files are recognized by their first bytes.
    """
    suffix = path.suffix.lower()
    for handler in _handlers():
        if suffix in handler.suffixes:
            return handler
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        head = b""
    for handler in _handlers():
        if handler.can_read(path, head):
            return handler
    return None


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Read any supported image; :class:`ImageError` names the file and the problem."""
    handler = handler_for(path)
    if handler is None:
        raise ImageError(f"{path}: not a PNG, JPEG or DICOM file")
    return handler.read(path, max_pixels)


def handler_named(name: str) -> FormatHandler:
    for handler in _handlers():
        if handler.name == name:
            return handler
    raise KeyError(name)


def write_image(
    image: Image,
    frames: np.ndarray,
    path: Path,
    options: WriteOptions,
    context: OutputContext | None = None,
) -> None:
    """Write new pixels ``(f, c, h, w)`` for ``image`` to ``path`` in the image's own format."""
    handler_named(image.format).write(image, frames, path, options, context or OutputContext())


def normalize(stored: np.ndarray, bits: int) -> np.ndarray:
    """Stored unsigned values to float64 normalized units: ``value / (2**bits - 1)``."""
    return np.asarray(stored, dtype=np.float64) / float(2**bits - 1)


def denormalize(channels: np.ndarray, bits: int, dtype: np.dtype[Any] | type) -> np.ndarray:
    """Normalized units back to stored values: clip to [0, 1], scale, round to nearest, cast."""
    top = float(2**bits - 1)
    out = np.clip(channels, 0.0, 1.0) * top
    return np.rint(out, out=out).astype(dtype)


def check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse images whose declared size exceeds ``max_pixels`` (decompression bombs)."""
    if width < 1 or height < 1:
        raise ImageError(f"{path}: the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}x{height} pixels exceeds the limit of {max_pixels:,}",
            hint="raise --max-pixels if this image is genuine",
        )
