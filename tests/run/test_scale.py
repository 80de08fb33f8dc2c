"""Archive scale: the run log's records spilled and merged in bounded memory, the walk
dispatched as it goes, and the client's memory per file measured on a small tree."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from svdharm_cli.files.plan import Input
from svdharm_cli.run.executors import Feed
from svdharm_cli.run.results import FAILED, OK, SKIPPED, FileResult, OutputRecord
from svdharm_cli.run.runlog import Spill
from tests.conftest import only_log, svdharm

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def test_the_spill_gives_records_back_in_path_order(tmp_path: Path) -> None:
    spill = Spill(tmp_path, run_size=7)
    spill.MAX_RUNS = 3  # force merges of run files
    paths = [f"d{k % 5}/img{k:04d}.png" for k in range(200)]
    rng = random.Random(0)
    order = paths[:]
    rng.shuffle(order)
    for k, path in enumerate(order):
        status = (OK, SKIPPED, FAILED)[k % 3]
        outputs = (OutputRecord(path),) if status == OK else ()
        spill.add(FileResult(path, status, None if status == OK else f"{path}: why", outputs))
    spill.add(FileResult(paths[0], OK, "the latest", ()))  # reported twice: the latest wins
    assert len(spill.runs) <= 3
    records = [json.loads(line) for line in spill.lines()]
    assert [r["path"] for r in records] == sorted(paths)
    assert records[0]["reason"] == "the latest"
    tally = spill.tally({paths[1]})
    assert tally.files == 200 and sum(tally.counts.values()) == 200
    assert tally.written == sum(1 for r in records if r["outputs"])
    assert len(tally.failures) == 20 and tally.failures == sorted(tally.failures)
    spill.close()
    assert not list(tmp_path.iterdir())


def test_a_feed_reads_a_window_ahead() -> None:
    seen: list[int] = []

    def units() -> object:
        for k in range(10_000):
            seen.append(k)
            yield Input((f"{k}",), f"{k}", size=1)

    feed = Feed(units(), window=100)  # type: ignore[arg-type]
    assert len(seen) == 100 and len(feed) == 100
    taken = [feed.pop().key for _ in range(60)]
    assert taken == [str(k) for k in range(60)] and len(seen) <= 160
    while feed:
        feed.pop()
    assert feed.exhausted and len(seen) == 10_000


@pytest.mark.slow
def test_the_client_does_not_grow_with_the_tree(tmp_path: Path) -> None:
    """Peak RSS of the client between 1,500 and 7,500 small files, one worker: the run log
    used to cost it about 2.3 KB per file; it must stay under 1 KB (the bound is loose
    because RSS moves by allocator pages; make bench measures the slope precisely)."""
    from client_memory import slope

    row = slope(tmp_path, (1500, 7500), workers=1)
    assert row["bytes_per_file"] < 1000, row


def test_a_run_over_many_folders_logs_every_file_in_order(tmp_path: Path) -> None:
    from client_memory import make_tree
    from PIL import Image

    make_tree(tmp_path / "in", 600, per_folder=37)
    Image.new("L", (8, 8), 100).save(tmp_path / "ref.png")
    out = tmp_path / "out"
    result = svdharm("harmonize", tmp_path / "in", out, "--reference", tmp_path / "ref.png")
    assert result.code == 0, result.stderr
    log = only_log(out)
    paths = [f["path"] for f in log["files"]]
    assert paths == sorted(paths) and len(paths) == 600
    assert log["counts"]["ok"] == 600 and log["counts"]["not_processed"] == 0
    assert not [p for p in out.iterdir() if ".svdharm-log-" in p.name]
