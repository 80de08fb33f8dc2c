"""The training-pipeline examples run as a user would run them (a few steps each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("pytorch_dataset.py", "site B accuracy"),
        ("monai_pipeline.py", "899 samples cached"),
        ("torchio_pipeline.py", "history: RescaleIntensity, Crop, SVDHarmonize, SVDDeharmonize"),
    ],
)
def test_example_trains(script: str, expected: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--steps", "8", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout
    assert "8 steps" in proc.stdout
