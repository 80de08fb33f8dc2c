"""Shared fixtures: running the real CLI (in this process, or in a subprocess where the
process itself is under test), and generated image trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.images import save, textured

# Runs with several workers start them at once (not after a second of work in the main
# process, the default): tests of several workers must exercise them even on the small
# trees used here. The tests of the default set this themselves.
os.environ["SVDHARM_SOLO_SECONDS"] = "0"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def svdharm(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
    """Run ``svdharm ARGS`` as a user would, output not a terminal: in this process
    (Typer's test runner: the same app, exit code, stdout and stderr, no interpreter start),
    or with ``env`` in a subprocess of its own (an environment read once per process, such
    as the fake CUDA device's, must not leak into other tests)."""
    if env is None:
        return _in_process([str(a) for a in args], cwd)
    return in_subprocess(*args, cwd=cwd, env=env)


def in_subprocess(
    *args: object, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Result:
    """Run ``python -m svdharm_cli ARGS`` in a new interpreter (signals, process exits)."""
    proc = subprocess.run(
        [sys.executable, "-m", "svdharm_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _in_process(args: list[str], cwd: Path | None) -> Result:
    from typer.testing import CliRunner

    from svdharm_cli.files.safety import quiet_libraries
    from svdharm_cli.ui.app import app

    quiet_libraries()  # as main() does
    argv, here = sys.argv, os.getcwd()
    sys.argv = ["svdharm", *args]
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(app, args, catch_exceptions=True)
    finally:
        sys.argv = argv
        os.chdir(here)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return Result(result.exit_code, result.stdout, stderr)


def start_svdharm(*args: object) -> subprocess.Popen[str]:
    """Start ``python -m svdharm_cli ARGS`` in the background (to signal it mid-run)."""
    return subprocess.Popen(
        [sys.executable, "-m", "svdharm_cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def only_log(folder: Path) -> dict[str, Any]:
    logs = sorted(folder.glob("svdharm-*.json"))
    assert len(logs) == 1, logs
    return json.loads(logs[0].read_text())


@pytest.fixture
def gray_tree(tmp_path: Path) -> Path:
    """in/ with 8-bit PNG, 16-bit PNG and JPEG grayscale images in nested folders."""
    root = tmp_path / "in"
    save(root / "site1" / "a.png", textured(48, 64, seed=1))
    save(root / "site1" / "deep" / "b16.png", textured(40, 40, seed=2), bits=16)
    save(root / "site2" / "c.jpg", textured(32, 48, seed=3), quality=95)
    save(root / "site2" / "d.png", textured(50, 30, seed=4) * 0.5 + 0.2)
    (root / "site2" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def gray_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gray reference fitted once per session (tests read it, none changes it)."""
    tmp_path = tmp_path_factory.mktemp("gray_reference")
    refs = tmp_path / "refs"
    save(refs / "r1.png", textured(60, 60, seed=10) * 0.7 + 0.2)
    save(refs / "r2.png", textured(44, 52, seed=11) * 0.6 + 0.25)
    out = tmp_path / "reference.json"
    result = svdharm("fit-reference", refs, "-o", out)
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def dicom_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """Every installed DICOM file and svdharm's own generated ones, augmented once for the
    session: the DICOM tests and the validator test read the same run."""
    import numpy as np
    import pydicom

    from tests.dicom_files import copy_installed, make_dicom, radiograph

    root = tmp_path_factory.mktemp("dicom")
    src = root / "in"
    copy_installed(src / "installed")
    own = src / "own"
    make_dicom(own / "mono1_12bit.dcm", radiograph(), photometric="MONOCHROME1", bits_stored=12)
    signed = radiograph(bits=16).astype(np.int32) - 32768
    make_dicom(own / "signed16.dcm", signed.astype(np.int16), bits_stored=16)
    make_dicom(own / "nf1.dcm", radiograph(seed=3)[None], NumberOfFrames=1)
    padded = radiograph(seed=4)
    padded[:10] = 0
    make_dicom(own / "padded.dcm", padded, PixelPaddingValue=0)
    series = pydicom.uid.generate_uid(entropy_srcs=["shared series"])
    for i in range(2):
        make_dicom(own / f"series_{i}.dcm", radiograph(seed=10 + i), series=series)
    make_dicom(
        own / "windowed.dcm",
        radiograph(seed=5),
        WindowCenter=2000,
        WindowWidth=4000,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        SmallestImagePixelValue=0,
        LargestImagePixelValue=4095,
        LossyImageCompression="01",
        LossyImageCompressionRatio=8,
    )
    # An extension-less file, found by its DICM marker.
    (own / "IMG0001").write_bytes((own / "nf1.dcm").read_bytes())
    out = root / "out"
    result = svdharm("augment", src, out, "--seed", 9, "--workers", 2)
    return src, out, {"result": result, "log": only_log(out)}
