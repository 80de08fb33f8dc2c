"""Shared fixtures: running the real CLI in a subprocess, and generated image trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    """Run ``python -m svdharm_cli ARGS`` as a user would, output not a terminal."""
    proc = subprocess.run(
        [sys.executable, "-m", "svdharm_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


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


@pytest.fixture
def gray_reference(tmp_path: Path) -> Path:
    refs = tmp_path / "refs"
    save(refs / "r1.png", textured(60, 60, seed=10) * 0.7 + 0.2)
    save(refs / "r2.png", textured(44, 52, seed=11) * 0.6 + 0.25)
    out = tmp_path / "reference.json"
    result = svdharm("fit-reference", refs, "-o", out)
    assert result.code == 0, result.stderr
    return out
