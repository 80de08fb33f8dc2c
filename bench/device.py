"""The GPU cases of ``make bench``: ``--device cuda`` against the CPU path on one machine.

Measured only where torch sees a CUDA device; elsewhere it says so and writes
``bench/results/device.json`` with ``"measured": false`` (no figure is made up).

1. The decomposition into 4 components at 2048^2 and 4096^2, float64: the torch backend on
   the GPU against the CPU path (NumPy) on the same machine.
2. End to end, ``harmonize`` of 16 gray 2048 x 2048 16-bit PNGs and of 10,000 28 x 28 PNGs,
   ``--device cuda`` against the same machine's CPU path: wall time and the largest level
   difference between the two outputs.

Targets (issue): >= 20x the 2-core CPU at 4096^2 (the 2-core figure comes from
``bench/results/latest.json`` when there is one), end to end >= 5x the machine's own CPU
path on the large images. ``--quick`` shrinks the batches.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import make_images, max_level_diff, svdharm  # noqa: E402


def _decomposition(size: int) -> dict:
    import torch

    from svdharm_cli.core.bands import decompose

    rng = np.random.default_rng(size)
    x = np.clip(0.5 + 0.1 * rng.standard_normal((size, size)), 0, 1)
    start = time.perf_counter()
    cpu = decompose(x).components()
    cpu_s = time.perf_counter() - start
    tensor = torch.as_tensor(x, device="cuda")
    decompose(tensor).components()  # warm: cuSOLVER's handles and workspace
    torch.cuda.synchronize()
    start = time.perf_counter()
    gpu = decompose(tensor).components()
    torch.cuda.synchronize()
    gpu_s = time.perf_counter() - start
    worst = float(np.abs(gpu.cpu().numpy() - cpu).max())
    return {"cpu_s": cpu_s, "gpu_s": gpu_s, "speedup": cpu_s / gpu_s, "largest_diff": worst}


def _end_to_end(work: Path, name: str, count: int, size: int, bits: int) -> dict:
    src = work / name
    make_images(src, count, size, bits)
    ref = work / f"{name}.json"
    svdharm("fit-reference", src, "-o", ref)
    cpu_s = svdharm("harmonize", src, work / f"{name}-cpu", "--reference", ref)
    gpu_s = svdharm("harmonize", src, work / f"{name}-gpu", "--reference", ref, "--device", "cuda")
    levels = max_level_diff(work / f"{name}-cpu", work / f"{name}-gpu")
    return {"cpu_s": cpu_s, "gpu_s": gpu_s, "speedup": cpu_s / gpu_s, "largest_levels": levels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out = HERE / "results" / "device.json"
    out.parent.mkdir(exist_ok=True)
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if not available:
        print("device cases: no CUDA device here, so the GPU path was not measured")
        out.write_text(json.dumps({"measured": False, "reason": "no CUDA device"}, indent=2) + "\n")
        return
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for size in (2048, 4096):
        results[f"decompose_{size}"] = _decomposition(size)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["large"] = _end_to_end(work, "large", 4 if args.quick else 16, 2048, 16)
        results["small"] = _end_to_end(work, "small", 500 if args.quick else 10_000, 28, 8)
    latest = HERE / "results" / "latest.json"
    if latest.exists():
        two_core = json.loads(latest.read_text())["results"].get("decompose_2048", {})
        results["two_core_cpu_2048_s"] = two_core.get("svdharm_s")
    results["meta"] = {
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
    }
    for key, row in results.items():
        print(f"{key:24} {row}")
    out.write_text(json.dumps({"measured": True, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
