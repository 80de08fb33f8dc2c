"""The downstream experiment script itself: its schema, and that a seed reproduces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "downstream.py"


def _run(path: Path) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--methods",
            "baseline,svd-harmonization,svd-harmonization-deharmonization",
            "--shifts",
            "gamma-gain",
            "--jobs",
            "2",
            "--json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(path.read_text())


@pytest.mark.slow
def test_schema_and_determinism(tmp_path: Path) -> None:
    first, second = _run(tmp_path / "a.json"), _run(tmp_path / "b.json")
    assert {"protocol", "results", "summary"} <= first.keys()
    rows = first["results"]
    # 3 methods x (A->A, A->shift, shift->A) x 2 models, one seed
    assert len(rows) == 3 * 3 * 2
    for row in rows:
        assert set(row) == {"method", "model", "train", "test", "shift", "seed", "accuracy"}
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["shift"] in ("none", "gamma-gain") and row["seed"] == 0
    assert {(r["train"], r["test"]) for r in rows} == {
        ("A", "A"),
        ("A", "shifted"),
        ("shifted", "A"),
    }
    for s in first["summary"]:
        assert {"mean", "std", "n"} <= s.keys() and s["n"] == 1
    assert [r["accuracy"] for r in rows] == [r["accuracy"] for r in second["results"]]
    assert all(r["accuracy"] > 0.5 for r in rows if r["test"] == "A" and r["train"] == "A")
