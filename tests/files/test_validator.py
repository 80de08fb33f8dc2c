"""Derived DICOM that David Clunie's validator accepts: dciodvfy (Debian ``dicom3tools``).

Every DICOM file that ships with pydicom and pydicom-data, and the tests' own generated
files (a series, MONOCHROME1, signed, padded, windowed), go through one augment run (the
session's ``dicom_run``); each output is validated and must have no error that its source
does not have. A source's errors are those of the file itself and of
the same file re-encoded by pydicom in Explicit VR Little Endian with nothing else changed
(dciodvfy cannot read deflated or some encapsulated files, and reports only that), and a
malformed UID of the source that the output references (Referenced SOP Instance / Class UID
in the Source Image Sequence) counts as the source's own error on its SOP Instance / Class
UID.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DCIODVFY = shutil.which("dciodvfy")
REFERENCED = (
    (
        re.compile(r"\(0x0008,0x1155\) (UI )?Referenced SOP Instance UID"),
        r"(0x0008,0x0018) \1SOP Instance UID",
    ),
    (
        re.compile(r"\(0x0008,0x1150\) (UI )?Referenced SOP Class UID"),
        r"(0x0008,0x0016) \1SOP Class UID",
    ),
)


def errors(path: Path) -> set[str]:
    """dciodvfy's error lines for one file, white space folded."""
    assert DCIODVFY is not None
    run = subprocess.run(
        [DCIODVFY, str(path)], capture_output=True, text=True, errors="replace", timeout=60
    )
    lines = (run.stdout + run.stderr).splitlines()
    return {re.sub(r"\s+", " ", line.strip()) for line in lines if line.startswith("Error")}


def as_source(error: str) -> str:
    """An output's error about a UID it copied from its source, as the source's error."""
    for copied, own in REFERENCED:
        error = copied.sub(own, error)
    return error


def reencoded(source: Path, folder: Path) -> Path | None:
    """The source in Explicit VR Little Endian, pixels decompressed, nothing else changed."""
    target = folder / source.name
    try:
        ds = pydicom.dcmread(source, force=True)
        if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(target, implicit_vr=False, little_endian=True, enforce_file_format=False)
    except Exception:  # the source cannot be re-encoded: its own errors are the baseline
        return None
    return target


@pytest.fixture(scope="module")
def validated(dicom_run: tuple[Path, Path, dict], tmp_path_factory: pytest.TempPathFactory) -> dict:
    if DCIODVFY is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
    src, out, run = dicom_run
    assert run["result"].code in (0, 1), run["result"].stderr
    return {"src": src, "out": out, "log": run["log"], "top": tmp_path_factory.mktemp("dciodvfy")}


def test_no_derived_object_has_an_error_its_source_does_not_have(validated: dict) -> None:
    src, out, top = validated["src"], validated["out"], validated["top"]
    plain = top / "reencoded"
    plain.mkdir()
    done = [r for r in validated["log"]["files"] if r["status"] == "ok"]

    def new_errors(record: dict) -> tuple[str, set[str], int]:
        source = src / record["path"]
        baseline = errors(source)
        again = reencoded(source, plain)
        if again is not None:
            baseline |= errors(again)
        found: set[str] = set()
        for output in record["outputs"]:
            found |= {as_source(e) for e in errors(out / output["path"])} - baseline
        return record["path"], found, len(record["outputs"])

    with ThreadPoolExecutor(4) as pool:  # dciodvfy runs as its own process
        checked = list(pool.map(new_errors, done))
    assert sum(n for _, _, n in checked) >= 100
    bad = {path: found for path, found, _ in checked if found}
    assert not bad, "\n".join(f"{k}: {sorted(v)}" for k, v in sorted(bad.items()))


def test_enhanced_objects_are_derived_primary_in_every_frame_type(validated: dict) -> None:
    out = validated["out"]
    checked = 0
    for name in ("eCT_Supplemental", "emri_small", "emri_small_RLE"):
        path = out / "installed" / f"{name}_aug0.dcm"
        if not path.exists():
            continue
        ds = pydicom.dcmread(path)
        assert list(ds.ImageType)[:2] == ["DERIVED", "PRIMARY"] and len(ds.ImageType) == 4
        assert "PulseSequenceName" not in ds and "CoverageOfKSpace" not in ds
        for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            for item in ds.get(group, []) or []:
                for element in item:
                    if element.VR == "SQ":
                        for macro in element.value:
                            if "FrameType" in macro:
                                assert list(macro.FrameType)[:2] == ["DERIVED", "PRIMARY"]
                                checked += 1
    assert checked >= 1  # eCT_Supplemental's frame types


def test_classic_objects_stay_derived_secondary(validated: dict) -> None:
    ds = pydicom.dcmread(validated["out"] / "installed" / "CT_small_aug0.dcm")
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID
