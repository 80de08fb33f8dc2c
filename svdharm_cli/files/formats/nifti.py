"""NIfTI-1 and NIfTI-2 (``.nii``, ``.nii.gz``) through nibabel.

Reading
-------
A 3-D file is one volume, cut into 2-D slices along its third voxel axis (``slice_axis``
changes that); a 4-D file is a sequence of 3-D volumes (the fourth axis), each pooled on
its own; a 2-D file is one slice. Values are in the ``raw`` unit: what the file states, with
``scl_slope``/``scl_inter`` applied, whatever the on-disk dtype, so the same volume stored as
int16, uint16 or float32 gives the same statistics (NIfTI has no nominal range to normalize
by). Refused with a reason: more than four dimensions (after dropping trailing axes of
length 1), complex or RGB voxels, and NaN or infinite values.

Writing
-------
The output is the input's header byte for byte (affine, qform/sform codes, extensions,
on-disk dtype and byte order, ``scl_slope``/``scl_inter``) followed by the new voxels: values
go back through the input's own scaling and, for integer dtypes, are rounded and clipped to
the dtype's range (the saturation step). A ``.nii.gz`` input gives a gzip output.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from svdharm_cli.errors import ImageError, exception_name
from svdharm_cli.files.formats import (
    RAW,
    READ_ALL,
    FileByFile,
    Image,
    ImageInfo,
    Reading,
    WriteOptions,
    check_pixels,
    saturate,
)
from svdharm_cli.files.kinds import bids_suffix

GZIP_LEVEL = 6


class _Nifti(FileByFile):
    name = "nifti"
    suffixes = (".nii", ".nii.gz")

    def can_read(self, path: Path, head: bytes) -> bool:
        name = path.name.lower()
        return name.endswith(self.suffixes)

    def read(self, path: Path, how: Reading = READ_ALL) -> Image:
        import nibabel as nib
        from nibabel.filebasedimages import ImageFileError

        try:
            img = nib.load(path)
        except (ImageFileError, OSError, ValueError, EOFError) as exc:
            raise ImageError.caused_by(
                f"{path}: cannot read NIfTI header: damaged or not NIfTI ({exception_name(exc)})",
                exc,
            ) from exc
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ImageError(f"{path}: not a single-file NIfTI image")
        header = img.header
        dtype = np.dtype(header.get_data_dtype())
        shape = tuple(int(n) for n in img.shape)
        while len(shape) > 2 and shape[-1] == 1:
            shape = shape[:-1]
        if dtype.kind not in "iuf" or dtype.fields is not None:
            raise ImageError(f"{path}: NIfTI voxels of type {dtype} are not supported")
        if len(shape) < 2 or len(shape) > 4:
            raise ImageError(f"{path}: NIfTI with {len(shape)} dimensions is not supported")
        if len(shape) == 2:
            shape = (*shape, 1)
        axis = how.slice_axis if len(shape) >= 3 else 2
        plane = [n for i, n in enumerate(shape[:3]) if i != axis]
        volumes = shape[3] if len(shape) == 4 else 1
        slices = shape[axis] * volumes
        check_pixels(path, plane[1], plane[0] * slices, how.max_pixels)
        kind = bids_suffix(path.name)
        how.check(ImageInfo(1, RAW, slices, kind))
        proxy: Any = img.dataobj
        slope, inter = float(proxy.slope), float(proxy.inter)
        try:
            stored = np.asarray(proxy.get_unscaled()).reshape(shape)
        except (OSError, ValueError, EOFError) as exc:
            raise ImageError.caused_by(
                f"{path}: cannot read NIfTI voxels: damaged or truncated ({exception_name(exc)})",
                exc,
            ) from exc
        values = stored.astype(np.float64) * slope + inter
        if not np.isfinite(values).all():
            raise ImageError(f"{path}: NIfTI holds NaN or infinite values")
        four = values if values.ndim == 4 else values[..., None]
        # (x, y, z, t) -> (t, slice, a, b): volumes one after another, slices within each.
        frames = np.moveaxis(four, (3, axis), (0, 1)).reshape(slices, 1, *plane)
        meta = {
            "header": header,
            "image_class": type(img),
            "dtype": dtype,
            "shape": shape,
            "axis": axis,
            "scaling": (slope, inter),
            "gzip": path.name.lower().endswith(".gz"),
            "source": path,
        }
        return Image(
            frames=np.ascontiguousarray(frames),
            alpha=None,
            bits=8 * dtype.itemsize,
            format=self.name,
            meta=meta,
            unit=RAW,
            volumes=volumes,
            kind=kind,
        )

    def write_one(self, image: Image, new: np.ndarray, path: Path, options: WriteOptions) -> None:
        from nibabel.volumeutils import array_to_file

        meta = image.meta
        stored = to_stored(image, new)
        header = meta["header"].copy()
        header.set_slope_inter(*meta["scaling"])
        with open(path, "wb") as raw:
            stream: Any = raw
            if meta["gzip"]:
                # No name and no time in the gzip header: reruns give identical bytes.
                stream = gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
                )
            try:
                header.write_to(stream)
                array_to_file(
                    stored, stream, meta["dtype"], offset=header.get_data_offset(), order="F"
                )
            finally:
                if stream is not raw:
                    stream.close()


NIFTI = _Nifti()


def to_stored(image: Image, frames: np.ndarray) -> np.ndarray:
    """New raw values ``(f, 1, a, b)`` back to the on-disk array in the input's shape: undo
    the scaling; integers rounded and clipped to the dtype's range."""
    meta = image.meta
    shape, axis, dtype = meta["shape"], meta["axis"], meta["dtype"]
    slope, inter = meta["scaling"]
    volumes = shape[3] if len(shape) == 4 else 1
    plane = [n for i, n in enumerate(shape[:3]) if i != axis]
    x = (np.asarray(frames, dtype=np.float64).reshape(volumes, shape[axis], *plane) - inter) / slope
    four = np.moveaxis(x, (0, 1), (3, axis))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        out = saturate(four, info.min, info.max, dtype)
    else:
        out = four.astype(dtype)
    return out if len(shape) == 4 else out[..., 0]
