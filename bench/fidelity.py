"""Fidelity benchmark: does harmonization bring a shifted site back to the truth?

Images that ship with packages are the truth (site A): scikit-image's retina (green
channel), pydicom-data's CR radiograph, MR and CT, and the first 3-D volume of nibabel's
4-D example (harmonized as one volume, statistics pooled over its slices). Each is put
through simulated site shifts to make site B:

- gain/offset: ``0.7 x + 0.06``;  gamma: ``x ** 1.5``;  blur: Gaussian, sigma 1.5 pixels;
- noise: Gaussian, std 0.03;  combined: gamma 1.25, gain/offset, blur 1, noise 0.02;
- field of view 0.8 and 0.65: the content shrunk to 80 % or 65 % of the frame in an empty
  surround, plus gain/offset, blur 1 and noise 0.01 (the truth is the shrunk, unshifted
  content); the issue's retina experiment, on every source.

Site B is then harmonized to site A by: nothing; a global z-score (mean and std matched);
histogram matching (``skimage.exposure.match_histograms``); Nyul-Udupa histogram
standardization (TorchIO's ``HistogramStandardization``, landmarks from the truth, mapped
back to the truth's intensities); svdharm (its transforms, statistics over all pixels);
svdharm with the automatic mask. Every method gets the
same reference, the truth image of site A, so this measures how well each method undoes a
shift, not how well a cohort reference fits. Metrics, on the truth's foreground (its
automatic mask): PSNR and SSIM (scikit-image) against the truth, and the separability of
``svdharm compare`` (truth images against each method's outputs, all sources and shifts).

Run: ``make evaluate`` (or ``python bench/fidelity.py``). Prints tables and writes
``bench/results/fidelity.json``. Nothing here is a test.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from svdharm_cli.core.masks import auto_mask
from svdharm_cli.evidence.compare import sample_from_arrays, separability
from svdharm_cli.transforms import SVDHarmonize, fit_reference

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
FRACTIONS = (0.07, 0.2, 0.5)
SIZE = 512
PSNR_CAP = 99.0
"""PSNR above this is reported as this: exact recovery, up to float rounding."""


# -- sources: (f, h, w) float64 in [0, 1] -------------------------------------------------


def _fit(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the 0.5th and 99.5th percentiles (each source's own range)."""
    lo, hi = np.percentile(x, [0.5, 99.5])
    return np.clip((x - lo) / (hi - lo), 0, 1)


def _resize(plane: np.ndarray, size: int = SIZE) -> np.ndarray:
    from skimage.transform import resize

    return resize(plane, (size, size), anti_aliasing=True, preserve_range=True)


def sources() -> dict[str, np.ndarray]:
    from skimage import data

    out = {"retina (fundus)": _fit(_resize(data.retina()[..., 1].astype(float)))[None]}
    try:
        import pydicom
        from pydicom.data import get_testdata_file

        for label, name in (
            ("CR radiograph", "RG1_UNCR.dcm"),
            ("MR", "MR2_UNCR.dcm"),
            ("CT", "693_UNCR.dcm"),
        ):
            path = get_testdata_file(name)
            if path is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
                pixels = ds.pixel_array.astype(float)
            if str(ds.PhotometricInterpretation) == "MONOCHROME1":
                pixels = pixels.max() - pixels
            out[label] = _fit(_resize(pixels))[None]
    except ImportError:  # pragma: no cover - pydicom-data missing
        pass
    import nibabel as nib
    from nibabel.testing import data_path

    volume = np.asarray(nib.load(Path(data_path) / "example4d.nii.gz").dataobj, dtype=float)
    out["MR volume (NIfTI, 24 slices)"] = _fit(np.moveaxis(volume[..., 0], 2, 0))
    return out


# -- site shifts --------------------------------------------------------------------------


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return np.stack([ndimage.gaussian_filter(p, sigma) for p in x])


def _noise(x: np.ndarray, std: float, seed: int) -> np.ndarray:
    return x + np.random.default_rng(seed).normal(0, std, x.shape)


def _shrink(x: np.ndarray, scale: float = 0.75) -> np.ndarray:
    from skimage.transform import resize

    f, h, w = x.shape
    small = resize(x, (f, round(h * scale), round(w * scale)), anti_aliasing=True)
    out = np.zeros_like(x)
    top, left = (h - small.shape[1]) // 2, (w - small.shape[2]) // 2
    out[:, top : top + small.shape[1], left : left + small.shape[2]] = small
    return out


def _framed(t: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    truth = _shrink(t, scale)
    inside = _shrink(np.ones_like(t), scale) > 0.5
    return truth, _noise(_blur(0.7 * truth + 0.06 * inside, 1.0), 0.01, 3)


SHIFTS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    # name: truth -> (truth in site B's geometry, site B)
    "gain/offset": lambda t: (t, 0.7 * t + 0.06),
    "gamma": lambda t: (t, t**1.5),
    "blur": lambda t: (t, _blur(t, 1.5)),
    "noise": lambda t: (t, _noise(t, 0.03, 1)),
    "combined": lambda t: (t, _noise(_blur(0.7 * t**1.25 + 0.06, 1.0), 0.02, 2)),
    "field of view 0.8": lambda t: _framed(t, 0.8),
    "field of view 0.65": lambda t: _framed(t, 0.65),
}


# -- methods: (site B, reference = site A truth) -> harmonized ---------------------------


def _svdharm(b: np.ndarray, ref: np.ndarray, masked: bool) -> np.ndarray:
    """svdharm's transforms on a volume ``(f, h, w)`` (slices along the last axis of
    ``(1, h, w, f)``): statistics pooled over slices, a reference fitted on the truth."""
    mask = "auto" if masked else None
    as_volume = np.moveaxis(b, 0, -1)[None]
    reference = fit_reference([np.moveaxis(ref, 0, -1)[None]], fractions=FRACTIONS, mask=mask)
    out = SVDHarmonize(reference, mask=mask)(as_volume)
    return np.moveaxis(out[0], -1, 0)


def _nyul(b: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Nyul-Udupa standardization (TorchIO) with landmarks from the truth, mapped back from
    TorchIO's standard scale to the truth's intensities through the truth's own mapping."""
    import nyul

    standard = nyul.standardizer(nyul.train([np.moveaxis(ref, 0, -1)]))
    mine = nyul.apply(standard, np.moveaxis(b, 0, -1))
    truth = nyul.apply(standard, np.moveaxis(ref, 0, -1))
    order = np.argsort(truth.ravel(), kind="stable")
    back = np.interp(mine, truth.ravel()[order], np.moveaxis(ref, 0, -1).ravel()[order])
    return np.clip(np.moveaxis(back, -1, 0), 0, 1)


def _zscore(b: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.clip((b - b.mean()) / b.std() * ref.std() + ref.mean(), 0, 1)


def _histogram(b: np.ndarray, ref: np.ndarray) -> np.ndarray:
    from skimage.exposure import match_histograms

    return np.clip(match_histograms(b, ref), 0, 1)


METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "none": lambda b, ref: np.clip(b, 0, 1),
    "global z-score": _zscore,
    "histogram matching": _histogram,
    "nyul (TorchIO)": _nyul,
    "svdharm": lambda b, ref: _svdharm(np.clip(b, 0, 1), ref, masked=False),
    "svdharm --mask auto": lambda b, ref: _svdharm(np.clip(b, 0, 1), ref, masked=True),
}


# -- metrics ------------------------------------------------------------------------------


def foreground_psnr_ssim(out: np.ndarray, truth: np.ndarray, fg: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import structural_similarity

    mse = float(np.mean((out[fg] - truth[fg]) ** 2))
    psnr = min(PSNR_CAP, 10 * np.log10(1.0 / mse)) if mse > 0 else PSNR_CAP
    ssim = []
    for f in range(out.shape[0]):
        if fg[f].any():
            _, full = structural_similarity(out[f], truth[f], data_range=1.0, full=True)
            ssim.append(float(full[fg[f]].mean()))
    return float(psnr), float(np.mean(ssim))


def _db(value: float) -> str:
    return "exact" if value >= PSNR_CAP else f"{value:.1f}"


def main() -> None:
    start = time.perf_counter()
    data = sources()
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}
    samples: dict[str, list] = {m: [] for m in METHODS}
    truths: list = []
    rng = np.random.default_rng(0)
    for name, truth_a in data.items():
        for shift, make in SHIFTS.items():
            truth_b, site_b = make(truth_a)
            fg = auto_mask(truth_b[:, None])
            truths.append(
                sample_from_arrays(0, name, "normalized", truth_b[:, None], None, FRACTIONS, rng)
            )
            for method, run in METHODS.items():
                out = run(site_b, truth_a)
                psnr, ssim = foreground_psnr_ssim(out, truth_b, fg)
                cell = rows.setdefault(shift, {}).setdefault(method, {"psnr": [], "ssim": []})
                cell["psnr"].append(psnr)
                cell["ssim"].append(ssim)
                samples[method].append(
                    sample_from_arrays(1, name, "normalized", out[:, None], None, FRACTIONS, rng)
                )
            print(f"  {name}: {shift} done", flush=True)
    sep = {m: separability(truths + s, 2, 5, 0)["accuracy"] for m, s in samples.items()}
    table = {
        shift: {m: {k: float(np.mean(v)) for k, v in cell.items()} for m, cell in methods.items()}
        for shift, methods in rows.items()
    }
    methods = list(METHODS)
    print(f"\nforeground PSNR (dB) / SSIM against the truth, mean over {len(data)} sources")
    print(f"{'shift':20}" + "".join(f"{m:>22}" for m in methods))
    for shift, cells in table.items():
        best = max(methods, key=lambda m: cells[m]["psnr"])
        line = "".join(
            f"{_db(cells[m]['psnr']):>12} / {cells[m]['ssim']:.3f}{'*' if m == best else ' '}"
            for m in methods
        )
        print(f"{shift:20}{line}")
    print("\nseparability (truth vs outputs, all sources and shifts; chance 0.5):")
    for m in methods:
        print(f"  {m:22} {sep[m]:.3f}")
    result = {
        "meta": {
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)),
            "sources": list(data),
            "seconds": round(time.perf_counter() - start, 1),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "fidelity": table,
        "per_source": {
            shift: {m: {k: v for k, v in cell.items()} for m, cell in methods_.items()}
            for shift, methods_ in rows.items()
        },
        "separability": sep,
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out / 'fidelity.json'}")


if __name__ == "__main__":
    main()
