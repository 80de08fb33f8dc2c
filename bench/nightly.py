"""A quiet night: ``--skip-existing`` over an archive where nothing changed (``make bench``).

N small PNGs are harmonized once; then the same command with ``--skip-existing`` runs
again over the unchanged tree (every unit checked against its provenance record: one
``stat`` per input, one record lookup, one ``stat`` per output, no image read), and again
after every input was touched but not changed (each then hashed once: the record's truth).
The floor, measured in the same run, is the command's fixed cost (``svdharm --version``
plus a run over an empty folder) and a walk of IN and OUT stat'ing every file in Python.
Written to ``bench/results/nightly.json``. ``--files N`` (default 10,000; ``--quick`` 1,000).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def svdharm(*args: object) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "svdharm_cli", *map(str, args)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return time.perf_counter() - start


def walk_and_stat(*roots: Path) -> float:
    start = time.perf_counter()
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                os.stat(os.path.join(dirpath, name))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count = 1_000 if args.quick else args.files
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        root = Path(tmp)
        inp, out, empty = root / "in", root / "out", root / "empty"
        empty.mkdir()
        for k in range(count):
            folder = inp / f"d{k // 500:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (rng.random((24, 24)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"i{k:05d}.png")
        reference = root / "ref.png"
        Image.fromarray((rng.random((24, 24)) * 200).astype(np.uint8)).save(reference)
        common = ("--reference", reference, "--workers", 1, "--quiet")
        first = svdharm("harmonize", inp, out, *common)
        quiet = min(svdharm("harmonize", inp, out, *common, "--skip-existing") for _ in range(3))
        for path in inp.rglob("*.png"):
            os.utime(path)
        touched = svdharm("harmonize", inp, out, *common, "--skip-existing")
        after = min(svdharm("harmonize", inp, out, *common, "--skip-existing") for _ in range(2))
        fixed = min(svdharm("harmonize", empty, root / "out-empty", *common) for _ in range(3))
        stat = min(walk_and_stat(inp, out) for _ in range(3))
    results = {
        "files": count,
        "first_run_s": first,
        "quiet_night_s": quiet,
        "quiet_night_per_1000_files_s": (quiet - fixed) / count * 1000,
        "touched_unchanged_s": touched,
        "after_touch_quiet_s": after,
        "fixed_cost_empty_run_s": fixed,
        "walk_and_stat_in_and_out_s": stat,
        "quiet_over_first_run": quiet / first,
        "quiet_minus_fixed_over_walk_and_stat": (quiet - fixed) / stat,
    }
    for key, value in results.items():
        print(f"{key:40} {value:.4g}" if isinstance(value, float) else f"{key:40} {value}")
    meta = {
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
    }
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "nightly.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n"
    )
    print(f"written to {out_dir / 'nightly.json'}")


if __name__ == "__main__":
    main()
