"""What a new user meets: help text, exit codes, messages, resume summaries, ignored files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from svdharm_cli.ui.app import app
from tests.conftest import only_log, svdharm
from tests.dicom_files import installed_files
from tests.images import save, textured

COMMANDS = ("fit-reference", "harmonize", "augment", "bands", "report", "compare")

# Defaults that are not plain values, and bracketed text markup could swallow: each must
# be shown in its command's help.
CLUSTER = ["svdharm[dask]", "DASK_SCHEDULER_ADDRESS", "the local pool"]
SHOWN_DEFAULTS = {
    "harmonize": [
        "the CPUs this process may use",
        "a new timestamped file in OUT",
        "0.07,0.2,0.5",
        *CLUSTER,
    ],
    "augment": ["drawn at random, printed and logged", "the CPUs this process may use", *CLUSTER],
    "bands": ["<stem>_bands.png in the current folder", "0.07,0.2,0.5"],
    "report": ["the log's name, .html"],
    "fit-reference": ["0.07,0.2,0.5", "the CPUs this process may use", *CLUSTER],
    "compare": ["0.07,0.2,0.5", "the CPUs this process may use", *CLUSTER],
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


def test_resume_counts_done_files_and_says_how_many_failures_were_retried(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        save(src / f"ok{i}.png", textured(32, 32, seed=i))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert svdharm("augment", src, out, "--seed", 3).code == 1
    resumed = svdharm("augment", src, out, "--seed", 3, "--skip-existing")
    assert resumed.code == 1
    assert "skipped:" not in resumed.stdout  # done files are counted, not listed
    assert "resumed: 3 files up to date; 1 that failed before tried again" in resumed.stdout
    newest = max(out.glob("svdharm-augment-*.json"), key=lambda p: p.stat().st_mtime_ns)
    log = json.loads(newest.read_text())
    assert log["counts"]["already_done"] == 3 and log["counts"]["retried_failures"] == 1


def test_ignored_files_are_counted_and_named(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", textured(32, 32))
    (src / "notes.txt").write_text("not an image")
    (src / "sub").mkdir()
    (src / "sub" / "table.csv").write_text("1,2")
    result = svdharm("augment", src, out, "--seed", 1)
    assert result.code == 0
    assert "(2 files written)" not in result.stdout and "(1 file written)" in result.stdout
    assert "ignored 2 files that are not images" in result.stdout
    log = only_log(out)
    assert log["ignored"] == ["notes.txt", "sub/table.csv"] and log["counts"]["ignored"] == 2


def test_reference_given_a_folder_says_what_to_pass(tmp_path: Path) -> None:
    save(tmp_path / "in" / "a.png", textured(32, 32))
    (tmp_path / "refs").mkdir()
    result = svdharm(
        "harmonize", tmp_path / "in", tmp_path / "out", "--reference", tmp_path / "refs"
    )
    assert result.code == 2
    assert "is a folder; pass a reference JSON" in result.stderr
    assert "svdharm fit-reference" in result.stderr


def test_fit_reference_include_exclude(tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    save(refs / "keep" / "a.png", textured(32, 32, seed=1))
    save(refs / "keep" / "b.png", textured(32, 32, seed=2))
    save(refs / "drop" / "c.png", textured(32, 32, seed=3))
    out = tmp_path / "ref.json"
    result = svdharm(
        "fit-reference", refs, "-o", out, "--include", "keep/*", "--exclude", "*/b.png"
    )
    assert result.code == 0, result.stderr
    sources = [s["path"] for s in json.loads(out.read_text())["sources"]]
    assert [Path(s).name for s in sources] == ["a.png"]
    assert "reference from 1 file (" in result.stdout


@pytest.mark.slow
def test_package_builds_without_warnings_and_ships_its_template(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path, root],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "BuildBackendWarning" not in proc.stderr and "absent from" not in proc.stderr
    [wheel] = tmp_path.glob("svdharm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "svdharm_cli/ui/templates/report.html.j2" in names
    assert "svdharm_cli/files/formats/nifti.py" in names
