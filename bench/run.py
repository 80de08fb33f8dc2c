"""svdharm's benchmark: each target of the speed work against a baseline, in one run.

The baseline is what a researcher would write from the paper: sequential, one process,
``numpy.linalg.svd`` in float64 on each channel, the rank reconstructions, imageio with
default settings. Both sides get the same generated data and run on the same machine in
the same session, so only the ratios mean anything. Nothing here is a test: the test suite
checks correctness; this measures.

Run: ``make bench`` (or ``python bench/run.py [--quick]``). Prints a table and writes
``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tune import case_tune  # noqa: E402

FRACTIONS = (0.07, 0.20, 0.50)
CLI = [sys.executable, "-m", "svdharm_cli"]


# -- the baseline -------------------------------------------------------------------------


def baseline_components(x: np.ndarray) -> list[np.ndarray]:
    u, s, vt = np.linalg.svd(x)
    r = len(s)
    ks = [max(1, min(r, math.floor(f * r + 0.5))) for f in FRACTIONS]
    recon = [(u[:, :k] * s[:k]) @ vt[:k] for k in ks]
    return [recon[0], recon[1] - recon[0], recon[2] - recon[1], x - recon[2]]


def baseline_harmonize_file(src: Path, dst: Path, ref_mean: list, ref_std: list) -> None:
    import imageio.v3 as iio

    stored = iio.imread(src)
    top = 65535.0 if stored.dtype == np.uint16 else 255.0
    x = stored.astype(np.float64) / top
    out = np.zeros_like(x)
    for c, m_ref, s_ref in zip(baseline_components(x), ref_mean, ref_std):
        m, s = c.mean(), c.std()
        out += (c - m) / s * s_ref + m_ref if s > 1e-6 else c - m + m_ref
    iio.imwrite(dst, np.rint(np.clip(out, 0, 1) * top).astype(stored.dtype))


def baseline_tree(src: Path, dst: Path, reference: Path) -> None:
    [entry] = json.loads(reference.read_text())["entries"]
    for path in sorted(src.rglob("*.png")):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        baseline_harmonize_file(path, target, entry["mean"][0], entry["std"][0])


# -- data ---------------------------------------------------------------------------------


def make_images(folder: Path, count: int, size: int, bits: int = 8, seed: int = 0) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        f = rng.uniform(2, 9, 2)
        img = (
            0.45
            + 0.25 * np.sin(f[0] * xx) * np.cos(f[1] * yy)
            + 0.03 * rng.standard_normal((size, size))
        )
        top = 2**bits - 1
        arr = np.rint(np.clip(img, 0, 1) * top).astype(np.uint16 if bits == 16 else np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:05d}.png", compress_level=1)


# -- helpers ------------------------------------------------------------------------------


def svdharm(*args: object) -> float:
    start = time.perf_counter()
    subprocess.run([*CLI, *map(str, args), "-q"], check=True)
    return time.perf_counter() - start


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def max_level_diff(a: Path, b: Path) -> int:
    from PIL import Image

    worst = 0
    for path in sorted(a.rglob("*.png")):
        x = np.asarray(Image.open(path)).astype(np.int64)
        y = np.asarray(Image.open(b / path.relative_to(a))).astype(np.int64)
        worst = max(worst, int(np.abs(x - y).max()))
    return worst


def peak_rss_mib(cmd: list) -> float:
    """Peak resident memory of ``cmd``, in MiB, measured by a fresh wrapper process (so no
    earlier child of this process can mask it; Linux reports ru_maxrss in KiB)."""
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *map(str, cmd)], check=True, capture_output=True, text=True
    )
    return int(done.stdout.split()[-1]) / 1024.0


def tree_peak_rss_mib(cmd: list, interval: float = 0.02) -> tuple[float, float]:
    """Peak of the summed resident memory of ``cmd`` and all its descendants (worker
    processes included), sampled from /proc every ``interval`` s; and the wall time."""
    page = os.sysconf("SC_PAGE_SIZE")
    start = time.perf_counter()
    proc = subprocess.Popen([*map(str, cmd)])
    peak = 0
    while proc.poll() is None:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        total, todo = 0, [proc.pid]
        while todo:
            pid = todo.pop()
            todo.extend(children.get(pid, []))
            with contextlib.suppress(OSError, IndexError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        peak = max(peak, total)
        time.sleep(interval)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return peak / 2**20, time.perf_counter() - start


def make_ct_series(folder: Path, slices: int, size: int, seed: int = 0) -> None:
    """A CT series of ``slices`` int16 files in Hounsfield units (air, tissue, bone, noise)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.16
    series = generate_uid(entropy_srcs=[str(folder)])
    for i in range(slices):
        z = i / slices
        bone = ((yy - 0.5) ** 2 + (xx - 0.5 - 0.1 * z) ** 2) < 0.01 + 0.01 * z
        hu = -1000 + 1040 * body + 660 * bone + 30 * np.sin(9 * xx + 5 * z)
        hu += 15 * rng.standard_normal(hu.shape)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(folder), str(i)])
        ds.SeriesInstanceUID = series
        ds.Modality = "CT"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, 1.25 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.set_pixel_data(np.rint(hu).astype(np.int16), "MONOCHROME2", 16)
        ds.save_as(folder / f"slice{i:04d}.dcm", enforce_file_format=True)


# -- the cases ----------------------------------------------------------------------------


def make_case(work: Path, name: str, count: int, size: int, bits: int = 8) -> tuple[Path, Path]:
    """Generated inputs ``work/name`` and a reference fitted from one more image."""
    src, ref_dir = work / name, work / f"{name}_ref"
    make_images(src, count, size, bits=bits, seed=len(name))
    make_images(ref_dir, 1, size, bits=bits, seed=100 + len(name))
    reference = work / f"{name}_ref.json"
    subprocess.run([*CLI, "fit-reference", ref_dir, "-o", reference, "-q"], check=True)
    return src, reference


def case_large(work: Path, n: int) -> dict:
    src, reference = make_case(work, "large", n, 1024)
    base = timed(lambda: baseline_tree(src, work / "large_base", reference))
    ours = svdharm("harmonize", src, work / "large_out", "--reference", reference)
    one = svdharm("harmonize", src, work / "large_out1", "--reference", reference, "--workers", 1)
    diff = max_level_diff(work / "large_base", work / "large_out")
    return {
        "large": {
            "case": f"harmonize {n} gray 1024x1024 PNGs, end to end",
            "baseline_s": base,
            "svdharm_s": ours,
            "ratio": base / ours,
            "target": 4.0,
            "accuracy_levels": diff,
            "accurate": diff <= 1,
        },
        "scaling": {
            "case": "same batch: 2 workers vs 1 worker",
            "baseline_s": one,
            "svdharm_s": ours,
            "ratio": one / ours,
            "target": 1.8,
        },
    }


def case_decomposition(size: int, repeats: int) -> dict:
    from svdharm_cli.core.bands import decompose

    rng = np.random.default_rng(size)
    yy, xx = np.mgrid[0:size, 0:size] / size
    x = np.clip(
        0.45 + 0.25 * np.sin(5 * xx) * np.cos(3 * yy) + 0.03 * rng.standard_normal((size, size)),
        0,
        1,
    )
    base = min(timed(lambda: baseline_components(x)) for _ in range(repeats))

    def ours() -> None:
        decompose(x, FRACTIONS).components()

    svd = min(timed(ours) for _ in range(repeats))
    worst = float(
        np.abs(np.stack(baseline_components(x)) - decompose(x, FRACTIONS).components()).max()
    )
    return {
        f"decompose_{size}": {
            "case": f"decomposition into 4 components, {size}x{size} float64",
            "baseline_s": base,
            "svdharm_s": svd,
            "ratio": base / svd,
            "target": 3.0,
            "accuracy_levels": worst * 65535,
            "accurate": worst * 65535 <= 16,
        }
    }


def _copy_chunk(pairs: list[tuple[str, str]]) -> None:
    from PIL import Image

    for src, dst in pairs:
        with Image.open(src) as im:
            pixels = np.asarray(im)
        tmp = Path(dst).with_name(f".{Path(dst).name}.tmp")
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=4)
        os.replace(tmp, dst)


def io_floor(src: str, dst: str, workers: int) -> None:
    """The I/O floor of a run: walk ``src``, read every PNG with Pillow and write it
    atomically (temporary + rename) under ``dst``, in ``workers`` processes, no
    decomposition. Run in a fresh interpreter, like svdharm itself."""
    import concurrent.futures
    import multiprocessing

    pairs = []
    for path in sorted(Path(src).rglob("*.png")):
        out = Path(dst) / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        pairs.append((str(path), str(out)))
    chunks = [pairs[i :: workers * 8] for i in range(workers * 8)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, context) as pool:
        list(pool.map(_copy_chunk, chunks))


def case_small(work: Path, n: int, repeats: int = 3) -> dict:
    """The small-file batch against the baseline, and against the I/O floor: the best of
    ``repeats`` interleaved runs of each (file creation times are noisy)."""
    src, reference = make_case(work, "small", n, 28)
    base = timed(lambda: baseline_tree(src, work / "small_base", reference))
    workers = len(os.sched_getaffinity(0))
    ours = floor = math.inf
    for k in range(repeats):
        out, dst = work / f"small_out{k}", work / f"small_floor{k}"
        floor_cmd = (
            f"import sys; sys.path.insert(0, {str(HERE)!r}); import run; "
            f"run.io_floor({str(src)!r}, {str(dst)!r}, {workers})"
        )
        floor = min(
            floor, timed(lambda c=floor_cmd: subprocess.run([sys.executable, "-c", c], check=True))
        )
        ours = min(ours, svdharm("harmonize", src, out, "--reference", reference))
        shutil.rmtree(out)
        shutil.rmtree(dst)
    return {
        "small": {
            "case": f"harmonize {n} gray 28x28 PNGs, end to end",
            "baseline_s": base,
            "svdharm_s": ours,
            "ratio": base / ours,
            "target": 5.0,
        },
        "small_floor": {
            "case": f"same {n} files: svdharm time / I/O floor ({workers} workers)",
            "baseline_s": floor,
            "svdharm_s": ours,
            "ratio": ours / floor,
            "target": 1.4,
            "pass": ours / floor <= 1.4,
        },
    }


def _one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def case_scaling(work: Path, count: int = 8, size: int = 768, repeats: int = 3) -> dict:
    """A small batch on 2 workers against 1 worker (which lets BLAS use every core), and,
    for the per-core picture, against 1 worker confined to one CPU; best of ``repeats``."""
    src, reference = make_case(work, "scaling", count, size)

    def run(workers: int, one_cpu: bool = False) -> float:
        out = work / "scaling_out"
        cmd = [*CLI, "harmonize", src, out, "--reference", reference, "--workers", workers, "-q"]
        start = time.perf_counter()
        subprocess.run(list(map(str, cmd)), check=True, preexec_fn=_one_cpu if one_cpu else None)
        seconds = time.perf_counter() - start
        shutil.rmtree(out)
        return seconds

    one = two = pinned = math.inf
    for _ in range(repeats):
        one, two, pinned = min(one, run(1)), min(two, run(2)), min(pinned, run(1, True))
    return {
        "scaling_small": {
            "case": f"harmonize {count} gray {size}x{size} PNGs: 2 workers vs 1",
            "baseline_s": one,
            "svdharm_s": two,
            "ratio": one / two,
            "target": 1.7,
        },
        "scaling_per_core": {
            "case": "same batch: 2 workers vs 1 worker confined to one CPU",
            "baseline_s": pinned,
            "svdharm_s": two,
            "ratio": pinned / two,
            "target": None,
            "pass": None,
        },
    }


def case_cluster(work: Path, local_large: float, local_small: float, small_work: Path) -> dict:
    """The large and small batches (generated by the cases above) on a Dask LocalCluster of
    process workers with one thread each, against the local pool's times from this run.
    Each cluster is warmed first with one small fit-reference (a cluster's workers live
    across runs; the local pool's start-up stays in its times)."""
    try:
        import distributed
    except ImportError:
        print("Dask is not installed (pip install 'svdharm[dask]'): cluster cases skipped")
        return {}
    import logging

    large, large_ref = work / "large", work / "large_ref.json"
    small, small_ref = small_work / "small", small_work / "small_ref.json"
    seconds: dict[int, float] = {}
    small_s = overhead_ms = 0.0
    for workers in (1, 2):
        with distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster:
            address = cluster.scheduler_address
            svdharm(
                "fit-reference",
                work / "large_ref",
                "-o",
                work / "warm.json",
                "--scheduler",
                address,
            )
            seconds[workers] = svdharm(
                "harmonize",
                large,
                work / f"dask_large{workers}",
                "--reference",
                large_ref,
                "--scheduler",
                address,
            )
            if workers == 2:
                small_s = svdharm(
                    "harmonize",
                    small,
                    small_work / "dask_small",
                    "--reference",
                    small_ref,
                    "--scheduler",
                    address,
                )
                with distributed.Client(address) as client:
                    count = 1000
                    start = time.perf_counter()
                    client.gather(client.map(abs, range(count), pure=False))
                    overhead_ms = (time.perf_counter() - start) / count * 1e3
    n, m = len(list(large.glob("*.png"))), len(list(small.glob("*.png")))
    return {
        "dask_scaling": {
            "case": f"Dask LocalCluster, {n} gray 1024x1024 PNGs: 2 workers vs 1",
            "baseline_s": seconds[1],
            "svdharm_s": seconds[2],
            "ratio": seconds[1] / seconds[2],
            "target": 1.8,
        },
        "dask_vs_local": {
            "case": "same batch: Dask 2 workers time / local pool 2 workers time",
            "baseline_s": local_large,
            "svdharm_s": seconds[2],
            "ratio": seconds[2] / local_large,
            "target": 1.15,
            "pass": seconds[2] / local_large <= 1.15,
        },
        "dask_small": {
            "case": f"{m} gray 28x28 PNGs: Dask 2 workers time / local pool time",
            "baseline_s": local_small,
            "svdharm_s": small_s,
            "ratio": small_s / local_small,
            "target": 1.5,
            "pass": small_s / local_small <= 1.5,
            "per_task_overhead_ms": overhead_ms,
        },
    }


def case_memory(work: Path) -> dict:
    src = work / "mem"
    make_images(src, 1, 4096, bits=16, seed=3)
    reference = work / "mem_ref.json"
    make_images(work / "mem_ref", 1, 256, bits=16, seed=97)
    subprocess.run([*CLI, "fit-reference", work / "mem_ref", "-o", reference, "-q"], check=True)
    out = work / "mem_out"
    ours = peak_rss_mib(
        [*CLI, "harmonize", src, out, "--reference", reference, "--workers", 1, "-q"]
    )
    code = (
        f"import sys; from pathlib import Path; sys.path.insert(0, {str(HERE)!r}); import run; "
        f"run.baseline_tree(Path({str(src)!r}), Path({str(work / 'mem_base')!r}), "
        f"Path({str(reference)!r}))"
    )
    base = peak_rss_mib([sys.executable, "-c", code])
    return {
        "memory": {
            "case": "peak RSS, one 4096x4096 16-bit image (MiB)",
            "baseline_s": base,
            "svdharm_s": ours,
            "ratio": base / ours,
            "target_mib": 768,
            "pass": ours <= 768,
        }
    }


def case_volume(work: Path, slices: int) -> dict:
    """A CT series harmonized as one volume (pooled statistics) against the same slices with
    ``--per-slice``, both with 2 workers: time ratio and peak memory of the process tree."""
    src, ref_src = work / "ct" / "series", work / "ct_ref" / "series"
    make_ct_series(src, slices, 512)
    make_ct_series(ref_src, 8, 512, seed=1)
    reference = work / "ct_ref.json"
    subprocess.run([*CLI, "fit-reference", ref_src, "-o", reference, "-q"], check=True)
    runs = {}
    for mode, extra in (("pooled", []), ("per-slice", ["--per-slice"])):
        best = None
        for k in range(2):
            out = work / f"ct_out_{mode}_{k}"
            cmd = [*CLI, "harmonize", src.parent, out, "--reference", reference]
            peak, seconds = tree_peak_rss_mib([*cmd, "--workers", 2, "-q", *extra])
            shutil.rmtree(out)
            if best is None or seconds < best[1]:
                best = (peak, seconds)
        runs[mode] = best
    pooled, per_slice = runs["pooled"], runs["per-slice"]
    ratio = pooled[1] / per_slice[1]
    case = f"{slices}-slice 512^2 int16 CT series, 2 workers"
    return {
        "volume_time": {
            "case": f"{case}: pooled time / --per-slice time",
            "baseline_s": per_slice[1],
            "svdharm_s": pooled[1],
            "ratio": ratio,
            "target": 2.2,
            "pass": ratio <= 2.2,
        },
        "volume_memory": {
            "case": f"{case}: peak RSS of all processes (MiB)",
            "baseline_s": None,
            "svdharm_s": None,
            "ratio": pooled[0],
            "per_slice_mib": per_slice[0],
            "target_mib": 1536,
            "pass": pooled[0] <= 1536,
        },
    }


def case_startup(repeats: int = 5) -> dict:
    exe = shutil.which("svdharm") or str(Path(sys.executable).parent / "svdharm")
    times = {}
    for flag in ("--help", "--version"):
        times[flag] = min(
            timed(lambda f=flag: subprocess.run([exe, f], check=True, capture_output=True))
            for _ in range(repeats)
        )
    worst = max(times.values())
    return {
        "startup": {
            "case": "svdharm --help / --version (slowest of the two, s)",
            "baseline_s": None,
            "svdharm_s": worst,
            "ratio": None,
            "target_s": 0.3,
            "pass": worst < 0.3,
        }
    }


def _png_sources() -> dict[str, np.ndarray]:
    """Stored pixels to encode: generated, a sample fundus, and pydicom-data's 12-bit MR
    (scaled to 16 bits) when installed."""
    from svdharm_cli.files.formats import read_image

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:1024, 0:1024] / 1024
    noisy = 0.45 + 0.25 * np.sin(5 * xx) * np.cos(3 * yy) + 0.03 * rng.standard_normal(xx.shape)
    sources = {"generated 1024x1024 8-bit": np.rint(np.clip(noisy, 0, 1) * 255).astype(np.uint8)}
    paths = {"sample fundus RGB 8-bit": HERE.parent / "sample_images/fundus/site_a/fundus_a0.png"}
    try:
        import data_store

        paths["MR 1024x1024 12-bit as 16-bit"] = (
            Path(data_store.__file__).parent / "data/MR2_UNCR.dcm"
        )
    except ImportError:
        pass
    for name, path in paths.items():
        image = read_image(path)
        wide = image.bits > 8
        planes = np.moveaxis(image.frames[0], 0, -1) * (65535 if wide else 255)
        stored = np.rint(planes).astype(np.uint16 if wide else np.uint8)
        sources[name] = stored[..., 0] if stored.shape[-1] == 1 else stored
    return sources


def _encode_png(pixels: np.ndarray, level: int, repeats: int = 2) -> tuple[float, int]:
    import io

    from PIL import Image

    best, size = math.inf, 0
    for _ in range(repeats):
        buffer = io.BytesIO()
        start = time.perf_counter()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=level)
        best = min(best, time.perf_counter() - start)
        size = len(buffer.getvalue())
    return best, size


def png_levels(levels: tuple[int, ...] = (1, 4, 6, 9)) -> dict:
    """Encode time and size of PNG outputs per zlib level (how the default was chosen)."""
    table = {}
    for name, pixels in _png_sources().items():
        table[name] = {}
        for level in levels:
            seconds, size = _encode_png(pixels, level)
            table[name][str(level)] = {"seconds": seconds, "bytes": size}
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _result(verdict: bool | None) -> str:
    return "info" if verdict is None else "pass" if verdict else "FAIL"


def verdict(row: dict) -> bool | None:
    """Whether the row meets its target; None for a row measured for information."""
    if "pass" in row:
        return None if row["pass"] is None else bool(row["pass"])
    ok = row["ratio"] >= row["target"]
    return ok and row.get("accurate", True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller batches (a smoke run)")
    args = parser.parse_args()
    results: dict = {}
    # Small files go to a RAM disk where there is one: this disk's file-creation speed
    # moves 2x from one minute to the next, which would drown what svdharm adds per file.
    ram = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=ram) as small:
        work, small_work = Path(tmp), Path(small)
        results |= case_startup()
        results |= case_decomposition(1024, 2 if args.quick else 3)
        if not args.quick:
            results |= case_decomposition(2048, 1)
        results |= case_large(work, 4 if args.quick else 16)
        results |= case_scaling(work, 4 if args.quick else 8, 768, 1 if args.quick else 3)
        results |= case_small(small_work, 500 if args.quick else 10_000, 1 if args.quick else 3)
        results |= case_cluster(
            work, results["large"]["svdharm_s"], results["small"]["svdharm_s"], small_work
        )
        results |= case_memory(work)
        results |= case_volume(work, 40 if args.quick else 200)
        results |= case_tune(work, 6 if args.quick else 12, 512, 1 if args.quick else 2)
    levels = png_levels()
    for row in results.values():
        row["pass"] = verdict(row)
    print(f"{'case':58} {'baseline':>10} {'svdharm':>10} {'ratio':>7} {'target':>8}  result")
    for row in results.values():
        target = row.get("target") or row.get("target_mib") or row.get("target_s")
        fmt = _fmt
        print(
            f"{row['case'][:58]:58} {fmt(row['baseline_s']):>10} {fmt(row['svdharm_s']):>10} "
            f"{fmt(row['ratio']):>7} {fmt(target):>8}  {_result(row['pass'])}"
        )
    if "dask_small" in results:
        overhead = results["dask_small"]["per_task_overhead_ms"]
        print(f"Dask per-task overhead (1000 empty tasks, 2 workers): {overhead:.2f} ms")
    print("\nPNG encode per zlib level (ms / kB); outputs default to level 4")
    for name, row in levels.items():
        cells = "  ".join(
            f"L{lv}: {v['seconds'] * 1e3:.0f} / {v['bytes'] / 1e3:.0f}" for lv, v in row.items()
        )
        print(f"  {name:32} {cells}")
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "numpy": np.__version__,
        "quick": args.quick,
        "small_files_on": "tmpfs" if ram else "disk",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(
        json.dumps({"meta": meta, "results": results, "png_levels": levels}, indent=2) + "\n"
    )
    print(f"written to {out / 'latest.json'}")


if __name__ == "__main__":
    main()
