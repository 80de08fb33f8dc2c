"""The DICOM outputs as derived objects: stored values, windows, identity, provenance and
the attributes that no longer describe the new pixels (the writing half of
:mod:`svdharm_cli.files.formats.dicom`; the README's DICOM section says what is kept,
replaced and added)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from svdharm_cli import __version__
from svdharm_cli.files.formats import HU, Image, OutputContext, saturate

IMPLEMENTATION_CLASS_UID = "2.25.216944208127474350906377604787433938179"
_UID_NAMESPACE = uuid.UUID(int=int(IMPLEMENTATION_CLASS_UID.split(".")[-1]))
IMPLEMENTATION_VERSION_NAME = "SVDHARM_" + __version__.replace(".", "")[:8]
SOURCE_IMAGE_CODE = ("121322", "DCM", "Source image for image processing operation")
MODIFYING_EQUIPMENT_CODE = ("109103", "DCM", "Modifying Equipment")
PROCESSED = {
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
    "YBR_PARTIAL_420",
}
STANDARD_PHOTOMETRIC = {"YBR_PARTIAL_422", "HSV", "ARGB", "CMYK", "XYB"}
"""Defined terms (PS3.3 C.7.6.3.1.2) not processed here: named in messages; any other
value (a damaged one) is not quoted."""
ORIGINAL_ONLY = (
    # MR Pulse Sequence Module (PS3.3 C.8.13.4): Type 1C, required if Image Type value 1 is
    # ORIGINAL or MIXED.
    "PulseSequenceName",
    "MRAcquisitionType",
    "EchoPulseSequence",
    "MultipleSpinEcho",
    "MultiPlanarExcitation",
    "PhaseContrast",
    "VelocityEncodingAcquisitionSequence",
    "TimeOfFlightContrast",
    "ArterialSpinLabelingContrast",
    "SteadyStatePulseSequence",
    "EchoPlanarPulseSequence",
    "SaturationRecovery",
    "SpectrallySelectedSuppression",
    "OversamplingPhase",
    "GeometryOfKSpaceTraversal",
    "RectilinearPhaseEncodeReordering",
    "SegmentedKSpaceTraversal",
    "CoverageOfKSpace",
    "NumberOfKSpaceTrajectories",
    # Bulk Motion Synchronization Module (C.7.6.18.3): the same condition.
    "BulkMotionCompensationTechnique",
    "BulkMotionSignalSource",
)
"""Attributes of an enhanced MR image that describe an ORIGINAL acquisition: removed from
a derived one."""
STALE = (
    "VOILUTSequence",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "IconImageSequence",
    "WindowCenterWidthExplanation",
)


def to_stored(image: Image, frames: np.ndarray) -> np.ndarray:
    """Working units ``(f, c, h, w)`` back to stored values ``(f, h, w, c)``: undo the
    normalization, each frame's rescale, round, clip to the BitsStored range (saturation);
    padding pixels get their original stored values back."""
    meta = image.meta
    x = np.moveaxis(np.asarray(frames, dtype=np.float64), 1, 3)
    if image.unit != HU:
        x = np.clip(x, 0.0, 1.0)
        if str(meta["dataset"].PhotometricInterpretation) == "MONOCHROME1":
            x = 1.0 - x
        x = x * meta["scale"][1] + meta["scale"][0]
    x = (x - meta["intercepts"][:, None, None, None]) / meta["slopes"][:, None, None, None]
    low, high = meta["range"]
    stored = saturate(x, low, high, meta["dtype"])
    if image.mask is not None:
        stored[..., 0][~image.mask] = meta["padding"]
    return stored


def volume_window(images: Sequence[Image], stored: Sequence[np.ndarray]) -> tuple[str, str]:
    """Window Center/Width spanning the rescaled values of every file of one output volume
    (padding excluded), as Decimal Strings."""
    lo, hi, step = np.inf, -np.inf, 1.0
    for image, values in zip(images, stored):
        for f in range(values.shape[0]):
            plane = values[f, ..., 0]
            if image.mask is not None:
                plane = plane[image.mask[f]]
            if plane.size == 0:
                continue
            slope, intercept = image.meta["slopes"][f], image.meta["intercepts"][f]
            ends = (slope * float(plane.min()) + intercept, slope * float(plane.max()) + intercept)
            lo, hi = min(lo, *ends), max(hi, *ends)
            step = max(step, abs(float(slope)))
    if not np.isfinite(lo):
        lo = hi = 0.0
    return _ds_value((lo + hi) / 2), _ds_value(max(1.0, hi - lo + step))


def ensure_file_meta(ds: Any) -> None:
    from pydicom.dataset import FileMetaDataset

    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME


def derived_uid(*parts: str) -> str:
    """A UID under the ``2.25`` root from a name-based (SHA-1, version 5) UUID of ``parts``:
    the same parts always give the same UID, so reruns write byte-identical files."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(0).join(parts)).int}"


def identity(ds: Any, src: Any, context: OutputContext) -> None:
    source_uid = str(src.get("SOPInstanceUID", ""))
    source_series = str(src.get("SeriesInstanceUID", ""))
    sop_uid = derived_uid("instance", context.instance_key, source_uid)
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = derived_uid("series", context.series_key, source_series)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    if "SOPClassUID" in src:
        ds.file_meta.MediaStorageSOPClassUID = src.SOPClassUID
    suffix = f" [{context.label}]" if context.label else ""
    description = str(src.get("SeriesDescription", "") or "")
    ds.SeriesDescription = (description[: max(0, 64 - len(suffix))] + suffix).strip()[:64]
    try:
        number = int(src.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        number = 0
    ds.SeriesNumber = (number + 1000 * (context.copy + 1)) % 2**31


def _code(value: tuple[str, str, str]) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def provenance(ds: Any, src: Any, context: OutputContext, lossy_syntax: str | None) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    _derived_type(ds, src)
    ds.DerivationDescription = context.description[:1024]
    ref = Dataset()
    if "SOPClassUID" in src:
        ref.ReferencedSOPClassUID = src.SOPClassUID
    if "SOPInstanceUID" in src:
        ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    ref.PurposeOfReferenceCodeSequence = Sequence([_code(SOURCE_IMAGE_CODE)])
    ds.SourceImageSequence = Sequence([ref])
    equipment = Dataset()
    equipment.Manufacturer = "svdharm"
    equipment.SoftwareVersions = __version__
    equipment.ContributionDescription = context.description[:1024]
    equipment.PurposeOfReferenceCodeSequence = Sequence([_code(MODIFYING_EQUIPMENT_CODE)])
    previous = list(src.get("ContributingEquipmentSequence", []) or [])
    ds.ContributingEquipmentSequence = Sequence([*copy.deepcopy(previous), equipment])
    if src.get("LossyImageCompression") == "01" or lossy_syntax:
        ds.LossyImageCompression = "01"
        if lossy_syntax and "LossyImageCompressionMethod" not in src:
            ds.LossyImageCompressionMethod = lossy_syntax


def _is_enhanced(ds: Any) -> bool:
    """Whether an object is of an enhanced (multi-frame functional group) IOD, whose Image
    Type follows PS3.3 C.8.16.1: by its SOP class (Enhanced CT, MR, MR Color, PET, XA, XRF,
    US Volume, Legacy Converted Enhanced CT/MR/PET), or by carrying functional groups."""
    name = sop_name(sop_class(ds)) or ""
    if "Enhanced" in name:
        return True
    return "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds


def _derived_type(ds: Any, src: Any) -> None:
    """Image Type (and every Frame Type) of the derived object."""
    image_type = [str(v) for v in (src.get("ImageType", []) or [])]
    if not _is_enhanced(src):
        ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
        return
    ds.ImageType = ["DERIVED", "PRIMARY", *image_type[2:4]]
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in ds.get(group, []) or []:
            for element in item:
                if element.VR != "SQ":
                    continue
                for macro in element.value:  # a frame type sequence, whichever modality's
                    if "FrameType" in macro:
                        values = [str(v) for v in (macro.FrameType or [])]
                        macro.FrameType = ["DERIVED", "PRIMARY", *values[2:4]]
    for keyword in ORIGINAL_ONLY:
        if keyword in ds:
            delattr(ds, keyword)


def fix_stale(ds: Any, window: tuple[str, str] | None) -> None:
    """Remove what the new intensities make wrong and set the volume's window."""
    for keyword in STALE:
        if keyword in ds:
            delattr(ds, keyword)
    if window is None:
        for keyword in ("WindowCenter", "WindowWidth"):
            if keyword in ds:
                delattr(ds, keyword)
        return
    center, width = window
    ds.WindowCenter, ds.WindowWidth = center, width
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in ds.get(group, []) or []:
            for voi in item.get("FrameVOILUTSequence", []) or []:
                voi.WindowCenter, voi.WindowWidth = center, width
                if "WindowCenterWidthExplanation" in voi:
                    del voi.WindowCenterWidthExplanation
                # A stale per-frame LUT would override the new window.
                if "VOILUTSequence" in voi:
                    del voi.VOILUTSequence


def _ds_value(x: float) -> str:
    """A Decimal String of at most 16 characters."""
    text = f"{x:.6g}"
    return text if len(text) <= 16 else f"{x:.8e}"


def sop_class(ds: Any) -> str:
    """The SOP Class UID, else the file meta's Media Storage SOP Class UID (DICOMDIR)."""
    sop = ds.get("SOPClassUID")
    if sop is None:
        sop = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return str(sop or "")


def sop_name(uid: str) -> str | None:
    """The standard name of a SOP class UID, or None when it is not one the standard
    defines (unknown, private or damaged): such a UID is never quoted."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return None if not uid or name == uid else name
