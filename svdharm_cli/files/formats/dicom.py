"""DICOM through pydicom and its pylibjpeg plugins: read any common encoding, write a correct
derived object.

Reading
-------
Files are taken by extension (``.dcm``, ``.dicom``, any case) or by the ``DICM`` marker at
byte 128. JPEG (baseline, extended, lossless), JPEG-LS, JPEG 2000 and RLE decode through
the pylibjpeg plugins and pyjpegls; big-endian and implicit-VR files through pydicom.
MONOCHROME1/2 (unsigned or signed, BitsStored up to 16), RGB and YBR_* (decoded to RGB) are
processed; the frames of a multi-frame object form one volume. Pixel values are in the
file's byte order on disk and native order in memory, so big-endian files are handled like
their little-endian twins.

Units (METHOD.md section 1): Rescale Slope/Intercept (per frame in enhanced objects, from
the functional groups) are applied first. CT (Modality ``CT``) is then in Hounsfield units.
Every other modality is normalized after the rescale: the BitsStored range of the stored
values, through the rescale, is mapped onto [0, 1] (for one positive slope this is the
stored value over the BitsStored range, signed data mapped from ``[-2**(b-1), 2**(b-1)-1]``);
MONOCHROME1 is inverted for processing and back after. Outputs go back through each frame's
own rescale, are rounded, and clipped to the BitsStored range (the saturation step). Pixels
equal to Pixel Padding Value (or in its range with Pixel Padding Range Limit) are left out of
the statistics and written back unchanged.

Skipped with a reason: objects that carry no image by nature (a known SOP class that is not
an image storage class and no image attributes: SR, RT Plan, RT Structure Set, waveforms,
DICOMDIR, presentation states), PALETTE COLOR (values are indices), 1-bit data (segmentation
labels), data of 32 or 64 bits allocated and RT Dose grids (not intensities); any other
Bits Allocated than 1, 8, 16, 32 or 64 is a damaged header and fails.

Damaged is not pixel-less: an object of an image storage SOP class, or one with Rows,
Columns or Bits Allocated, whose Pixel Data is missing, or (uncompressed) shorter than its
header says, *fails* ("pixel data missing or truncated"), as does an object without pixels
whose SOP class is unknown or damaged. A SOP class is only ever named by its standard name;
an unknown one is "an unknown SOP class", never quoted.

Writing
-------
Uncompressed Explicit VR Little Endian with preamble and ``DICM``; the input's shape, frame
count, BitsAllocated/Stored, HighBit and PixelRepresentation; every attribute kept except:

- new SOP Instance UID (also in the file meta) and a new Series Instance UID shared by the
  outputs of one source series in a run, both derived deterministically from the source
  UIDs and the run's parameters (copy index included), so reruns are byte-identical;
- ImageType values 1-2 become DERIVED\\SECONDARY (PS3.3 C.7.6.1.1.2); in enhanced
  (multi-frame functional group) objects, whose Image Type value 2 may only be PRIMARY
  (C.8.16.1), ImageType and every Frame Type (shared and per frame, whatever its frame type
  sequence: MR, CT, PET, ...) become DERIVED\\PRIMARY with values 3 and 4 kept, and the MR
  Pulse Sequence Module and Bulk Motion Synchronization attributes that are conditional on
  Image Type value 1 being ORIGINAL or MIXED are removed (the standard makes them optional
  for a derived image, dciodvfy rejects them, and the source, referenced below, keeps them);
  a Derivation Description names svdharm,
  the method and its parameters; a Source Image Sequence references the input (code 121322);
  a Contributing Equipment Sequence item names svdharm and its version; svdharm's
  implementation UID and name go in the file meta;
- Lossy Image Compression stays ``01``, and becomes ``01`` when the input came in a lossy
  transfer syntax (with the method added if it was missing);
- Window Center/Width (also in enhanced functional groups) are set by one rule: the window
  spans the rescaled values of the whole output volume (every file of a series, padding
  excluded), so all slices of a series share one window; VOI LUT Sequence, Smallest/Largest
  Pixel Values and icon images are removed;
- Series Description gets `` [svdharm <command>]`` appended (within its 64 characters) and
  Series Number becomes the source's plus 1000 times (copy + 1), so a derived series sorts
  apart from its source in a viewer;
- photometric interpretation is what the pixels are: RGB with Planar Configuration 0 for
  decoded YBR input, MONOCHROME1 kept as MONOCHROME1.

No header value is ever put in a message or log: messages name the file and the problem,
in svdharm's own words; a library's message (which may quote the damaged bytes) never is.
Exceptions raised by pydicom while parsing are turned into the file's failure here or, for
anything unforeseen, by :func:`svdharm_cli.files.formats.reading`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli.errors import ImageError, SkipImage, SvdharmError, exception_name
from svdharm_cli.files.formats import (
    DICOM_MARKER,
    HEAD_BYTES,
    HU,
    NORMALIZED,
    READ_ALL,
    Image,
    ImageInfo,
    OutputContext,
    Reading,
    WriteOptions,
    check_pixels,
)
from svdharm_cli.files.formats.dicom_derived import (  # noqa: F401 (IMPLEMENTATION_CLASS_UID: kept importable here)
    IMPLEMENTATION_CLASS_UID,
    PROCESSED,
    STANDARD_PHOTOMETRIC,
    ensure_file_meta,
    fix_stale,
    identity,
    provenance,
    sop_class,
    sop_name,
    to_stored,
    volume_window,
)
from svdharm_cli.files.kinds import modality_kind

SUFFIXES = (".dcm", ".dicom")
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000
    "1.2.840.10008.1.2.4.93": "ISO_15444_2",  # JPEG 2000 part 2
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # HTJ2K
}


class _Dicom:
    name = "dicom"
    suffixes = SUFFIXES

    def can_read(self, path: Path, head: bytes) -> bool:
        return path.suffix.lower() in SUFFIXES or head[128:132] == DICOM_MARKER

    def read(self, path: Path, how: Reading = READ_ALL) -> Image:
        ds = _dataset(path)
        rows, cols, frames, samples = _geometry(path, ds)
        check_pixels(path, cols, rows * frames, how.max_pixels)
        unit, kind = unit_of(ds), modality_kind(ds)
        how.check(ImageInfo(samples, unit, frames, kind))
        # Uncompressed YBR_FULL_422 stores two samples per pixel (chroma shared by two).
        stored_samples = 2 if str(ds.PhotometricInterpretation) == "YBR_FULL_422" else samples
        _check_length(path, ds, rows * cols * frames * stored_samples)
        stored = _decode(path, ds).reshape(frames, rows, cols, samples)
        bits, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation", 0)) == 1
        # Native byte order: a big-endian file's array must not be written out as it is.
        dtype = np.dtype(f"<{'i' if signed else 'u'}{stored.dtype.itemsize}")
        stored = stored.astype(dtype, copy=False)
        pi = str(ds.PhotometricInterpretation)
        slopes, intercepts = rescale_of(path, ds, frames)
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        values = stored.astype(np.float64)
        values *= slopes[:, None, None, None]
        values += intercepts[:, None, None, None]
        if unit == HU:
            scale = (0.0, 1.0)
        else:
            ends = np.concatenate([slopes * low + intercepts, slopes * high + intercepts])
            lo, hi = float(ends.min()), float(ends.max())
            scale = (lo, hi - lo if hi > lo else 1.0)
            values -= scale[0]
            values /= scale[1]
            if pi == "MONOCHROME1":
                values = np.subtract(1.0, values, out=values)
        mask = _padding_mask(ds, stored) if samples == 1 else None
        tsyntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
        del ds.PixelData  # decoded; keeps the per-output copies of the header small
        meta: dict[str, Any] = {
            "dataset": ds,
            "dtype": dtype,
            "range": (low, high),
            "slopes": slopes,
            "intercepts": intercepts,
            "scale": scale,
            "lossy_syntax": LOSSY_SYNTAXES.get(tsyntax),
            "padding": None if mask is None else stored[..., 0][~mask],
            "source": path,
        }
        return Image(
            frames=np.moveaxis(values, 3, 1),
            alpha=None,
            bits=bits,
            format=self.name,
            meta=meta,
            mask=mask,
            unit=unit,
            kind=kind,
        )

    def write(
        self,
        images: Sequence[Image],
        frames: Sequence[np.ndarray],
        paths: Sequence[Path],
        options: WriteOptions,
        context: OutputContext,
    ) -> None:
        stored = [to_stored(image, new) for image, new in zip(images, frames)]
        window = volume_window(images, stored)
        for image, values, path in zip(images, stored, paths):
            self._write(image, values, path, context, window)

    def _write(
        self,
        image: Image,
        stored: np.ndarray,
        path: Path,
        context: OutputContext,
        window: tuple[str, str] | None,
    ) -> None:
        import pydicom
        from pydicom.uid import ExplicitVRLittleEndian

        src = image.meta["dataset"]
        ds = copy.deepcopy(src)
        pi = str(src.PhotometricInterpretation)
        out_pi = pi if pi.startswith("MONOCHROME") or pi == "RGB" else "RGB"
        ensure_file_meta(ds)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        had_frames = "NumberOfFrames" in src
        arr = stored[..., 0] if stored.shape[-1] == 1 else stored
        ds.set_pixel_data(
            arr if image.frame_count > 1 else arr[0],
            out_pi,
            int(src.BitsStored),
            generate_instance_uid=False,
        )
        if had_frames:
            ds.NumberOfFrames = image.frame_count
        identity(ds, src, context)
        provenance(ds, src, context, image.meta["lossy_syntax"])
        fix_stale(ds, window if out_pi.startswith("MONOCHROME") else None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # Explicit encoding also converts big-endian and implicit-VR sources.
                pydicom.dcmwrite(
                    path, ds, enforce_file_format=True, implicit_vr=False, little_endian=True
                )
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise ImageError.caused_by(
                f"{image.meta['source']}: cannot write the derived DICOM (an attribute cannot be "
                f"encoded: {exception_name(exc)})",
                exc,
            ) from exc


DICOM = _Dicom()


def _dataset(path: Path) -> Any:
    import pydicom

    with open(path, "rb") as f:  # an OSError is the file system's: the boundary names it
        head = f.read(HEAD_BYTES)
    marked = head[128:132] == DICOM_MARKER
    try:
        ds = pydicom.dcmread(path, force=not marked)
    except Exception as exc:  # any parser error: the header is damaged
        raise ImageError.caused_by(
            f"{path}: malformed DICOM header ({exception_name(exc)})", exc
        ) from exc
    if len(ds) == 0:
        raise ImageError(f"{path}: truncated or malformed DICOM file (no data set after the meta)")
    if not marked and "SOPClassUID" not in ds and "PixelData" not in ds:
        raise ImageError(f"{path}: not a valid DICOM file")
    try:
        # Convert every element now (each gets its VR), the file meta's too, so copies of
        # the header can be written in explicit VR and malformed values are found while
        # reading, not while writing the derived object.
        for _ in ds.iterall():
            pass
        for _ in getattr(ds, "file_meta", None) or ():
            pass
    except Exception as exc:
        raise ImageError.caused_by(
            f"{path}: malformed DICOM header ({exception_name(exc)})", exc
        ) from exc
    return ds


def _is_image_class(name: str) -> bool:
    """Whether a SOP class (by standard name) carries an image by definition."""
    return "Image Storage" in name or name.endswith(("Volume Storage", "Segmentation Storage"))


def _no_pixels(path: Path, ds: Any) -> SvdharmError:
    """What an object without Pixel Data is: skipped only when it carries no image by
    nature (a known non-image SOP class, no image attributes); otherwise failed."""
    name = sop_name(sop_class(ds))
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return SkipImage(f"{path}: floating-point pixel data ({name or 'an unknown SOP class'})")
    image_attributes = any(k in ds for k in ("Rows", "Columns", "BitsAllocated"))
    if name is None:
        return ImageError(
            f"{path}: no pixel data and an unknown SOP class (damaged, or not an image object)"
        )
    if _is_image_class(name) or image_attributes:
        return ImageError(f"{path}: pixel data missing or truncated ({name})")
    return SkipImage(f"{path}: no pixel data ({name}: carries no image)")


def _geometry(path: Path, ds: Any) -> tuple[int, int, int, int]:
    """Rows, columns, frames, samples; skip what holds no intensities."""
    if "PixelData" not in ds:
        raise _no_pixels(path, ds)
    if sop_class(ds) == RT_DOSE:
        raise SkipImage(f"{path}: RT Dose grid (dose values, not intensities)")
    try:
        pi = str(ds.PhotometricInterpretation)
        allocated, stored_bits = int(ds.BitsAllocated), int(ds.BitsStored)
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except AttributeError as exc:
        missing = getattr(exc, "name", None) or "a required image attribute"
        raise ImageError(f"{path}: missing {missing}") from exc
    except (ValueError, TypeError) as exc:
        raise ImageError.caused_by(f"{path}: malformed image attributes", exc) from exc
    if pi == "PALETTE COLOR":
        raise SkipImage(f"{path}: PALETTE COLOR (pixel values are colour-table indices)")
    if allocated == 1:
        raise SkipImage(f"{path}: 1-bit data (segmentation labels, not intensities)")
    if allocated in (32, 64):
        raise SkipImage(f"{path}: {allocated}-bit data (not supported; up to 16 bits)")
    if pi not in PROCESSED:
        named = pi if pi in STANDARD_PHOTOMETRIC else "not a standard one"
        raise ImageError(f"{path}: unsupported photometric interpretation ({named})")
    if allocated not in (8, 16) or not 1 <= stored_bits <= allocated:
        raise ImageError(f"{path}: inconsistent image attributes (bits allocated or stored)")
    if samples not in (1, 3) or frames < 1 or rows < 1 or cols < 1:
        raise ImageError(f"{path}: inconsistent image attributes (size, samples or frames)")
    return rows, cols, frames, samples


def _check_length(path: Path, ds: Any, samples: int) -> None:
    """Uncompressed Pixel Data shorter than its header says: the file is truncated."""
    from pydicom.uid import UID

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or UID(str(syntax)).is_encapsulated:
        return
    expected = samples * (int(ds.BitsAllocated) // 8)
    found = len(ds.PixelData or b"")
    if found < expected:
        raise ImageError(
            f"{path}: pixel data missing or truncated ({found:,} of {expected:,} bytes)"
        )


def _decode(path: Path, ds: Any) -> np.ndarray:
    from pydicom.uid import UID

    try:
        arr = ds.pixel_array
    except Exception as exc:  # a decoder's message may quote the data: say it ourselves
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        uid = UID(str(syntax or ""))
        name = uid.name if uid and uid.name != str(uid) else "an unknown transfer syntax"
        if _decoder_missing(uid):
            why = "no installed decoder handles it"
        else:
            why = "the pixel data is damaged or truncated"
        message = f"{path}: cannot decode pixel data ({name}): {why}"
        raise ImageError.caused_by(message, exc) from exc
    return np.asarray(arr)


def _decoder_missing(uid: Any) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return not get_decoder(uid).is_available
    except Exception:  # no decoder exists for this transfer syntax
        return True


def read_mask_values(path: Path) -> np.ndarray:
    """A DICOM mask (any bit depth, 1-bit segmentations included) as bool ``(f, h, w)``:
    True where any sample is nonzero. Runs inside :func:`svdharm_cli.files.formats.reading`."""
    ds = _dataset(path)
    if "PixelData" not in ds:
        raise ImageError(f"{path}: the mask has no pixel data")
    stored = _decode(path, ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    return np.asarray(stored.reshape(frames, rows, cols, -1).any(axis=3), dtype=bool)


_SERIES_TAGS = (
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "InstanceNumber",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "SOPInstanceUID",
)


def series_header(path: Path) -> Any | None:
    """The attributes that group a single-frame DICOM image file into a series, or None
    for anything else (multi-frame objects, files without pixels or a series, and files
    whose header cannot be read: those are read, and reported, on their own)."""
    import pydicom

    from svdharm_cli.files.formats import reading

    try:
        with reading(path, "dicom"):
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, force=True, specific_tags=list(_SERIES_TAGS)
            )
            if "SeriesInstanceUID" not in ds or "Rows" not in ds:
                return None
            if int(ds.get("NumberOfFrames", 1) or 1) != 1:
                return None
            str(ds.SeriesInstanceUID)
            for keyword in _SERIES_TAGS:  # every value parses now, not while grouping
                ds.get(keyword)
    except ImageError:
        return None
    return ds


def unit_of(ds: Any) -> str:
    """``HU`` for CT (physical units), ``normalized`` for every other modality."""
    return HU if str(ds.get("Modality", "")).upper() == "CT" else NORMALIZED


def rescale_of(path: Path, ds: Any, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Rescale Slope and Intercept of every frame (float64 arrays of length ``frames``).

    Enhanced objects carry them in the Pixel Value Transformation functional group, shared
    or per frame; others in the data set itself. Missing values mean slope 1, intercept 0.
    """

    def pair(item: Any) -> tuple[float, float] | None:
        if item is None or "RescaleSlope" not in item and "RescaleIntercept" not in item:
            return None
        slope = float(item.get("RescaleSlope", 1) or 1)
        return slope, float(item.get("RescaleIntercept", 0) or 0)

    def group(container: Any) -> Any:
        seq = container.get("PixelValueTransformationSequence") if container else None
        return seq[0] if seq else None

    try:
        default = pair(ds) or (1.0, 0.0)
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            default = pair(group(shared[0])) or default
        values = [default] * frames
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame and len(per_frame) == frames:
            values = [pair(group(item)) or default for item in per_frame]
    except (ValueError, TypeError, AttributeError) as exc:
        raise ImageError.caused_by(f"{path}: malformed Rescale Slope/Intercept", exc) from exc
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all() or (arr[:, 0] == 0).any():
        raise ImageError(f"{path}: Rescale Slope must be a finite non-zero number")
    return arr[:, 0], arr[:, 1]


def _padding_mask(ds: Any, stored: np.ndarray) -> np.ndarray | None:
    """True where a pixel is an intensity, False where it equals the padding value."""
    if "PixelPaddingValue" not in ds:
        return None
    plane = stored[..., 0].astype(np.int64)
    value = int(ds.PixelPaddingValue)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        padded = plane == value
    else:
        lo, hi = sorted((value, int(limit)))
        padded = (plane >= lo) & (plane <= hi)
    return None if not padded.any() else ~padded
