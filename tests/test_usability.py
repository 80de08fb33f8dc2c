"""What a new user meets: help text, exit codes, messages, resume summaries, ignored files."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from svdharm_cli.cli import app
from tests.conftest import svdharm
from tests.dicom_files import installed_files
from tests.images import save, textured

COMMANDS = ("fit-reference", "harmonize", "augment", "bands", "report")

# Defaults that are not plain values: each must be shown in its command's help.
SHOWN_DEFAULTS = {
    "harmonize": ["the CPUs this process may use", "a new timestamped file in OUT", "0.07,0.2,0.5"],
    "augment": ["drawn at random, printed and logged", "the CPUs this process may use"],
    "bands": ["<stem>_bands.png in the current folder", "0.07,0.2,0.5"],
    "report": ["the log's name, .html"],
    "fit-reference": ["0.07,0.2,0.5"],
}


def help_text(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_reads_correctly(command: str) -> None:
    text = help_text(command)
    for default in SHOWN_DEFAULTS[command]:
        assert default in text, (command, default)
    # Swallowed markup leaves a space before the sentence's full stop.
    assert not re.search(r"\w \.", text), text
    usage = re.search(r"Usage: svdharm \S+ \[OPTIONS\] (.*?) ", text)
    assert usage and usage.group(1) == usage.group(1).upper(), text
    if command == "bands":
        assert "reference" not in text


@pytest.mark.parametrize("name", ["rtplan.dcm", "SC_rgb_32bit.dcm", "liver.dcm"])
def test_bands_fails_on_files_it_cannot_show(tmp_path: Path, name: str) -> None:
    files = {p.name: p for p in installed_files()}
    if name not in files:
        pytest.skip(f"{name} is not installed")
    result = svdharm("bands", files[name], "-o", tmp_path / "panel.png")
    assert result.code == 1, result
    assert name in result.stderr and "error" in result.stderr
    assert not (tmp_path / "panel.png").exists()


def test_header_values_never_reach_terminal_or_log(tmp_path: Path) -> None:
    """bad_sequence.dcm makes pydicom warn with its UIDs; none may be printed or logged."""
    import warnings

    import pydicom

    files = {p.name: p for p in installed_files()}
    if "bad_sequence.dcm" not in files:
        pytest.skip("pydicom-data is not installed")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(files["bad_sequence.dcm"], src / "bad_sequence.dcm")
    save(src / "other.png", textured(40, 40, seed=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(src / "bad_sequence.dcm", force=True)
        secrets = {
            str(e.value) for e in ds.iterall() if e.VR == "UI" and len(str(e.value)) > 20
        } | {str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))}
    secrets = {s for s in secrets if len(s) > 3}
    assert secrets
    out, ref = tmp_path / "out", tmp_path / "ref.json"
    runs = [
        svdharm("bands", src / "bad_sequence.dcm", "-o", tmp_path / "p.png"),
        svdharm("fit-reference", src / "bad_sequence.dcm", "-o", ref),
        svdharm("augment", src, out, "--seed", 1, "--workers", 2),
        svdharm("augment", src, tmp_path / "out1", "--seed", 1, "--workers", 1, "-q"),
    ]
    texts = [r.stdout + r.stderr for r in runs] + [
        p.read_text() for p in [*out.glob("*.json"), ref] if p.exists()
    ]
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert "UserWarning" not in "".join(texts)
