"""The cost of ``svdharm tune``'s grid: ten candidates against one, on the same sample.

Each sampled image is decomposed once for every candidate's statistics and harmonized
images (``svdharm_cli.core.spectrum``); what cannot be shared is the measurement, one
decomposition of each harmonized image (compare's features). The target is a grid of ten at
most twice one candidate; ten separate runs cost ten times. Two samples: generated sites
of 512 x 512 images, where the decompositions are most of the work, and scikit-learn's
digits (28 x 28) with the digit as the label, where the classifier fits weigh as much (an
informational row). Timed
in-process (best of ``repeats``), so that start-up does not flatter the ratio.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def make_sites(work: Path, count: int, size: int) -> list[Path]:
    """Three generated sites: A, B darker and flatter (gamma 1.6, gain 0.7), C blurred and
    noisier."""
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size] / size
    folders = []
    for site in ("A", "B", "C"):
        folder = work / "tune_sites" / site
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            f = rng.uniform(2, 9, 2)
            img = 0.45 + 0.25 * np.sin(f[0] * xx) * np.cos(f[1] * yy)
            img = img + 0.03 * rng.standard_normal((size, size))
            if site == "B":
                img = 0.7 * np.clip(img, 0, 1) ** 1.6
            if site == "C":
                img = ndimage.gaussian_filter(img, 1.5) + 0.06 * rng.standard_normal(img.shape)
            arr = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"img{i:03d}.png", compress_level=1)
        folders.append(folder)
    return folders


def make_digits(work: Path, per_site: int) -> Path:
    """Two sites of scikit-learn's digits (A, and A blurred, darker and flatter) and a
    manifest with the digit as the label."""
    from PIL import Image
    from scipy import ndimage
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = ["path,site,digit"]
    for site in ("A", "B"):
        folder = work / "tune_digits" / site
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_site):
            index = k if site == "A" else per_site + k
            im = np.clip(ndimage.zoom(digits.images[index] / 16.0, 3.5, order=1), 0, 1)
            if site == "B":
                im = 0.25 + 0.6 * np.clip(ndimage.gaussian_filter(im, 1.2), 0, 1) ** 1.8
            name = f"{site}/{k:04d}.png"
            Image.fromarray(np.rint(im * 255).astype(np.uint8)).save(folder.parent / name)
            rows.append(f"{name},{site},{digits.target[index]}")
    table = work / "tune_digits" / "images.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def _timed_tune(work: Path, folders: list[Path], table: Path | None, grid: tuple) -> float:
    from svdharm_cli.evidence.tuning import Candidate
    from svdharm_cli.files.manifest import read_manifest
    from svdharm_cli.run.tuning import tune

    start = time.perf_counter()
    tune(
        folders,
        output=work / "tune_reference.json",
        manifest=None if table is None else read_manifest(table),
        label=None if table is None else "digit",
        candidates=[Candidate(f) for f in grid],
    )
    return time.perf_counter() - start


def case_tune(work: Path, count: int, size: int, repeats: int) -> dict:
    from svdharm_cli.core.bands import DEFAULT_FRACTIONS
    from svdharm_cli.evidence.tuning import DEFAULT_GRID

    results = {}
    folders = make_sites(work, count, size)
    table = make_digits(work, 100)
    for key, sites, manifest, what in (
        ("tune", folders, None, f"3 sites x {count} of {size}^2"),
        ("tune_digits", [], table, "2 x 100 digits 28^2, --label"),
    ):
        one = ten = float("inf")
        for _ in range(repeats):  # alternated, so that load hits both alike
            one = min(one, _timed_tune(work, sites, manifest, (DEFAULT_FRACTIONS,)))
            ten = min(ten, _timed_tune(work, sites, manifest, DEFAULT_GRID))
        ratio = ten / one
        results[key] = {
            "case": f"tune: grid of 10 vs 1 candidate ({what})",
            "baseline_s": one,
            "svdharm_s": ten,
            "ratio": ratio,
            "target": 2.0,
            "pass": ratio <= 2.0 if key == "tune" else None,
            "separate_runs_s": 10 * one,
        }
    return results


def main() -> None:
    """Run the case alone (``python bench/tune.py``) and write ``bench/results/tune.json``."""
    import json
    import sys
    import tempfile

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parent))
    with tempfile.TemporaryDirectory() as tmp:
        results = case_tune(Path(tmp), 12, 512, 2)
    for row in results.values():
        print(
            f"{row['case']}: {row['baseline_s']:.2f} s -> {row['svdharm_s']:.2f} s, "
            f"{row['ratio']:.2f}x (target <= {row['target']}x)"
        )
    (here / "results" / "tune.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
