"""The training-loop transforms, measured: ratios in one run (``make bench`` runs it).

1. Per sample, each transform on NumPy and on torch CPU tensors (256 x 256 gray,
   512 x 512 RGB, a 1 x 128 x 128 x 64 volume), one thread each (as in a DataLoader
   worker): target torch within 1.3x of NumPy. For information, the torch backend's own
   kernels on the CPU (``SVDHARM_TORCH_ON_CPU=1``, the code a CUDA tensor runs).
2. A transform's per-sample cost against the CLI worker's compute for the same image (the
   worker's call of :func:`svdharm_cli.core.volume.transform_volume` on the slices it read):
   target within 1.2x.
3. An epoch through a DataLoader (2 workers, batch 32) of 128 x 128 gray images: with
   ``RandSVDDeharmonize`` online from the image, online from decompositions kept in the
   dataset (``SVDDecompose`` once), without any transform, and reading pre-augmented PNG
   copies from disk (what ``augment --copies`` leaves): target, from the kept
   decompositions within 1.2x of the epoch without the augmentation.
4. Decompose once (METHOD.md 7b): per sample at gray 256^2, gray 512^2, RGB 512^2 and a
   1 x 128 x 128 x 64 volume, the two random transforms from the image and from a kept
   decomposition, beside MONAI's RandAdjustContrast, RandGaussianNoise and
   RandHistogramShift and TorchIO's RandomGamma in the same run, and the floor (one
   weighted sum of four cached float32 components): target, from the cache at most 1.0x
   RandAdjustContrast. The cache's bytes per sample (target at most 4x the float32 image),
   and the representation not chosen: the implicit form ``a_n X + (P diag(a - a_n)) V^T``
   (X, P and V kept, in float64 and in float32), its bytes and its time per draw.

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

from svdharm_cli.core.backend import TORCH_ON_CPU  # noqa: E402
from svdharm_cli.core.bands import decompose  # noqa: E402
from svdharm_cli.core.volume import transform_volume  # noqa: E402
from svdharm_cli.transforms import (  # noqa: E402
    RandSVDDeharmonize,
    RandSVDHarmonizeDeharmonize,
    SVDDecompose,
    SVDHarmonize,
    fit_reference,
)


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


def cached(repeats: int) -> dict:
    shapes = {
        "gray 256x256": (1, 256, 256),
        "gray 512x512": (1, 512, 512),
        "RGB 512x512": (3, 512, 512),
        "volume 1x128x128x64": (1, 128, 128, 64),
    }
    rows = {}
    for name, shape in shapes.items():
        rows[f"Decompose once, {name}"] = _cached(shape, repeats)
    return rows


def _cached(shape: tuple[int, ...], repeats: int) -> dict:
    import torchio as tio
    from monai.transforms import RandAdjustContrast, RandGaussianNoise, RandHistogramShift

    x = image(shape)
    reference = fit_reference([image(shape, seed=1) * 0.8 + 0.1])
    deharmonize = RandSVDDeharmonize(seed=0)
    both = RandSVDHarmonizeDeharmonize(reference, seed=0)
    kept = SVDDecompose()(x)
    row = {
        "deharmonize_image_ms": best(lambda: deharmonize(x), repeats) * 1e3,
        "deharmonize_cached_ms": best(lambda: deharmonize(kept), repeats) * 1e3,
        "harm_deharm_image_ms": best(lambda: both(x), repeats) * 1e3,
        "harm_deharm_cached_ms": best(lambda: both(kept), repeats) * 1e3,
        "decompose_once_ms": best(lambda: SVDDecompose()(x), repeats) * 1e3,
    }
    peers = {
        "monai_adjust_contrast_ms": RandAdjustContrast(prob=1.0),
        "monai_gaussian_noise_ms": RandGaussianNoise(prob=1.0),
        "monai_histogram_shift_ms": RandHistogramShift(prob=1.0),
    }
    for label, peer in peers.items():
        peer.set_random_state(0)
        row[label] = best(lambda peer=peer: peer(x), repeats) * 1e3
    gamma = tio.RandomGamma()
    tensor = torch.from_numpy(x if x.ndim == 4 else x[..., None])
    row["torchio_gamma_ms"] = best(lambda: gamma(tensor), repeats) * 1e3
    comps = np.ascontiguousarray(kept.components).reshape(shape[0], 4, -1)
    weights = np.float32([[[1.1, 0.9, 1.05, 0.95]]] * shape[0])
    row["floor_weighted_sum_ms"] = best(lambda: np.matmul(weights, comps), repeats) * 1e3
    row["cache_bytes"] = float(kept.nbytes)
    row["cache_over_float32_image"] = kept.nbytes / (x.size * 4)
    row |= _implicit(x, repeats)
    ratio = row["deharmonize_cached_ms"] / row["monai_adjust_contrast_ms"]
    row["cached_over_adjust_contrast"] = ratio
    row["cached_harm_deharm_over_adjust_contrast"] = (
        row["harm_deharm_cached_ms"] / row["monai_adjust_contrast_ms"]
    )
    row["target"] = 1.0
    row["pass"] = (
        ratio <= 1.0
        and row["cached_harm_deharm_over_adjust_contrast"] <= 1.0
        and row["cache_over_float32_image"] <= 4.0
    )
    return row


def _implicit(x: np.ndarray, repeats: int) -> dict:
    """The representation not chosen: per slice and channel X, P = X V and V kept; a draw
    is ``a_n X + (P diag(a_band - a_n)) V^T``, one matrix product per slice and channel."""
    planes = (
        [x[c] for c in range(x.shape[0])]
        if x.ndim == 3
        else [x[c, ..., s] for c in range(x.shape[0]) for s in range(x.shape[-1])]
    )
    kept = [decompose(p) for p in planes]
    scales = np.array([1.1, 0.9, 1.05, 0.95])
    out = {}
    for dtype in ("float64", "float32"):
        held = [(b.x.astype(dtype), b.p.astype(dtype), b.v.astype(dtype), b) for b in kept]

        def draw(held: list = held, dtype: str = dtype) -> None:
            for xx, p, v, b in held:
                column = np.empty(p.shape[1], dtype=dtype)
                for cols, a in zip(b._column_slices(), scales[:-1]):
                    column[cols] = a - scales[-1]
                (p * column) @ v.T + scales[-1] * xx

        out[f"implicit_{dtype}_ms"] = best(draw, repeats) * 1e3
        out[f"implicit_{dtype}_bytes"] = float(
            sum(h[0].nbytes + h[1].nbytes + h[2].nbytes for h in held)
        )
    return out


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, transform: Callable | None, keep: bool = False) -> None:
        self.images, self.transform = images, transform
        decompose_once = SVDDecompose()
        self.kept = [decompose_once(torch.from_numpy(x)) for x in images] if keep else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.kept is not None:
            assert self.transform is not None
            return self.transform(self.kept[i])
        x = torch.from_numpy(self.images[i])
        return x if self.transform is None else self.transform(x)


class _Floor(torch.utils.data.Dataset):
    """One weighted sum of each sample's four cached float32 components, nothing else."""

    def __init__(self, kept: _Tensors) -> None:
        assert kept.kept is not None
        self.flat = [np.asarray(d.components).reshape(1, 4, -1) for d in kept.kept]
        self.weights = np.float32([[[1.1, 0.9, 1.05, 0.95]]])

    def __len__(self) -> int:
        return len(self.flat)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.matmul(self.weights, self.flat[i]).reshape(1, 128, 128))


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as im:
            return torch.from_numpy(np.asarray(im, dtype=np.float32)[None] / 255.0)


def epoch(count: int) -> dict:
    """Epochs through a DataLoader that keeps its workers (``persistent_workers``, as a
    training run of many epochs does, and as MONAI advises with ``CacheDataset``): the
    first epoch (which also starts the workers, forking a process that holds the cache) and
    the steady state (the best of the next four epochs). The floor is a dataset that returns
    one weighted sum of the same float32 components with nothing else (no draw, no checks,
    no clipping)."""
    images = np.stack([image((1, 128, 128), seed=k) for k in range(count)])

    def run(dataset: torch.utils.data.Dataset) -> tuple[float, float]:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=32, num_workers=2, persistent_workers=True
        )
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in loader:
                pass
            times.append(time.perf_counter() - start)
        return times[0], min(times[1:])

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, x in enumerate(images):
            path = Path(tmp) / f"{k:05d}_aug0.png"
            Image.fromarray(np.rint(x[0] * 255).astype(np.uint8)).save(path, compress_level=4)
            paths.append(path)
        plain = run(_Tensors(images, None))
        online = run(_Tensors(images, RandSVDDeharmonize(seed=0)))
        start = time.perf_counter()
        kept = _Tensors(images, RandSVDDeharmonize(seed=0), keep=True)
        decompose_s = time.perf_counter() - start
        from_cache = run(kept)
        floor = run(_Floor(kept))
        disk = run(_Files(paths))
    return {
        f"DataLoader epoch, {count} gray 128x128, 2 workers": {
            "no_transform_s": plain[1],
            "online_deharmonize_s": online[1],
            "online_from_kept_decompositions_s": from_cache[1],
            "floor_weighted_sum_s": floor[1],
            "pre_augmented_png_s": disk[1],
            "first_epoch_no_transform_s": plain[0],
            "first_epoch_from_kept_s": from_cache[0],
            "decompose_once_s": decompose_s,
            "online_over_disk": online[1] / disk[1],
            "kept_over_no_transform": from_cache[1] / plain[1],
            "floor_over_no_transform": floor[1] / plain[1],
            "online_per_sample_ms": (online[1] - plain[1]) / count * 1e3 * 2,
            "target": 1.2,
            "pass": from_cache[1] / plain[1] <= 1.2,
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        results = per_sample(3 if args.quick else 7)
        results |= cached(3 if args.quick else 7)
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
