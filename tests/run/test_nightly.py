"""Unattended runs (cron, clusters): what the walk opens, what a run leaves out and says,
names that cannot forge lines, references that cannot hide absurd values."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from svdharm_cli.files.atomic import NAME_MAX, temp_name
from svdharm_cli.files.plan import discover
from tests.conftest import only_log, svdharm
from tests.images import save, textured


def _tree(root: Path) -> Path:
    save(root / "a.png", textured(40, 48, seed=1))
    save(root / "sub" / "b.png", textured(36, 36, seed=2))
    return root


def test_a_fifo_socket_or_device_is_never_opened(tmp_path: Path) -> None:
    """A FIFO named like an image used to hang the run for ever (opened to be sniffed);
    now it is left out with a note, and the next run is not locked out."""
    inp = _tree(tmp_path / "in")
    os.mkfifo(inp / "pipe.png")
    os.mkfifo(inp / "sub" / "noext")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(inp / "sub" / "sock.dcm"))
    try:
        out = tmp_path / "out"
        result = svdharm("augment", inp, out, "--seed", 1, "--workers", 1)
        assert result.code == 0, result.stderr
        log = only_log(out)
        assert log["counts"]["ok"] == 2
        assert "pipe.png: a FIFO (named pipe), not a regular file; left out" in log["warnings"]
        assert "sub/sock.dcm: a socket, not a regular file; left out" in log["warnings"]
        assert "warning: pipe.png: a FIFO" in result.stderr
        again = svdharm("augment", inp, out, "--seed", 1, "--workers", 1, "--skip-existing")
        assert again.code == 0, again.stderr
    finally:
        sock.close()


def test_an_unreadable_folder_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root a folder's permissions do not stop its listing, so the listing is made to
    fail as it does for an unprivileged user (PermissionError from scandir)."""
    from typer.testing import CliRunner

    from svdharm_cli.files import plan
    from svdharm_cli.ui.app import app

    inp = _tree(tmp_path / "in")
    save(inp / "locked" / "c.png", textured(30, 30, seed=3))
    real = os.scandir

    def scandir(path: str) -> object:
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(plan.os, "scandir", scandir)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["harmonize", str(inp), str(out), "--reference", str(inp / "a.png"), "--workers", "1"]
    )
    assert result.exit_code == 1, result.output
    log = only_log(out)
    records = {f["path"]: f for f in log["files"]}
    assert records["locked/"]["status"] == "failed"
    assert "could not be listed (Permission denied)" in records["locked/"]["reason"]
    assert log["counts"]["failed"] == 1 and log["counts"]["ok"] == 2
    assert log["counts"]["not_processed"] == 0
    found = discover(inp)
    assert found.unlisted == [
        ("locked/", plan._listing_problem(PermissionError(13, "Permission denied")))
    ]


def test_another_runs_output_inside_the_input_is_left_out(tmp_path: Path) -> None:
    """harmonize in in/harm, then augment in out: the harmonized outputs are not augmented
    (they used to be, nesting deeper every night)."""
    inp = _tree(tmp_path / "in")
    first = svdharm("harmonize", inp, inp / "harm", "--reference", inp / "a.png", "--workers", 1)
    assert first.code == 0, first.stderr
    out = tmp_path / "aug"
    result = svdharm("augment", inp, out, "--seed", 3, "--workers", 1)
    assert result.code == 0, result.stderr
    log = only_log(out)
    assert sorted(f["path"] for f in log["files"] if f["status"] == "ok") == ["a.png", "sub/b.png"]
    note = "harm/: another svdharm run's output folder (its lock or logs); left out"
    assert note in log["warnings"]
    assert not (out / "harm").exists()


def test_names_cannot_forge_lines_or_break_the_report(tmp_path: Path) -> None:
    """A damaged file named 'x\\nfailed: fake.png' used to print a forged line; a name that
    is not UTF-8 crashed --report."""
    inp = _tree(tmp_path / "in")
    (inp / "x\nfailed: fake.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (inp / "esc\x1b[31m.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    latin = os.fsdecode(b"caf\xe9.png")
    save(inp / latin, textured(32, 32, seed=5))
    out = tmp_path / "out"
    result = svdharm("augment", inp, out, "--seed", 1, "--workers", 1, "--report")
    assert result.code == 1, result.stderr
    lines = result.stderr.splitlines()
    assert not any(line.startswith("failed: fake.png") for line in lines)
    assert any("x\\nfailed: fake.png" in line for line in lines)
    assert "\x1b" not in result.stderr and "esc\\x1b[31m.png" in result.stderr
    html = next(out.glob("*.html")).read_text(encoding="utf-8")
    assert "caf\\udce9" in html
    assert (out / os.fsdecode(b"caf\xe9_aug0.png")).is_file()


def test_a_long_name_needs_no_longer_temporary(tmp_path: Path) -> None:
    long = "n" * (NAME_MAX - len("_aug0.png")) + ".png"
    assert len(temp_name(tmp_path / long).name) <= NAME_MAX
    inp = tmp_path / "in"
    save(inp / long, textured(32, 32, seed=6))
    out = tmp_path / "out"
    result = svdharm("augment", inp, out, "--seed", 1, "--workers", 1)
    assert result.code == 0, result.stderr
    assert (out / (long[: -len(".png")] + "_aug0.png")).is_file()


def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def _reference(tmp_path: Path) -> dict:
    save(tmp_path / "r.png", textured(40, 40, seed=7))
    out = tmp_path / "r.json"
    assert svdharm("fit-reference", tmp_path / "r.png", "-o", out).code == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["entries"][0]["mean"][0].__setitem__(0, 1e308),
            "field 'entries[0].mean' holds 1e+308, beyond",
        ),
        (
            lambda d: d["entries"][0]["std"][0].__setitem__(1, 40.0),
            "field 'entries[0].std' holds 40",
        ),
        (lambda d: d.__setitem__("sources", _nested(18)), "nested more than 16 levels"),
    ],
)
def test_hand_edited_references_are_refused(tmp_path: Path, edit: object, message: str) -> None:
    data = _reference(tmp_path)
    edit(data)  # type: ignore[operator]
    ref = tmp_path / "edited.json"
    ref.write_text(json.dumps(data))
    inp = _tree(tmp_path / "in")
    result = svdharm("harmonize", inp, tmp_path / "out", "--reference", ref)
    assert result.code == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_reference_nested_beyond_the_parser_is_refused(tmp_path: Path) -> None:
    ref = tmp_path / "deep.json"
    ref.write_text("[" * 100_000 + "]" * 100_000)
    inp = _tree(tmp_path / "in")
    result = svdharm("harmonize", inp, tmp_path / "out", "--reference", ref)
    assert result.code == 2, result.stderr
    assert "nested more deeply than" in result.stderr and "Traceback" not in result.stderr


def test_a_reference_file_too_large_is_refused(tmp_path: Path) -> None:
    from svdharm_cli.core import reference

    ref = tmp_path / "big.json"
    with open(ref, "wb") as f:
        f.truncate(reference.MAX_FILE_BYTES + 1)
    result = svdharm("merge-references", ref, ref, "-o", tmp_path / "m.json")
    assert result.code == 2, result.stderr
    assert "larger than 256 MiB" in result.stderr


def test_the_walk_reads_no_file_of_a_quiet_tree(tmp_path: Path) -> None:
    """Listing costs a scandir per folder: the images found are the same as before."""
    inp = _tree(tmp_path / "in")
    found = discover(inp)
    assert found.images == ["a.png", "sub/b.png"] and found.notes == [] and found.unlisted == []
    assert np.asarray(found.images).size == 2


def _many(root: Path, count: int, size: int = 96) -> Path:
    for k in range(count):
        save(root / f"img{k:02d}.png", textured(size, size, seed=k))
    return root


@pytest.mark.slow
def test_a_unit_that_kills_its_worker_once_is_tried_again(tmp_path: Path) -> None:
    """The worker holding img03 dies by SIGKILL (as the out-of-memory killer kills): the
    pool is rebuilt, img03 is tried again in a fresh worker and succeeds, the batch goes
    on, the log is complete, and no temporary is left."""
    inp = _many(tmp_path / "in", 12)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "SVDHARM_TEST_CRASH": "img03.png",
        "SVDHARM_TEST_CRASH_ONCE": str(tmp_path / "crashed"),
    }
    result = svdharm("augment", inp, out, "--seed", 1, "--workers", 2, env=env)
    assert result.code == 0, result.stderr
    log = only_log(out)
    assert log["counts"]["ok"] == 12 and log["counts"]["failed"] == 0
    assert any(
        "a worker died (killed by SIGKILL" in w and "img03.png" in w for w in log["warnings"]
    )
    assert log["executor"]["processes"] >= 4  # the pool was rebuilt
    assert not list(out.rglob("*.svdharm-tmp"))
    assert len(list(out.glob("*_aug0.png"))) == 12


@pytest.mark.slow
def test_a_unit_that_kills_every_worker_fails_alone(tmp_path: Path) -> None:
    inp = _many(tmp_path / "in", 10)
    out = tmp_path / "out"
    env = {**os.environ, "SVDHARM_TEST_CRASH": "img05.png"}
    result = svdharm("augment", inp, out, "--seed", 1, "--workers", 2, env=env)
    assert result.code == 1, result.stderr
    log = only_log(out)
    records = {f["path"]: f for f in log["files"]}
    assert records["img05.png"]["status"] == "failed"
    assert "its worker died twice (killed by SIGKILL" in records["img05.png"]["reason"]
    assert log["counts"]["ok"] == 9 and log["counts"]["failed"] == 1
    assert "failed:" in result.stderr and "img05.png" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_worker_killed_from_outside_leaves_a_complete_log(tmp_path: Path) -> None:
    """The issue's reproduction: kill -9 one worker in the middle of a run."""
    import psutil

    from tests.conftest import start_svdharm

    inp = _many(tmp_path / "in", 40, size=256)
    out = tmp_path / "out"
    proc = start_svdharm("augment", inp, out, "--seed", 1, "--workers", 2, "--copies", 2)
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        workers = [
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if "spawn_main" in " ".join(c.cmdline())
        ]
        if workers:
            time.sleep(0.3)  # let it take a chunk
            victim = workers[0]
            victim.kill()
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=300)
    assert victim is not None, "no worker was started"
    assert proc.returncode == 0, stderr
    log = only_log(out)
    assert log["counts"]["ok"] == 40
    assert len(list(out.glob("*_aug*.png"))) == 80
    assert not list(out.rglob("*.svdharm-tmp"))


@pytest.mark.slow
def test_workers_end_when_the_run_is_killed(tmp_path: Path) -> None:
    """kill -9 of the run's process used to leave its workers running for minutes (and
    holding a cron job's output pipe open); now they end within seconds."""
    import psutil

    from tests.conftest import start_svdharm

    inp = _many(tmp_path / "in", 60, size=384)
    proc = start_svdharm("augment", inp, tmp_path / "out", "--workers", 2, "--copies", 3)
    workers: list[psutil.Process] = []
    deadline = time.monotonic() + 60
    while not workers and time.monotonic() < deadline:
        workers = [
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if "spawn_main" in " ".join(c.cmdline())
        ]
        time.sleep(0.05)
    assert workers, "no worker was started"
    proc.kill()
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, [p.pid for p in alive]
    proc.stdout.close()
    proc.stderr.close()


def _reference_file(tmp_path: Path, name: str, scale: float) -> Path:
    save(tmp_path / f"{name}.png", textured(40, 40, seed=len(name)) * scale + 0.1)
    out = tmp_path / f"{name}.json"
    assert svdharm("fit-reference", tmp_path / f"{name}.png", "-o", out).code == 0
    return out


def _harmonize(inp: Path, out: Path, ref: Path, *extra: object) -> dict:
    result = svdharm("harmonize", inp, out, "--reference", ref, "--workers", 1, *extra)
    assert result.code == 0, result.stderr
    return json.loads(
        max(out.glob("svdharm-*.json"), key=lambda p: p.stat().st_mtime_ns).read_text()
    )


def _redone(log: dict) -> dict[str, str]:
    return {f["path"]: f["redone"] for f in log["files"] if f["status"] == "ok"}


def test_skip_existing_keeps_only_what_the_same_command_would_make_today(tmp_path: Path) -> None:
    """The issue's reproduction and every reason: a new reference, changed pixels, other
    fractions, another mask, a touched but unchanged file, a deleted output."""
    inp = _tree(tmp_path / "in")
    out = tmp_path / "out"
    r1 = _reference_file(tmp_path, "first", 0.5)
    r2 = _reference_file(tmp_path, "second-ref", 0.7)
    _harmonize(inp, out, r1)
    made_by_r1 = (out / "a.png").read_bytes()

    log = _harmonize(inp, out, r1, "--skip-existing")
    assert log["counts"]["already_done"] == 2 and log["counts"]["ok"] == 0

    log = _harmonize(inp, out, r2, "--skip-existing")
    assert _redone(log) == {"a.png": "reference changed", "sub/b.png": "reference changed"}
    assert (out / "a.png").read_bytes() != made_by_r1
    assert log["redone"] == {"reference changed": 2}

    os.utime(inp / "a.png", ns=(1, 1))  # touched, not changed: kept, by its hash
    log = _harmonize(inp, out, r2, "--skip-existing")
    assert log["counts"]["already_done"] == 2
    log = _harmonize(inp, out, r2, "--skip-existing")  # and its new time recorded
    assert log["counts"]["already_done"] == 2

    save(inp / "a.png", textured(40, 48, seed=99))
    log = _harmonize(inp, out, r2, "--skip-existing")
    assert _redone(log) == {"a.png": "input changed (a.png)"}

    log = _harmonize(inp, out, r2, "--skip-existing", "--mask", "auto")
    assert set(_redone(log).values()) == {"parameters changed"}

    (out / "sub" / "b.png").unlink()
    log = _harmonize(inp, out, r2, "--skip-existing", "--mask", "auto")
    assert _redone(log) == {"sub/b.png": "an output is missing (sub/b.png)"}

    fractions = svdharm(
        "fit-reference",
        tmp_path / "first.png",
        "-o",
        tmp_path / "f.json",
        "--fractions",
        "0.1,0.3,0.6",
    )
    assert fractions.code == 0, fractions.stderr
    log = _harmonize(inp, out, tmp_path / "f.json", "--skip-existing", "--mask", "auto")
    assert set(_redone(log).values()) == {"reference changed"}


def test_outputs_of_an_older_svdharm_are_made_again(tmp_path: Path) -> None:
    """Outputs with no provenance record (an earlier version's, or copied in by hand)."""
    inp = _tree(tmp_path / "in")
    out = tmp_path / "out"
    ref = _reference_file(tmp_path, "r", 0.6)
    _harmonize(inp, out, ref)
    (out / ".svdharm-provenance.sqlite").unlink()
    log = _harmonize(inp, out, ref, "--skip-existing")
    assert set(_redone(log).values()) == {"no record of what made its outputs"}


def test_a_series_that_gains_a_slice_is_made_again(tmp_path: Path) -> None:
    import pydicom

    from tests.dicom_files import make_dicom, radiograph

    inp = tmp_path / "in"
    series = pydicom.uid.generate_uid(entropy_srcs=["nightly series"])
    for i in range(3):
        make_dicom(inp / "ct" / f"s{i}.dcm", radiograph(seed=i), series=series, InstanceNumber=i)
    out = tmp_path / "out"
    first = svdharm("augment", inp, out, "--seed", 4, "--workers", 1)
    assert first.code == 0, first.stderr
    again = svdharm("augment", inp, out, "--seed", 4, "--workers", 1, "--skip-existing")
    assert "3 files up to date" in again.stdout
    make_dicom(inp / "ct" / "s3.dcm", radiograph(seed=3), series=series, InstanceNumber=3)
    result = svdharm("augment", inp, out, "--seed", 4, "--workers", 1, "--skip-existing")
    assert result.code == 0, result.stderr
    log = only_log_latest(out)
    assert {f["redone"] for f in log["files"]} == {
        "series changed (its files are not those that made the outputs)"
    }
    assert log["counts"]["ok"] == 4


def only_log_latest(out: Path) -> dict:
    return json.loads(
        max(out.glob("svdharm-*.json"), key=lambda p: p.stat().st_mtime_ns).read_text()
    )


def test_settle_leaves_files_still_arriving_for_the_next_run(tmp_path: Path) -> None:
    """A DICOM slice cut short (being copied) used to be left out of its series, which
    was harmonized without it; with --settle the series waits for the next run."""
    import pydicom

    from tests.dicom_files import make_dicom, radiograph

    inp = tmp_path / "in"
    save(inp / "old.png", textured(32, 32, seed=1))
    series = pydicom.uid.generate_uid(entropy_srcs=["arriving series"])
    for i in range(3):
        make_dicom(inp / "ct" / f"s{i}.dcm", radiograph(seed=i), series=series, InstanceNumber=i)
    complete = (inp / "ct" / "s2.dcm").read_bytes()
    hour_ago = time.time() - 3600
    for path in [inp / "old.png", *(inp / "ct").iterdir()]:
        os.utime(path, (hour_ago, hour_ago))
    (inp / "ct" / "s2.dcm").write_bytes(complete[:100])  # still being copied: fresh
    out = tmp_path / "out"
    args = ("augment", inp, out, "--seed", 2, "--workers", 1, "--skip-existing", "--settle", 60)
    result = svdharm(*args)
    assert result.code == 0, result.stderr
    log = only_log_latest(out)
    records = {f["path"]: f for f in log["files"]}
    assert records["old.png"]["status"] == "ok"
    for i in range(3):
        assert records[f"ct/s{i}.dcm"]["status"] == "skipped"
        assert "within --settle 60 s: left for the next run" in records[f"ct/s{i}.dcm"]["reason"]
    assert not (out / "ct").exists()
    assert log["parameters"]["settle"] == 60

    (inp / "ct" / "s2.dcm").write_bytes(complete)
    os.utime(inp / "ct" / "s2.dcm", (hour_ago, hour_ago))
    result = svdharm(*args)
    assert result.code == 0, result.stderr
    log = only_log_latest(out)
    records = {f["path"]: f for f in log["files"]}
    assert records["old.png"]["status"] == "skipped"  # up to date
    assert [records[f"ct/s{i}.dcm"]["volume"] for i in range(3)] == ["ct/[series 1]"] * 3
    assert all(records[f"ct/s{i}.dcm"]["status"] == "ok" for i in range(3))


def _on_a_small_disk(tmp_path: Path, size: str, fill: bool, *args: object) -> tuple[int, str, str]:
    """Run svdharm with OUT on a tmpfs of ``size`` (full before the run with ``fill``), in
    a mount namespace of its own, so nothing is left mounted; skipped where mounting is not
    allowed (it needs root). Returns the exit code, stderr and what OUT then held."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting a small tmpfs for OUT needs root and unshare")
    out = tmp_path / "out"
    out.mkdir()
    command = " ".join(f"'{a}'" for a in (sys.executable, "-m", "svdharm_cli", *args))
    filler = f"cat /dev/zero > '{out}/filler' 2>/dev/null;" if fill else ""
    script = (
        f"mount -t tmpfs -o size={size} tmpfs '{out}' || exit 99; {filler} {command}; "
        f"code=$?; ls -a '{out}' 1>&2; exit $code"
    )
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    if proc.returncode == 99:
        pytest.skip("this machine does not allow mounting a tmpfs")
    return proc.returncode, proc.stderr, proc.stdout


def test_a_full_disk_before_the_run_is_a_clear_error(tmp_path: Path) -> None:
    inp = _tree(tmp_path / "in")
    out = tmp_path / "out"
    code, stderr, _ = _on_a_small_disk(tmp_path, "64k", True, "augment", inp, out, "--seed", 1)
    assert code == 2, stderr
    assert f"cannot write to output folder {out}: No space left on device" in stderr
    assert "Traceback" not in stderr


def test_a_disk_that_fills_during_the_run_still_gives_a_log(tmp_path: Path) -> None:
    """Outputs that do not fit fail one by one (printed); the log, which OUT cannot hold,
    goes to the fallback folder ($XDG_STATE_HOME/svdharm/logs) and says so."""
    inp = tmp_path / "in"
    for k in range(40):  # outputs of a page or so each: no freed fragment can hold the log
        save(inp / f"noise{k:02d}.png", np.random.default_rng(k).random((1, 48, 48)))
    out = tmp_path / "out"
    code, stderr, _ = _on_a_small_disk(
        tmp_path, "96k", False, "augment", inp, out, "--seed", 1, "--workers", 1
    )
    assert code == 1, stderr
    assert "Traceback" not in stderr
    assert "No space left on device" in stderr and "failed:" in stderr
    logs = list((tmp_path / "state" / "svdharm" / "logs").glob("svdharm-augment-*.json"))
    assert len(logs) == 1, stderr
    log = json.loads(logs[0].read_text())
    assert "No space left on device" in log["log_not_in_output"]
    assert len(log["files"]) == 40
    assert log["counts"]["failed"] >= 1 and log["counts"]["ok"] + log["counts"]["failed"] == 40
    assert f"the log went to {logs[0]}, not to OUT" in stderr.replace("\n", " ")
