"""``--device``: usage errors, the safety net, the solver fallback, and the torch path through
the CLI equal to the NumPy path. Without a GPU these run the torch backend's kernels on the
CPU (``SVDHARM_FAKE_CUDA=1``, the documented test-only switch)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from svdharm_cli.files.formats import read_image
from tests.conftest import only_log, svdharm
from tests.images import save, textured
from tests.volumes import phantom, write_nifti

COMMANDS = ("fit-reference", "harmonize", "augment", "bands", "compare")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "SVDHARM_FAKE_CUDA": "1"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("device")
    inp = root / "in"
    save(inp / "a.png", textured(90, 70, seed=1))
    save(inp / "b.png", textured(48, 52, seed=2, channels=3))
    save(inp / "small" / "c.png", textured(28, 28, seed=3))  # stacked with the small ones
    save(inp / "small" / "d.png", textured(28, 28, seed=4), bits=16)
    write_nifti(inp / "head.nii.gz", (phantom(6, 40, 36) * 800).astype(np.float32))
    refs = root / "refs"
    save(refs / "r.png", textured(64, 64, seed=5) * 0.6 + 0.2)
    save(refs / "rgb.png", textured(40, 40, seed=6, channels=3) * 0.5 + 0.3)
    write_nifti(refs / "head.nii.gz", (phantom(6, 40, 36, seed=7) * 600 + 90).astype(np.float32))
    return {"root": root, "in": inp, "refs": refs}


def test_every_command_takes_device() -> None:
    for command in COMMANDS:
        result = svdharm(command, "--help")
        assert result.code == 0 and "--device" in result.stdout, command


def test_usage_errors_before_out_exists(tree: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    ref = tmp_path / "ref.json"
    assert svdharm("fit-reference", tree["refs"], "-o", ref).code == 0
    cases = [
        ((), "cuda", "sees no CUDA device"),  # this machine's torch is a CPU build
        ((), "gpu", "use cpu, cuda or cuda:N"),
        (("SVDHARM_FAKE_CUDA", "1"), "cuda:3", "cuda:3: no such device"),
    ]
    for extra, device, message in cases:
        env = {**os.environ, **dict([extra])} if extra else None
        result = svdharm(
            "harmonize", tree["in"], out, "--reference", ref, "--device", device, env=env
        )
        assert result.code == 2 and message in result.stderr, result.stderr
        assert not out.exists()
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    result = svdharm("augment", tree["in"], out, "--seed", "1", "--device", "cuda", env=env)
    assert result.code == 2 and "needs PyTorch, which is not installed" in result.stderr
    assert not out.exists()


def _images(folder: Path) -> dict[str, np.ndarray]:
    return {
        str(p.relative_to(folder)): read_image(p).frames
        for p in sorted(folder.rglob("*"))
        if p.suffix in (".png", ".gz") and p.is_file()
    }


def test_the_torch_path_equals_the_numpy_path(tree: dict[str, Path], tmp_path: Path) -> None:
    ref_cpu, ref_dev = tmp_path / "cpu.json", tmp_path / "dev.json"
    assert svdharm("fit-reference", tree["refs"], "-o", ref_cpu).code == 0
    fitted = svdharm("fit-reference", tree["refs"], "-o", ref_dev, "--device", "cuda", env=_env())
    assert fitted.code == 0, fitted.stderr
    a, b = json.loads(ref_cpu.read_text()), json.loads(ref_dev.read_text())
    for x, y in zip(a["entries"], b["entries"]):
        np.testing.assert_allclose(x["mean"], y["mean"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(x["std"], y["std"], rtol=1e-9, atol=1e-12)
    for command, extra in (
        ("harmonize", ("--reference", ref_cpu)),
        ("augment", ("--seed", "5", "--copies", "2", "--reference", ref_cpu)),
    ):
        cpu = svdharm(command, tree["in"], tmp_path / f"{command}-cpu", *extra)
        dev = svdharm(
            command,
            tree["in"],
            tmp_path / f"{command}-dev",
            *extra,
            "--device",
            "cuda",
            env=_env(),
        )
        assert cpu.code == 0 and dev.code == 0, dev.stderr
        mine, theirs = _images(tmp_path / f"{command}-dev"), _images(tmp_path / f"{command}-cpu")
        assert mine.keys() == theirs.keys() and len(mine) >= 5
        for name, values in mine.items():
            worst = np.abs(values.astype(np.float64) - theirs[name]).max()
            limit = 1e-6 * max(1.0, float(np.abs(theirs[name]).max()))
            assert worst <= limit, (command, name, worst)
        log = only_log(tmp_path / f"{command}-dev")
        assert log["executor"]["kind"] == "device" and log["executor"]["device"] == "cuda:0"
        assert log["device_check"]["passed"] is True
        assert log["device_check"]["largest_difference"] <= log["device_check"]["bound"]
        assert all(f["fallback"] is None for f in log["files"])
    panel_cpu, panel_dev = tmp_path / "cpu.png", tmp_path / "dev.png"
    image = tree["in"] / "a.png"
    assert svdharm("bands", image, "-o", panel_cpu).code == 0
    assert svdharm("bands", image, "-o", panel_dev, "--device", "cuda", env=_env()).code == 0
    assert np.array_equal(read_image(panel_cpu).frames, read_image(panel_dev).frames)
    groups = (tree["in"], tree["refs"])
    cpu_json, dev_json = tmp_path / "cpu-compare.json", tmp_path / "dev-compare.json"
    assert svdharm("compare", *groups, "--json", cpu_json).code == 0
    done = svdharm("compare", *groups, "--json", dev_json, "--device", "cuda", env=_env())
    assert done.code == 0, done.stderr
    one, two = json.loads(cpu_json.read_text()), json.loads(dev_json.read_text())
    assert one["separability"] == two["separability"]


def test_the_safety_net_stops_a_wrong_device(tree: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = _env(SVDHARM_FAKE_CUDA_SKEW="0.01")
    result = svdharm("augment", tree["in"], out, "--seed", "1", "--device", "cuda", env=env)
    assert result.code == 2
    assert "differ from the CPU path's by 0.01" in result.stderr
    assert "nothing was written" in result.stderr
    assert not [p for p in out.rglob("*") if p.suffix in (".png", ".gz")]


def test_a_solver_failure_falls_back_to_the_cpu(tree: dict[str, Path], tmp_path: Path) -> None:
    env = _env(SVDHARM_FAKE_CUDA_FAIL="a.png")
    dev, cpu = tmp_path / "dev", tmp_path / "cpu"
    result = svdharm("augment", tree["in"], dev, "--seed", "2", "--device", "cuda", env=env)
    assert result.code == 0, result.stderr
    assert svdharm("augment", tree["in"], cpu, "--seed", "2").code == 0
    records = {f["path"]: f for f in only_log(dev)["files"]}
    assert "computed on the CPU" in records["a.png"]["fallback"]
    assert "DeviceFailure" in records["a.png"]["fallback"]
    assert records["b.png"]["fallback"] is None
    assert np.array_equal(
        read_image(dev / "a_aug0.png").frames, read_image(cpu / "a_aug0.png").frames
    )
