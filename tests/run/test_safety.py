"""Fault injection: signals mid-batch, resume, locking, broken and hostile input, full disks."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import svdharm_cli.run.worker as worker
from svdharm_cli.core.methods import Method
from svdharm_cli.errors import ImageError
from svdharm_cli.files.formats import read_image
from svdharm_cli.files.plan import Input
from svdharm_cli.files.safety import OutputLock
from svdharm_cli.run.options import DrawOptions
from svdharm_cli.run.results import FAILED, OK, SKIPPED
from svdharm_cli.run.worker import JobConfig, process_file, process_input, process_inputs
from tests.conftest import only_log, start_svdharm, svdharm
from tests.images import save, textured


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(("svdharm-", "."))
    }


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big") / "in"
    for i in range(30):
        save(root / f"part{i % 3}" / f"im{i:02d}.png", textured(640, 640, seed=i))
    return root


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_batch_then_resume(
    big_tree: Path, tmp_path: Path, signum: int, code: int
) -> None:
    out = tmp_path / "out"
    args = ["augment", big_tree, out, "--seed", 5, "--copies", 2, "--workers", 2]
    proc = start_svdharm(*args)
    deadline = time.monotonic() + 120
    while not list(out.rglob("*_aug1.png")) and time.monotonic() < deadline:
        time.sleep(0.05)
    kids = _children(proc.pid)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "interrupted" in stderr and "--skip-existing" in stderr
    end = time.monotonic() + 10
    while any(_alive(k) for k in kids) and time.monotonic() < end:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "worker processes outlived the run"
    assert not [p for p in out.rglob("*") if p.name.endswith(".svdharm-tmp")]
    log = only_log(out)
    assert log["status"] == "interrupted" and log["signal"] == signal.Signals(signum).name
    assert log["counts"]["not_processed"] > 0
    assert log["counts"]["ok"] == len(log["files"])
    for record in log["files"]:
        for output in record["outputs"]:
            assert (out / output["path"]).is_file()
    # Every output on disk is logged as ok, and nothing else is.
    logged = {o["path"] for r in log["files"] if r["status"] == "ok" for o in r["outputs"]}
    assert set(_tree_bytes(out)) == logged

    resumed = svdharm(*args, "--skip-existing")
    assert resumed.code == 0, resumed.stderr
    clean = tmp_path / "clean"
    assert svdharm("augment", big_tree, clean, "--seed", 5, "--copies", 2, "--workers", 1).code == 0
    assert _tree_bytes(out) == _tree_bytes(clean)
    assert len(_tree_bytes(clean)) == 60


@pytest.mark.slow
def test_stopped_fit_writes_no_reference(big_tree: Path, tmp_path: Path) -> None:
    """fit-reference runs on worker processes too: a stop ends them and writes nothing."""
    target = tmp_path / "reference.json"
    args = ["fit-reference", big_tree, "-o", target, "--workers", 2]
    proc = start_svdharm(*args)
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    kids = _children(proc.pid)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted by SIGINT: no reference written" in stderr
    assert not target.exists() and not list(tmp_path.glob(".*svdharm-tmp"))
    end = time.monotonic() + 10
    while any(_alive(k) for k in kids) and time.monotonic() < end:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "worker processes outlived the fit"


@pytest.mark.slow
@pytest.mark.parametrize(("size", "count"), [(200, 240), (24, 1500)])
def test_every_output_after_a_stop_is_logged(tmp_path: Path, size: int, count: int) -> None:
    """Small files travel in chunks (the smallest are transformed together); a stop in
    the middle of a chunk must still log every output that reached disk (three stops at
    different moments)."""
    src = tmp_path / "in"
    for i in range(count):
        save(src / f"im{i:04d}.png", textured(size, size, seed=i))
    for k, delay in enumerate((0.05, 0.3, 0.6)):
        out = tmp_path / f"out{k}"
        args = ["augment", src, out, "--seed", 2, "--copies", 2, "--workers", 2]
        proc = subprocess.Popen([sys.executable, "-m", "svdharm_cli", *map(str, args)])
        deadline = time.monotonic() + 120
        while not list(out.glob("*.png")) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
        log = only_log(out)
        logged = {o["path"] for r in log["files"] if r["status"] == "ok" for o in r["outputs"]}
        on_disk = set(_tree_bytes(out))
        assert on_disk == logged, (k, sorted(on_disk ^ logged)[:10], log["counts"])
        assert log["counts"]["ok"] + log["counts"]["not_processed"] == count
        assert code == 130 or (code == 0 and log["status"] == "completed"), (k, code)


def test_second_run_into_same_output_is_refused(tmp_path: Path) -> None:
    src = save(tmp_path / "in" / "a.png", textured(20, 20))
    out = tmp_path / "out"
    with OutputLock(out):
        result = svdharm("augment", src.parent, out, "--seed", 1)
        assert result.code == 2 and "another svdharm run is writing to" in result.stderr
    # A lock file left by a finished (or crashed) run does not block.
    assert (out / ".svdharm.lock").exists()
    assert svdharm("augment", src.parent, out, "--seed", 1).code == 0


def test_stale_temporaries_are_swept(tmp_path: Path) -> None:
    src = save(tmp_path / "in" / "a.png", textured(20, 20))
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a_aug0.png.999-deadbeef.svdharm-tmp"
    stale.write_bytes(b"half a file")
    assert svdharm("augment", src.parent, out, "--seed", 1).code == 0
    assert not stale.exists() and (out / "a_aug0.png").exists()


def _png_with_size(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def _broken_corpus(root: Path) -> dict[str, tuple[str, str]]:
    """Files and the (status, message fragment) each must get."""
    root.mkdir(parents=True)
    good = root / "good.png"
    save(good, textured(64, 64, seed=1))
    jpeg = root / "good.jpg"
    save(jpeg, textured(64, 64, seed=2), quality=90)
    (root / "zero.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(good.read_bytes()[:150])
    (root / "truncated.jpg").write_bytes(jpeg.read_bytes()[:300])
    (root / "text.png").write_text("this is not an image\n")
    Image.new("CMYK", (16, 16)).save(root / "cmyk.jpg")
    Image.new("P", (16, 16)).save(root / "palette.png")
    Image.new("1", (16, 16)).save(root / "bilevel.png")
    save(root / "one_pixel.png", np.full((1, 1, 1), 0.4))
    save(root / "constant.png", np.full((1, 30, 20), 0.7))
    save(root / "with space.png", textured(16, 16, seed=3))
    (root / "bomb.png").write_bytes(_png_with_size(100_000, 100_000))
    os.symlink(root / "missing.png", root / "dangling.png")
    os.makedirs(root / "loop")
    os.symlink(root, root / "loop" / "back")
    save(Path(os.fsdecode(bytes(root) + b"/caf\xe9.png")), textured(16, 16, seed=4))
    return {
        "good.png": (OK, ""),
        "good.jpg": (OK, ""),
        "zero.png": (FAILED, "not a valid PNG"),
        "truncated.png": (FAILED, "cannot decode PNG"),
        "truncated.jpg": (FAILED, "cannot decode JPEG"),
        "text.png": (FAILED, "not a valid PNG"),
        "cmyk.jpg": (FAILED, "CMYK"),
        "palette.png": (FAILED, "palette"),
        "bilevel.png": (FAILED, "1-bit"),
        "one_pixel.png": (OK, ""),
        "constant.png": (OK, ""),
        "with space.png": (OK, ""),
        "bomb.png": (FAILED, "exceeds the limit"),
        "dangling.png": (FAILED, "cannot open"),
        os.fsdecode(b"caf\xe9.png"): (OK, ""),
    }


def test_broken_and_hostile_files_each_get_a_clear_outcome(tmp_path: Path) -> None:
    expected = _broken_corpus(tmp_path / "in")
    out = tmp_path / "out"
    result = svdharm("augment", tmp_path / "in", out, "--seed", 1, "--workers", 2)
    assert result.code == 1
    assert "Traceback" not in result.stderr
    log = only_log(out)
    got = {f["path"]: f for f in log["files"]}
    assert set(got) == set(expected)
    for rel, (status, fragment) in expected.items():
        assert got[rel]["status"] == status, (rel, got[rel])
        if status == FAILED:
            assert fragment in got[rel]["reason"] and rel in got[rel]["reason"]
    # Outputs of the odd but valid images are finite and in range, constant stays constant.
    const = np.asarray(Image.open(out / "constant_aug0.png"))
    assert const.min() == const.max()
    assert np.asarray(Image.open(out / "one_pixel_aug0.png")).shape == (1, 1)
    assert (out / "with space_aug0.png").exists()
    # Inputs are untouched and no temporaries remain.
    assert not [p for p in out.rglob("*") if p.name.endswith(".svdharm-tmp")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    src = save(tmp_path / "in" / "secret.png", textured(16, 16))
    src.chmod(0)
    result = svdharm("augment", src.parent, tmp_path / "out", "--seed", 1)
    assert result.code == 1 and "secret.png" in result.stderr


def test_output_folder_that_cannot_be_created(tmp_path: Path) -> None:
    src = save(tmp_path / "in" / "a.png", textured(16, 16))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = svdharm("augment", src.parent, blocker / "out", "--seed", 1)
    assert result.code == 2 and "output" in result.stderr and "Traceback" not in result.stderr


def test_outputs_never_leave_out_through_a_planted_link(tmp_path: Path) -> None:
    save(tmp_path / "in" / "sub" / "a.png", textured(16, 16))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "sub")
    result = svdharm("augment", tmp_path / "in", out, "--seed", 1)
    assert result.code == 1 and "outside the output folder" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_disk_full_removes_partial_output_and_keeps_earlier(tmp_path: Path, monkeypatch) -> None:
    src_root = tmp_path / "in"
    save(src_root / "a.png", textured(16, 16, seed=1))
    save(src_root / "b.png", textured(16, 16, seed=2))
    out = tmp_path / "out"
    config = JobConfig(
        Method.DEHARMONIZE, (0.07, 0.2, 0.5), src_root, out, draw=DrawOptions(seed=3)
    )
    assert process_file("a.png", config).status == OK
    earlier = (out / "a_aug0.png").read_bytes()

    def full_disk(images, frames, paths, options, context) -> None:
        Path(paths[0]).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(paths[0]))

    monkeypatch.setattr(worker, "write_images", full_disk)
    res = process_file("b.png", config)
    assert res.status == FAILED and "No space left on device" in res.reason
    assert sorted(p.name for p in out.iterdir()) == ["a_aug0.png"]
    assert (out / "a_aug0.png").read_bytes() == earlier


def test_skip_existing_is_logged_as_skipped(tmp_path: Path) -> None:
    src = save(tmp_path / "in" / "a.png", textured(16, 16))
    out = tmp_path / "out"
    assert svdharm("augment", src.parent, out, "--seed", 1, "--log", tmp_path / "1.json").code == 0
    assert (
        svdharm(
            "augment", src.parent, out, "--seed", 1, "--skip-existing", "--log", tmp_path / "2.json"
        ).code
        == 0
    )
    record = json.loads((tmp_path / "2.json").read_text())["files"][0]
    assert record["status"] == SKIPPED and "outputs are up to date" in record["reason"]


def test_hidden_inputs_on_request(tmp_path: Path) -> None:
    save(tmp_path / "in" / ".hidden" / "a.png", textured(16, 16))
    out = tmp_path / "out"
    assert svdharm("augment", tmp_path / "in", out, "--seed", 1, "--include-hidden").code == 0
    assert (out / ".hidden" / "a_aug0.png").exists()


def test_no_pickle_in_the_package() -> None:
    package = Path(__file__).resolve().parents[2] / "svdharm_cli"
    for source in package.rglob("*.py"):
        text = source.read_text()
        assert not re.search(r"import pickle|pickle\.loads?\(|allow_pickle\s*=\s*True", text), (
            source
        )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=400),
    suffix=st.sampled_from([".png", ".jpg"]),
    prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"]),
)
def test_property_random_bytes_never_crash_readers(
    tmp_path: Path, data: bytes, suffix: str, prefix: bytes
) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(prefix + data)
    try:
        image = read_image(path, max_pixels=1_000_000)
    except ImageError:
        return
    assert np.isfinite(image.channels).all()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mode=st.sampled_from(["L", "LA", "RGB", "RGBA", "I;16"]),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_random_images_of_every_mode(
    tmp_path: Path, mode: str, h: int, w: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    planes = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "I;16": 1}[mode]
    dtype = np.uint16 if mode == "I;16" else np.uint8
    arr = rng.integers(0, np.iinfo(dtype).max, (h, w, planes), endpoint=True).astype(dtype)
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    (work / "in").mkdir()
    Image.fromarray(arr[:, :, 0] if planes == 1 else arr).save(work / "in" / "x.png")
    config = JobConfig(
        Method.DEHARMONIZE,
        (0.07, 0.2, 0.5),
        work / "in",
        work / "out",
        draw=DrawOptions(low=0.0, high=3.0, seed=seed),
    )
    res = process_file("x.png", config)
    assert res.status == OK, res.reason
    written = np.asarray(Image.open(work / "out" / "x_aug0.png"))
    assert written.dtype == dtype
    assert written.shape == ((h, w) if planes == 1 else (h, w, planes))
    if planes in (2, 4):
        np.testing.assert_array_equal(written[:, :, -1], arr[:, :, -1])


def test_small_images_of_a_chunk_match_one_by_one(tmp_path: Path) -> None:
    """Small images of a chunk are transformed together: each output is the same bytes as
    when its file is processed alone, and a file that fails (unreadable, or an output that
    cannot be renamed into place) fails alone, leaving none of its outputs."""
    src = tmp_path / "in"
    save(src / "a.png", textured(28, 28, seed=1))
    save(src / "b.png", textured(40, 30, seed=2, channels=3))
    save(src / "c.png", textured(28, 28, seed=3), bits=16)
    save(src / "big.png", textured(80, 90, seed=4))  # over STACK_PIXELS: its own path
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a PNG")
    save(src / "d.png", textured(28, 28, seed=5))
    rels = sorted(p.name for p in src.iterdir())
    units = [Input((rel,), rel) for rel in rels]

    def config(out: Path) -> JobConfig:
        return JobConfig(
            Method.DEHARMONIZE, (0.07, 0.2, 0.5), src, out, draw=DrawOptions(copies=2, seed=3)
        )

    alone, together = tmp_path / "alone", tmp_path / "together"
    for unit in units:
        process_input(unit, config(alone))
    (together / "d_aug1.png").mkdir(parents=True)  # d's second output cannot land
    reported: list[list] = []
    results = {r.path: r for r in process_inputs(units, config(together), report=reported.append)}
    assert sorted(r.path for batch in reported for r in batch) == rels
    assert results["broken.png"].status == FAILED
    assert results["d.png"].status == FAILED and "d_aug1.png" in results["d.png"].reason
    assert not (together / "d_aug0.png").exists()  # none of a failed file's outputs
    for rel in ("a.png", "b.png", "c.png", "big.png"):
        assert results[rel].status == OK
        for j in range(2):
            name = f"{Path(rel).stem}_aug{j}.png"
            assert (together / name).read_bytes() == (alone / name).read_bytes(), name
    assert not list(together.glob(".*svdharm-tmp"))
