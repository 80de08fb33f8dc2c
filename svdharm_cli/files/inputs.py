"""Reading an input (one image file, or the files of a DICOM series): its images, their
masks, the volumes they form. No transform, no output: the worker, fit-reference, compare
(and any other client of the method) read inputs through these functions.

:func:`read_input` reads every file of an input, checking from each header, before pixels are
decoded, that the files of a series are of one kind and that a reference has an entry for
them (:func:`entry_for`); :func:`input_masks` gives each file's statistics mask (DICOM
padding, ``--mask auto`` or ``--mask-dir``); :func:`volumes_of` says which slices are pooled
together (METHOD.md section 3a).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from svdharm_cli.core.masks import MaskMode
from svdharm_cli.core.reference import Entry, Reference, describe_kind
from svdharm_cli.errors import ImageError
from svdharm_cli.files.formats import DEFAULT_MAX_PIXELS, Image, ImageInfo, read_image
from svdharm_cli.files.kinds import KindRule, rule_kind
from svdharm_cli.files.plan import Input


def read_input(
    root: Path,
    inp: Input,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    slice_axis: int = 2,
    reference: Reference | None = None,
    kinds: Sequence[KindRule] = (),
) -> list[Image]:
    """Read every file of the input, each of the kind the first of ``kinds`` matching its
    relative path gives, else of the kind its file says (:mod:`svdharm_cli.files.kinds`).
    The files of a series must be of one kind, and with a ``reference`` each must have an
    entry; both are checked from each file's header, before its pixels are decoded."""
    images: list[Image] = []
    expected: list[ImageInfo] = []
    ruled = [rule_kind(kinds, rel) for rel in inp.files]

    def check(info: ImageInfo) -> None:
        k = len(images)
        rule = ruled[k]
        if rule is not None:
            info = replace(info, kind=rule)
        if reference is not None:
            entry_for(reference, info, root / inp.files[k])
        if expected and (info.kind, info.unit, info.channels) != (
            expected[0].kind,
            expected[0].unit,
            expected[0].channels,
        ):
            raise ImageError(
                f"{root / inp.files[k]}: is {_described(info)} but the series' first file is "
                f"{_described(expected[0])}"
            )
        expected.append(info)

    for rel, rule in zip(inp.files, ruled):
        image = read_image(root / rel, max_pixels, check, slice_axis)
        images.append(image if rule is None else replace(image, kind=rule))
    return images


def entry_for(reference: Reference | None, info: ImageInfo, path: Path) -> Entry | None:
    """The reference entry for this kind of image; an :class:`ImageError` naming the
    image's kind and the reference's when none fits."""
    if reference is None:
        return None
    entry = reference.entry(info.unit, info.channels, info.kind)
    if entry is None:
        raise ImageError(
            f"{path}: is {_described(info)}, but the reference has entries only for "
            f"{reference.kinds()}",
            hint="fit a reference that includes images of this kind, or name the kind of "
            "these files with --kind NAME=GLOB",
        )
    return entry


def _described(info: ImageInfo) -> str:
    """``"of kind MR, gray (1 channel) in normalized units"``, ``"of no kind, ..."``."""
    kind = f"of kind {info.kind}" if info.kind else "of no kind"
    return f"{kind}, {describe_kind(info.unit, info.channels)}"


@dataclass(frozen=True)
class MaskFiles:
    """Where each input file's mask file is: under a ``folder`` mirroring the inputs
    (``--mask-dir``), or ``listed`` by relative path (a manifest's ``mask`` column: a file
    it lists no mask for is taken whole)."""

    folder: Path | None = None
    listed: Mapping[str, Path] | None = None

    def __call__(self, rel: str) -> Path | None:
        if self.listed is not None:
            return self.listed.get(rel)
        return None if self.folder is None else self.folder / rel


def input_masks(
    images: list[Image],
    inp: Input,
    root: Path,
    mask: MaskMode = MaskMode.NONE,
    mask_dir: Path | MaskFiles | None = None,
    slice_axis: int = 2,
) -> list[np.ndarray | None]:
    """The statistics mask of each file of an input, bool ``(f, h, w)`` or None (every pixel):
    DICOM Pixel Padding, intersected with the automatic estimate (``mask="auto"``, one per
    volume) or with the file's mask file (``mask="dir"``: the same relative path under
    ``mask_dir``, or where :class:`MaskFiles` says)."""
    from svdharm_cli.core.masks import auto_mask
    from svdharm_cli.files.formats import read_mask

    if mask == MaskMode.AUTO:
        estimate = auto_mask(np.concatenate([im.frames for im in images]))
        sizes = np.cumsum([0] + [im.frame_count for im in images])
        extra: list[np.ndarray | None] = [estimate[a:b] for a, b in zip(sizes, sizes[1:])]
    elif mask == MaskMode.DIR:
        assert mask_dir is not None, "mask 'dir' needs a mask folder"
        files = mask_dir if isinstance(mask_dir, MaskFiles) else MaskFiles(mask_dir)
        extra = []
        for rel, image in zip(inp.files, images):
            path = files(rel)
            if path is None:
                extra.append(None)
                continue
            if not path.is_file():
                where = "--mask-dir mirrors IN" if files.listed is None else "the manifest's"
                raise ImageError(f"{root / rel}: no mask file {path} ({where})")
            found = read_mask(path, slice_axis)
            want = (image.frame_count, *image.frames.shape[2:])
            if found.shape != want:
                raise ImageError(
                    f"{path}: a mask of {found.shape[0]} x {found.shape[1]}x{found.shape[2]} "
                    f"does not fit {root / rel} ({want[0]} x {want[1]}x{want[2]}, "
                    "slices x rows x columns)"
                )
            extra.append(found)
    else:
        extra = [None] * len(images)
    out: list[np.ndarray | None] = []
    for image, given in zip(images, extra):
        if image.mask is None or given is None:
            out.append(image.mask if given is None else given)
        else:
            out.append(image.mask & given)
    return out


def volumes_of(images: list[Image]) -> list[list[int]]:
    """Slice indices pooled together: a series (several files) is one volume; a single file
    holds ``image.volumes`` volumes of equal size."""
    if len(images) > 1:
        return [list(range(sum(im.frame_count for im in images)))]
    image = images[0]
    size = image.frame_count // image.volumes
    return [list(range(v * size, (v + 1) * size)) for v in range(image.volumes)]
