"""The client's memory per input file: peak resident memory of the svdharm process itself
(not its workers) on trees of small files, and the slope between two tree sizes.

Used by ``make bench`` (5,000 and 40,000 files, 2 workers) and by the test suite (a small
tree, one worker). Run alone: ``python bench/client_memory.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

_WRAPPER = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " file=sys.stderr))\n"
    "from svdharm_cli.ui.app import main\n"
    "sys.argv = ['svdharm', *sys.argv[1:]]\n"
    "main()\n"
)


def make_tree(root: Path, count: int, per_folder: int = 1000) -> None:
    """``count`` 8 x 8 gray PNGs, ``per_folder`` to a folder (an archive's layout)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(count):
        folder = root / f"f{k // per_folder:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{k:07d}.png", compress_level=1)


def client_peak(args: list[str], python: str = sys.executable) -> tuple[float, float]:
    """Peak RSS (MiB) of the svdharm process running ``args``, and its wall time."""
    start = time.perf_counter()
    done = subprocess.run(
        [python, "-c", _WRAPPER, *args], capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - start
    peak = int(done.stderr.split("PEAK")[-1].split()[0])
    return peak / 1024.0, seconds


def slope(work: Path, sizes: tuple[int, int], workers: int) -> dict:
    """Peak client RSS at two tree sizes (harmonize to a one-image reference) and the
    bytes per file between them."""
    from PIL import Image

    ref = work / "ref.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(ref)
    row: dict = {}
    for n in sizes:
        src = work / f"in{n}"
        make_tree(src, n)
        peak, seconds = client_peak(
            [
                "harmonize",
                str(src),
                str(work / f"out{n}"),
                "--reference",
                str(ref),
                "--workers",
                str(workers),
                "-q",
            ]
        )
        row[n] = {"peak_mib": peak, "seconds": seconds}
    a, b = sizes
    row["bytes_per_file"] = (row[b]["peak_mib"] - row[a]["peak_mib"]) * 2**20 / (b - a)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = (1000, 5000) if args.quick else (5000, 40000)
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as t:
        row = slope(Path(t), sizes, 2)
    a, b = sizes
    print(
        f"client peak RSS: {row[a]['peak_mib']:.1f} MiB at {a} files, {row[b]['peak_mib']:.1f} "
        f"MiB at {b}: {row['bytes_per_file']:.0f} bytes per file (target <= 300); "
        f"{row[b]['seconds'] / b * 1e3:.3f} ms per file at {b}"
    )
    out = HERE / "results" / "client_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({str(k): v for k, v in row.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
