"""File formats behind one small interface.

Each format module provides a :class:`FormatHandler`: ``can_read(path, head)`` says whether
it takes a file (by name or by its first bytes), ``read(path, how)`` returns an
:class:`Image` whose values are in its working unit (METHOD.md section 1), read as a
:class:`Reading` says (pixel limit, header check, slice axis), and
``write(images, frames, paths, options, context)`` writes new values back in the input's
format, bit depth, frame count and channel layout, saturating them to what the file can
store. Formats never do the method's math; the method never opens a file. Adding a format is
adding a module and listing its handler in ``_handlers``.

Units
-----
- ``normalized``: stored values mapped onto [0, 1] by the nominal range (PNG, JPEG, TIFF,
  integer NIfTI, and DICOM other than CT, after Rescale Slope/Intercept).
- ``HU``: CT in Hounsfield units (Rescale Slope/Intercept applied); no [0, 1] mapping.
- ``raw``: floating-point NIfTI values as they are (after ``scl_slope``/``scl_inter``);
  such data has no nominal range, so nothing is saturated.

Readers call ``how.check`` with an :class:`ImageInfo` taken from the header before any pixel is
decoded, so that a file that cannot match the reference is refused at once.

The boundary with the reading libraries
---------------------------------------
Everything that opens or parses an input file goes through :func:`reading`, in this module:
:func:`read_image` (every format's reader, reference images included), :func:`read_mask` and
the DICOM series header reader that planning uses. Inside it, *any* exception a library
raises (``zlib.error`` from a damaged ``.nii.gz``, pydicom's ``BytesLengthException``, a
``struct.error``, ``NotImplementedError``, ...) becomes an :class:`ImageError` for that one
file, in plain words that name the file and the format and quote nothing from it, with the
exception's type and frames kept for the run log
(:func:`~svdharm_cli.errors.exception_record`). Library warnings are silenced there too, and
so are the log records of the reading libraries (tifffile, for one, logs damaged tags
through :mod:`logging`, which prints them when no handler is configured): both may quote
header values. Writing silences warnings as well (pydicom warns, quoting it, when a damaged
UID is copied into a derived object). Format modules still raise their own, more precise
:class:`ImageError` where they know what is wrong; those pass through unchanged. Sniffing
(:func:`handler_for`) reads bytes only: a ``DICM`` marker at byte 128 wins over any other
signature, since DICOM allows any preamble (dual DICOM/TIFF files).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from svdharm_cli.errors import ImageError, SvdharmError, exception_name
from svdharm_cli.files.safety import quiet_once

NORMALIZED = "normalized"
HU = "HU"
RAW = "raw"
UNITS = (NORMALIZED, HU, RAW)

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
    label
        Short name of what made the output (e.g. ``svdharm harmonize``), appended to the
        DICOM Series Description.
    copy
        The copy index (0 for harmonize); derived series numbers are kept apart by it.
    """

    description: str = ""
    instance_key: str = ""
    series_key: str = ""
    label: str = ""
    copy: int = 0


@dataclass(frozen=True)
class ImageInfo:
    """What a header says before pixels are decoded.

    Attributes
    ----------
    channels
        Colour channels processed (alpha excluded).
    unit
        One of :data:`UNITS`.
    frames
        2-D slices the file holds.
    kind
        What the image is, when the file says (:mod:`svdharm_cli.files.kinds`: a DICOM
        Modality, a BIDS suffix); ``""`` when it does not.
    """

    channels: int
    unit: str
    frames: int
    kind: str = ""


Check = Callable[[ImageInfo], None]
"""Called by readers with the header's :class:`ImageInfo`; raises to refuse the file."""


def no_check(info: ImageInfo) -> None:
    """The default check: accept every file."""


@dataclass(frozen=True)
class Reading:
    """How a file is read.

    Attributes
    ----------
    max_pixels
        Readers refuse a file whose header declares more pixels (:func:`check_pixels`).
    check
        Called with the header's :class:`ImageInfo` before pixels are decoded.
    slice_axis
        The voxel axis a NIfTI volume is cut along (other formats ignore it).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    check: Check = no_check
    slice_axis: int = 2


READ_ALL = Reading()


@dataclass(frozen=True)
class Image:
    """One decoded image, possibly of several frames.

    Attributes
    ----------
    frames
        float64 array ``(f, c, h, w)`` in the working ``unit``; each frame is one 2-D slice.
        PNG and JPEG have one frame.
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
    unit
        The working unit of ``frames``, one of :data:`UNITS`.
    volumes
        The frames form this many volumes of equal size, one after the other (a 4-D NIfTI
        is several 3-D volumes); slice statistics are pooled within each.
    kind
        What the image is (:mod:`svdharm_cli.files.kinds`); ``""`` when nothing says.
    """

    frames: np.ndarray
    alpha: np.ndarray | None
    bits: int
    format: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None
    unit: str = NORMALIZED
    volumes: int = 1
    kind: str = ""

    @property
    def info(self) -> ImageInfo:
        return ImageInfo(self.channel_count, self.unit, self.frame_count, self.kind)

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

    def read(self, path: Path, how: Reading = READ_ALL) -> Image:
        """Decode ``path`` as ``how`` says (:class:`Reading`); raise :class:`ImageError` (or
        :class:`SkipImage`) when it can't."""
        ...

    def write(
        self,
        images: Sequence[Image],
        frames: Sequence[np.ndarray],
        paths: Sequence[Path],
        options: WriteOptions,
        context: OutputContext,
    ) -> None:
        """Write ``frames[k]`` (working units, shaped like ``images[k].frames``) to
        ``paths[k]`` in the images' format. The images are the files of one volume (a DICOM
        series) or a single file; a volume's files share derived metadata (one window)."""
        ...


class FileByFile:
    """The write step of formats whose files are written one by one, each from its own
    metadata (PNG, JPEG, TIFF, NIfTI): :meth:`write` hands each file of a volume to
    ``write_one``. DICOM writes a volume's files together (one window for the series)."""

    def write(
        self,
        images: Sequence[Image],
        frames: Sequence[np.ndarray],
        paths: Sequence[Path],
        options: WriteOptions,
        context: OutputContext,
    ) -> None:
        for image, new, path in zip(images, frames, paths):
            self.write_one(image, new, path, options)

    def write_one(self, image: Image, new: np.ndarray, path: Path, options: WriteOptions) -> None:
        """Write ``new`` (working units, shaped like ``image.frames``) to ``path``."""
        raise NotImplementedError


HEAD_BYTES = 132
DICOM_MARKER = b"DICM"
"""What stands at byte 128 of a DICOM file (PS3.10), after a preamble of any content."""

LABELS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "nifti": "NIfTI", "dicom": "DICOM"}


@functools.cache
def _handlers() -> tuple[FormatHandler, ...]:
    from svdharm_cli.files.formats.dicom import DICOM
    from svdharm_cli.files.formats.nifti import NIFTI
    from svdharm_cli.files.formats.raster import JPEG, PNG
    from svdharm_cli.files.formats.tiff import TIFF

    return (PNG, JPEG, TIFF, NIFTI, DICOM)


def handler_by_name(name: str) -> FormatHandler | None:
    """The handler whose extensions ``name`` (a file name) ends with, if any."""
    lower = name.lower()
    for handler in _handlers():
        if lower.endswith(handler.suffixes):
            return handler
    return None


def handler_for(path: Path) -> FormatHandler | None:
    """The handler that takes ``path``, or None when no format does (the file is ignored).

    Known extensions (``.nii.gz`` included) decide without opening the file (walking a tree
    of thousands of files stays cheap); other files are recognized by their first bytes.
    """
    known = handler_by_name(path.name)
    if known is not None:
        return known
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        head = b""
    if head[128:132] == DICOM_MARKER:  # any preamble may precede it, a TIFF header too
        return handler_named("dicom")
    for handler in _handlers():
        if handler.can_read(path, head):
            return handler
    return None


def read_image(
    path: Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check: Check = no_check,
    slice_axis: int = 2,
) -> Image:
    """Read any supported image; :class:`ImageError` names the file and the problem."""
    handler = handler_for(path)
    if handler is None:
        raise ImageError(f"{path}: not a PNG, JPEG, TIFF, NIfTI or DICOM file")
    with reading(path, handler.name):
        return handler.read(path, Reading(max_pixels, check, slice_axis))


@contextlib.contextmanager
def reading(path: Path, format_name: str) -> Iterator[None]:
    """Run the parsing of ``path`` (a file of format ``format_name``) inside the boundary:
    any exception but svdharm's own becomes that file's :class:`ImageError`.

    An :class:`OSError` that carries an errno is the file system's (permission denied, a
    vanished file) and is named as such; every other exception is a damaged or invalid
    file, named by its type only. :class:`MemoryError` says so. Warnings are silenced.
    """
    label = LABELS.get(format_name, format_name)
    quiet_once()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # library warnings may quote header values
            yield
    except SvdharmError:
        raise
    except MemoryError as exc:
        raise ImageError.caused_by(f"{path}: not enough memory to read it", exc) from exc
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
            message = f"{path}: cannot read: {exc.strerror}"  # the file system's own word
        else:
            message = f"{path}: cannot read: damaged or not a valid {label} file"
            message += f" ({exception_name(exc)})"
        raise ImageError.caused_by(message, exc) from exc


def handler_named(name: str) -> FormatHandler:
    for handler in _handlers():
        if handler.name == name:
            return handler
    raise KeyError(name)


def write_images(
    images: Sequence[Image],
    frames: Sequence[np.ndarray],
    paths: Sequence[Path],
    options: WriteOptions,
    context: OutputContext | None = None,
) -> None:
    """Write new values ``(f, c, h, w)`` for each image of one volume in its own format."""
    handler = handler_named(images[0].format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # they may quote header values (a damaged UID)
        handler.write(images, frames, paths, options, context or OutputContext())


def write_image(
    image: Image,
    frames: np.ndarray,
    path: Path,
    options: WriteOptions,
    context: OutputContext | None = None,
) -> None:
    """Write new values ``(f, c, h, w)`` for ``image`` to ``path`` in the image's own format."""
    write_images([image], [frames], [path], options, context)


def normalize(stored: np.ndarray, bits: int) -> np.ndarray:
    """Stored unsigned values to float64 normalized units: ``value / (2**bits - 1)``."""
    return np.asarray(stored, dtype=np.float64) / float(2**bits - 1)


def saturate(
    values: np.ndarray,
    low: float,
    high: float,
    dtype: np.dtype[Any] | type,
    *,
    overwrite: bool = False,
) -> np.ndarray:
    """The saturation step of every integer output (METHOD.md section 1): round to nearest,
    clip to what the file can store, cast. ``overwrite``: ``values`` (a temporary of the
    caller's, float) may be rounded in place, saving a copy."""
    out = np.rint(values, out=values) if overwrite else np.rint(values)
    return np.clip(out, low, high, out=out).astype(dtype)


def denormalize(channels: np.ndarray, bits: int, dtype: np.dtype[Any] | type) -> np.ndarray:
    """Normalized units back to stored values: clip to [0, 1], scale, then :func:`saturate`."""
    top = float(2**bits - 1)
    return saturate(np.clip(channels, 0.0, 1.0) * top, 0.0, top, dtype, overwrite=True)


def check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse images whose declared size exceeds ``max_pixels`` (decompression bombs)."""
    if width < 1 or height < 1:
        raise ImageError(f"{path}: the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}x{height} pixels exceeds the limit of {max_pixels:,}",
            hint="raise --max-pixels if this image is genuine",
        )


def read_mask(path: Path, slice_axis: int = 2) -> np.ndarray:
    """A mask file as bool ``(f, h, w)``: True where the stored value is nonzero (in any
    channel). PNG, JPEG, TIFF, NIfTI and DICOM; slices as :func:`read_image` cuts them."""
    handler = handler_for(path)
    if handler is None:
        raise ImageError(f"{path}: a mask must be a PNG, TIFF, NIfTI or DICOM file")
    with reading(path, handler.name):
        if handler.name == "dicom":
            from svdharm_cli.files.formats.dicom import read_mask_values

            return read_mask_values(path)
        image = handler.read(path, Reading(slice_axis=slice_axis))
    values = image.frames
    if image.meta.get("photometric") == "MINISWHITE":
        values = 1.0 - values
    return np.asarray((values != 0).any(axis=1), dtype=bool)
