"""The training-loop transforms, measured: ratios in one run (``make bench`` runs it).

1. Per sample, each transform on NumPy and on torch CPU tensors (256 x 256 gray,
   512 x 512 RGB, a 1 x 128 x 128 x 64 volume), one thread each (as in a DataLoader
   worker): target torch within 1.3x of NumPy. For information, the torch backend's own
   kernels on the CPU (``SVDHARM_TORCH_ON_CPU=1``, the code a CUDA tensor runs).
2. A transform's per-sample cost against the CLI worker's compute for the same image (the
   worker's call of :func:`svdharm_cli.volume.transform_volume` on the slices it read):
   target within 1.2x.
3. An epoch through a DataLoader (2 workers, batch 32) of 128 x 128 gray images: with
   ``RandSVDDeharmonize`` online, without any transform, and reading pre-augmented PNG
   copies from disk (what ``augment --copies`` leaves), for information.

Writes ``bench/results/transforms.json``. ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from svdharm_cli.backend import TORCH_ON_CPU  # noqa: E402
from svdharm_cli.transforms import (  # noqa: E402
    RandSVDDeharmonize,
    RandSVDHarmonizeDeharmonize,
    SVDHarmonize,
    fit_reference,
)
from svdharm_cli.volume import transform_volume  # noqa: E402


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth structure and noise in [0, 1], channel-first, float32 (as a loader gives)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape[1:]], indexing="ij")
    base = 0.5 + 0.2 * np.sin(5 * grids[0]) * np.cos(3 * grids[1])
    out = np.stack([base + 0.03 * rng.standard_normal(base.shape) for _ in range(shape[0])])
    return np.clip(out, 0, 1).astype(np.float32)


def best(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def per_sample(repeats: int) -> dict:
    shapes = {"gray 256x256": (1, 256, 256), "RGB 512x512": (3, 512, 512)}
    shapes["volume 1x128x128x64"] = (1, 128, 128, 64)
    rows: dict = {}
    for name, shape in shapes.items():
        rows |= _per_sample(name, shape, repeats)
    return rows


def _per_sample(name: str, shape: tuple[int, ...], repeats: int) -> dict:
    rows = {}
    x = image(shape)
    reference = fit_reference([image(shape, seed=1) * 0.8 + 0.1])
    tensor = torch.from_numpy(x)
    transforms = {
        "SVDHarmonize": SVDHarmonize(reference),
        "RandSVDDeharmonize": RandSVDDeharmonize(seed=0),
        "RandSVDHarmonizeDeharmonize": RandSVDHarmonizeDeharmonize(reference, seed=0),
    }
    for label, fn in transforms.items():
        on_numpy = best(lambda fn=fn: fn(x), repeats)
        on_torch = best(lambda fn=fn: fn(tensor), repeats)
        os.environ[TORCH_ON_CPU] = "1"  # the torch backend's own kernels (a GPU's code path)
        kernels = best(lambda fn=fn: fn(tensor), repeats)
        del os.environ[TORCH_ON_CPU]
        rows[f"{label}, {name}"] = {
            "numpy_ms": on_numpy * 1e3,
            "torch_ms": on_torch * 1e3,
            "torch_kernels_ms": kernels * 1e3,
            "torch_over_numpy": on_torch / on_numpy,
            "target": 1.3,
            "pass": on_torch / on_numpy <= 1.3,
        }
    # The CLI worker's compute for the same image: its slices as it reads them, one call
    # of the volume core, outputs stored as float32.
    entry = reference.entries[0]
    slices = [x] if len(shape) == 3 else list(np.ascontiguousarray(np.moveaxis(x, -1, 0)))

    def worker() -> None:
        out = transform_volume(slices, reference.fractions, reference=(entry.mean, entry.std))
        for new in out[0]:
            new.astype(np.float32)

    cli = best(worker, repeats)
    mine = best(lambda: transforms["SVDHarmonize"](x), repeats)
    rows[f"SVDHarmonize vs the CLI worker's compute, {name}"] = {
        "worker_ms": cli * 1e3,
        "transform_ms": mine * 1e3,
        "transform_over_worker": mine / cli,
        "target": 1.2,
        "pass": mine / cli <= 1.2,
    }
    return rows


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, transform: Callable | None) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(self.images[i])
        return x if self.transform is None else self.transform(x)


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as im:
            return torch.from_numpy(np.asarray(im, dtype=np.float32)[None] / 255.0)


def epoch(count: int) -> dict:
    images = np.stack([image((1, 128, 128), seed=k) for k in range(count)])

    def run(dataset: torch.utils.data.Dataset) -> float:
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=2)
        start = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, x in enumerate(images):
            path = Path(tmp) / f"{k:05d}_aug0.png"
            Image.fromarray(np.rint(x[0] * 255).astype(np.uint8)).save(path, compress_level=4)
            paths.append(path)
        plain = run(_Tensors(images, None))
        online = run(_Tensors(images, RandSVDDeharmonize(seed=0)))
        disk = run(_Files(paths))
    return {
        f"DataLoader epoch, {count} gray 128x128, 2 workers": {
            "no_transform_s": plain,
            "online_deharmonize_s": online,
            "pre_augmented_png_s": disk,
            "online_over_disk": online / disk,
            "online_per_sample_ms": (online - plain) / count * 1e3 * 2,
            "pass": None,
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        results = per_sample(3 if args.quick else 7)
    results |= epoch(256 if args.quick else 2000)
    for name, row in results.items():
        cells = ", ".join(
            f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float) and k != "target"
        )
        verdict = {None: "info", True: "pass", False: "FAIL"}[row["pass"]]
        print(f"{name:62} {cells}  [{verdict}]")
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "threads": 1,
        "quick": args.quick,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "transforms.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n"
    )
    print(f"written to {out / 'transforms.json'}")


if __name__ == "__main__":
    main()
