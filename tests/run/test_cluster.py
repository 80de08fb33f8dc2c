"""The same commands on a Dask cluster: a real ``distributed.LocalCluster`` of worker
processes (one thread each), driven through the CLI in a subprocess as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import only_log, start_svdharm, svdharm
from tests.images import save, textured
from tests.volumes import phantom, write_series

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow


def _cluster(**kwargs: Any) -> Any:
    return distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=50,
        **kwargs,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with _cluster() as c, distributed.Client(c) as client:
        client.wait_for_workers(2)
        yield c


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PNGs (8- and 16-bit, gray and RGB), a JPEG, a DICOM series and a bad file."""
    root = tmp_path_factory.mktemp("tree") / "in"
    for i in range(10):
        save(root / f"site{i % 2}" / f"g{i}.png", textured(72, 64, seed=i))
    save(root / "site0" / "deep" / "w16.png", textured(40, 40, seed=20), bits=16)
    save(root / "site1" / "c.jpg", textured(32, 48, seed=21), quality=95)
    save(root / "rgb" / "r.png", textured(36, 30, seed=22, channels=3))
    write_series(root / "series", np.rint(phantom(5, 40, 36) * 4095).astype(np.uint16))
    (root / "site1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return root


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith((".", "svdharm-"))
    }


def _records(log: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in log["files"]]


@pytest.mark.parametrize("command", ["harmonize", "augment"])
def test_cluster_run_equals_local_runs(
    cluster: Any, tree: Path, tmp_path: Path, command: str
) -> None:
    ref = tmp_path / "ref.json"
    assert svdharm("fit-reference", tree / "site0", "-o", ref).code == 0
    extra = ["--reference", ref] if command == "harmonize" else ["--copies", 2, "--seed", 9]
    runs = {}
    for name, how in [
        ("local1", ["--workers", 1]),
        ("local2", ["--workers", 2]),
        ("dask", ["--scheduler", cluster.scheduler_address]),
    ]:
        out = tmp_path / name
        result = svdharm(command, tree, out, *extra, *how)
        assert result.code == 1, result.stderr  # broken.png fails, the rest is written
        assert "broken.png" in result.stderr
        runs[name] = (_tree(out), only_log(out))
    outputs, log = runs["dask"]
    assert len(outputs) >= 16
    assert log["executor"]["kind"] == "dask"
    assert log["executor"]["scheduler"] == cluster.scheduler_address
    assert log["executor"]["workers"] == 2
    for name in ("local1", "local2"):
        assert runs[name][0] == outputs, name  # byte-identical outputs
        local = runs[name][1]
        assert local["executor"]["kind"] == "local"
        assert _records(local) == _records(log)
        assert local["counts"] == log["counts"] and local["volumes"] == log["volumes"]
        assert local["seed"] == log["seed"]


def test_fit_reference_and_compare_on_the_cluster(cluster: Any, tree: Path, tmp_path: Path) -> None:
    local, pool, remote = tmp_path / "local.json", tmp_path / "pool.json", tmp_path / "dask.json"
    assert svdharm("fit-reference", tree, "-o", local, "--workers", 1).code == 1
    assert svdharm("fit-reference", tree, "-o", pool, "--workers", 2).code == 1
    result = svdharm("fit-reference", tree, "-o", remote, "--scheduler", cluster.scheduler_address)
    assert result.code == 1 and "broken.png" in result.stderr
    assert local.read_bytes() == pool.read_bytes() == remote.read_bytes()

    # compare: the features travel back from the workers; the verdict is the same.
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    groups = [tree / "site0", tree / "site1"]
    assert svdharm("compare", *groups, "--json", a, "--workers", 1).code == 1
    result = svdharm("compare", *groups, "--json", b, "--scheduler", cluster.scheduler_address)
    assert result.code == 1, result.stderr
    x, y = json.loads(a.read_text()), json.loads(b.read_text())
    assert x["separability"] == y["separability"] and x["wasserstein"] == y["wasserstein"]
    assert x["left_out"] == y["left_out"]
    for s, t in zip(x["statistics"], y["statistics"]):
        np.testing.assert_allclose(s["mean"], t["mean"], rtol=0, atol=1e-12)


def test_scheduler_file_and_environment_variable(cluster: Any, tree: Path, tmp_path: Path) -> None:
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"address": cluster.scheduler_address}))
    out = tmp_path / "out1"
    result = svdharm(
        "augment", tree / "site0", out, "--seed", 1, "--scheduler-file", scheduler_file
    )
    assert result.code == 0, result.stderr
    assert only_log(out)["executor"]["kind"] == "dask"

    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": cluster.scheduler_address}
    out2 = tmp_path / "out2"
    args = ["augment", tree / "site0", out2, "--seed", 1]
    result = svdharm(*args, env=env)
    assert result.code == 0, result.stderr
    assert only_log(out2)["executor"]["kind"] == "dask"
    assert _tree(out) == _tree(out2)


def test_workers_without_the_device_are_refused(cluster: Any, tree: Path, tmp_path: Path) -> None:
    """Each worker checks --device against its own GPUs (torch here is a CPU build)."""
    args = ["augment", tree / "site0", tmp_path / "out", "--seed", 1, "--device", "cuda"]
    result = svdharm(*args, "--scheduler", cluster.scheduler_address)
    assert result.code == 2
    assert "--device cuda: torch" in result.stderr and "sees no CUDA device" in result.stderr
    assert not list((tmp_path / "out").glob("**/*.png"))


def test_unreachable_scheduler_is_a_usage_error_at_once(tree: Path, tmp_path: Path) -> None:
    start = time.monotonic()
    result = svdharm(
        "harmonize",
        tree,
        tmp_path / "out",
        "--reference",
        tree / "site0" / "g0.png",
        "--scheduler",
        "tcp://127.0.0.1:9",
    )
    assert result.code == 2, result.stderr
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.stderr
    assert time.monotonic() - start < 15
    assert not (tmp_path / "out").exists()  # refused before OUT was made

    missing = svdharm(
        "fit-reference", tree, "-o", tmp_path / "r.json", "--scheduler-file", tmp_path / "nope.json"
    )
    assert missing.code == 2 and "nope.json" in missing.stderr


def test_missing_extra_is_a_usage_error(tree: Path, tmp_path: Path) -> None:
    """Without Dask installed, --scheduler says how to install it (exit 2)."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "distributed.py").write_text("raise ImportError('no Dask here')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    args = ["augment", tree / "site0", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:8786"]
    result = svdharm(*args, env=env)
    assert result.code == 2, result.stderr
    assert "svdharm[dask]" in result.stderr


def test_workers_that_cannot_see_the_paths_are_refused(cluster: Any, tmp_path: Path) -> None:
    from svdharm_cli.errors import UsageError
    from svdharm_cli.run.executors.dask import DaskExecutor

    with DaskExecutor.connect(cluster.scheduler_address) as executor:
        executor.check([tmp_path], [tmp_path])  # both fine
        with pytest.raises(UsageError, match="cannot read .*elsewhere"):
            executor.check([tmp_path / "elsewhere"], [])
        with pytest.raises(UsageError, match="cannot write to .*elsewhere"):
            executor.check([], [tmp_path / "elsewhere"])


def _big_tree(root: Path, count: int, size: int) -> Path:
    for i in range(count):
        save(root / f"im{i:03d}.png", textured(size, size, seed=i))
    return root


def _wait_for_outputs(out: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.png"))) < count and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)


def test_killed_worker_loses_and_duplicates_nothing(cluster: Any, tmp_path: Path) -> None:
    src = _big_tree(tmp_path / "in", 40, 480)
    out = tmp_path / "out"
    args = ["augment", src, out, "--seed", 4, "--scheduler", cluster.scheduler_address]
    proc = start_svdharm(*args)
    _wait_for_outputs(out, 4, proc)
    with distributed.Client(cluster.scheduler_address) as client:
        pids = client.run(os.getpid)
        os.kill(sorted(pids.values())[0], signal.SIGKILL)
        done_at_kill = len(list(out.glob("*.png")))
        _, stderr = proc.communicate(timeout=300)
        client.wait_for_workers(2, timeout=60)  # the nanny restarts it
    assert proc.returncode == 0, stderr
    assert done_at_kill < 30  # the worker died mid-run
    log = only_log(out)
    paths = [r["path"] for r in log["files"]]
    assert sorted(paths) == sorted(set(paths)) and len(paths) == 40
    assert log["counts"]["ok"] == 40
    local = tmp_path / "local"
    assert svdharm("augment", src, local, "--seed", 4, "--workers", 2).code == 0
    assert _tree(out) == _tree(local)


def test_sigint_on_the_client_leaves_nothing_running(cluster: Any, tmp_path: Path) -> None:
    src = _big_tree(tmp_path / "in", 60, 320)
    out = tmp_path / "out"
    args = [
        "augment",
        src,
        out,
        "--seed",
        4,
        "--copies",
        2,
        "--scheduler",
        cluster.scheduler_address,
    ]
    proc = start_svdharm(*args)
    _wait_for_outputs(out, 6, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    on_disk = set(_tree(out))
    with distributed.Client(cluster.scheduler_address) as client:
        assert not any(client.processing().values())  # no task left running
    time.sleep(1.0)
    assert set(_tree(out)) == on_disk  # nothing more was written after the client ended
    assert not [p for p in out.rglob("*") if p.name.endswith(".svdharm-tmp")]
    log = only_log(out)
    assert log["status"] == "interrupted" and log["signal"] == "SIGINT"
    assert 0 < log["counts"]["ok"] < 60 and log["counts"]["not_processed"] > 0
    logged = {o["path"] for r in log["files"] if r["status"] == "ok" for o in r["outputs"]}
    assert on_disk == logged

    resumed = svdharm(*args, "--skip-existing")
    assert resumed.code == 0, resumed.stderr
    local = tmp_path / "local"
    assert svdharm("augment", src, local, "--seed", 4, "--copies", 2, "--workers", 2).code == 0
    assert _tree(out) == _tree(local)


POISON = '''
"""Preloaded into each test worker: reading a file named poison*.png kills the worker."""
import os

import svdharm_cli.files.inputs as units  # where a unit's files are read

# The preload may run twice in one process: keep the true reader once.
units.true_read_image = getattr(units, "true_read_image", units.read_image)


def _deadly(path, *args, **kwargs):
    if path.name.startswith("poison"):
        os._exit(1)
    return units.true_read_image(path, *args, **kwargs)


units.read_image = _deadly
'''


def test_a_file_that_kills_workers_fails_alone(tmp_path: Path) -> None:
    import dask

    preload = tmp_path / "poison_preload.py"
    preload.write_text(POISON)
    src = tmp_path / "in"
    for i in range(12):
        save(src / f"im{i:02d}.png", textured(40, 40, seed=i))
    save(src / "poison.png", textured(40, 40, seed=99))
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        _cluster(preload=[str(preload)]) as c,
    ):
        out = tmp_path / "out"
        result = svdharm("augment", src, out, "--seed", 1, "--scheduler", c.scheduler_address)
    assert result.code == 1, result.stderr
    log = only_log(out)
    status = {r["path"]: r["status"] for r in log["files"]}
    assert status.pop("poison.png") == "failed"
    assert set(status.values()) == {"ok"} and len(status) == 12
    reason = next(r["reason"] for r in log["files"] if r["path"] == "poison.png")
    assert "poison.png" in reason and "died" in reason


def test_futures_in_flight_are_bounded_and_small_files_chunked(
    cluster: Any, tmp_path: Path
) -> None:
    from svdharm_cli.core.methods import Method
    from svdharm_cli.files.plan import discover, plan_inputs
    from svdharm_cli.run.executors.dask import DaskExecutor
    from svdharm_cli.run.executors.work import run_inputs
    from svdharm_cli.run.options import DrawOptions
    from svdharm_cli.run.worker import JobConfig

    src = tmp_path / "in"
    for i in range(600):
        save(src / f"im{i:03d}.png", textured(16, 16, seed=i))
    found = discover(src)
    units = plan_inputs(found.root, found.images)
    config = JobConfig(
        Method.DEHARMONIZE, (0.07, 0.2, 0.5), src, tmp_path / "out", draw=DrawOptions(seed=3)
    )
    with DaskExecutor.connect(cluster.scheduler_address) as executor:
        submitted: list[int] = []
        in_flight: list[int] = []
        submit = executor.client.submit

        def counting_submit(*args: Any, **kwargs: Any) -> Any:
            submitted.append(len(args[2]))  # (_run_chunk, task, chunk, ...)
            in_flight.append(sum(not f.done() for f in futures))
            future = submit(*args, **kwargs)
            futures.append(future)
            return future

        futures: list[Any] = []
        executor.client.submit = counting_submit  # type: ignore[method-assign]
        outcome = run_inputs(executor, units, config)
    assert len(outcome.results) == 600 and {r.status for r in outcome.results} == {"ok"}
    assert sum(submitted) == 600 and len(submitted) < 600 / 4  # small files travel together
    assert max(in_flight) < 2 * 2 + 2  # 2 workers with one thread each: at most 6 in flight


class _Numbers:
    """A task whose payloads are its items, one by one (what a worker reports)."""

    def __call__(self, items: Any, threads: int, report: Any, stop: Any = None) -> None:
        for item in items:
            report(item.value)

    def lost(self, item: Any, reason: str) -> Any:
        return ("lost", item.value)


class _Item:
    def __init__(self, value: int) -> None:
        self.value = value
        self.size = 1 << 20  # one per chunk


def test_a_stop_while_a_result_is_collected_loses_none_of_it(cluster: Any) -> None:
    """The deterministic form of the race that made the SIGINT test flaky: the stop comes
    while the client collects the first finished task (here: its first accept raises, as
    the signal handler would). Every payload of every finished task must still be
    accepted; before, the task being collected was forgotten with its outputs."""
    from svdharm_cli.files.safety import Interrupted
    from svdharm_cli.run.executors.dask import DaskExecutor

    accepted: list[Any] = []
    raised_on: list[Any] = []

    def accept(payload: Any) -> None:
        if not raised_on:
            raised_on.append(payload)
            raise Interrupted(signal.SIGINT)
        accepted.append(payload)

    with (
        DaskExecutor.connect(cluster.scheduler_address, None) as executor,
        pytest.raises(Interrupted),
    ):
        executor.execute(_Numbers(), [_Item(k) for k in range(4)], accept)
    assert raised_on and raised_on[0] in accepted  # accepted when the stop collected it
    assert sorted(accepted) == [0, 1, 2, 3]
