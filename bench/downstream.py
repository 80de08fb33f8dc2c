"""Does a model trained with svdharm generalize to another site? The paper's Table 1
experiment, in miniature and reproducible (``make evaluate`` runs it).

Data: scikit-learn's handwritten digits (1,797 images of 8 x 8 from 43 writers, the UCI
set), resized to 28 x 28 (the paper's MNIST size) with ``scipy.ndimage.zoom`` (linear,
order 1) and scaled to [0, 1]: site A. The other sites are the same digits through
simulated acquisition changes:

- ``blur-noise``: Gaussian blur (sigma 1.2 pixels) and Gaussian noise (std 0.06);
- ``gamma-gain``: gamma 1.8, gain 0.6, offset 0.25 (a darker, flatter, lifted scanner);
- ``combined``: both of the above;
- ``framing``: the digit at 18 x 18 in the middle of a wider dark 28 x 28 surround.

Protocol (the paper's): for each seed, one stratified half of the digits trains, the other
half tests. Homology: train on site A, test on site A's held-out half. Heterology: train on
A, test on each other site's held-out half; and train on each other site, test on A's
held-out half. 4 seeds (0-3); mean and std over seeds.

Model: a small CNN (two 3 x 3 conv layers of 16 and 32 filters with ReLU and 2 x 2 max
pooling, then a linear layer) in PyTorch on the CPU, with the paper's SGD, learning rate
0.01, weight decay 1e-3, batch 32 and cross-entropy, plus momentum 0.9 (plain SGD at this
rate needs several times the epochs) for 12 epochs; one thread, deterministic algorithms,
seeded. For contrast, a linear classifier on the pixels (scikit-learn's ``RidgeClassifier``).

Methods (the training images and the test images go through the same method):

- ``baseline``: nothing;
- ``instance-norm``: each image's z-score;
- ``histogram-matching``: each image matched (``skimage.exposure.match_histograms``) to the
  pooled pixels of the training site's training images;
- ``nyul``: Nyul-Udupa histogram standardization, TorchIO's ``HistogramStandardization``
  trained on the training site's training images (``bench/nyul.py``);
- ``svd-harmonization``: every image harmonized (``svdharm_cli.transforms.SVDHarmonize``)
  to a reference fitted (``fit_reference``) on the training site's training images;
- ``svd-harmonization-standardized``: the pipeline a user would build, svd-harmonization
  followed by each image's z-score (what MONAI's ``NormalizeIntensity`` does next);
- ``svd-deharmonization``: training images de-harmonized online in the DataLoader
  (``RandSVDDeharmonize``, a new draw per sample and epoch), test images untouched;
- ``svd-harmonization-deharmonization``: training images through
  ``RandSVDHarmonizeDeharmonize`` online, test images harmonized.

For the linear classifier the random methods give three drawn copies of each training
image. Writes ``bench/results/downstream.json`` (``protocol``, ``results``, ``summary``).
Options rerun any part: ``--methods``, ``--shifts``, ``--seeds``, ``--epochs``, ``--quick``
(one seed, 3 epochs), ``--json PATH``, ``--jobs`` (processes; results do not depend on it),
``--fractions`` (the band cuts of every svdharm method; the paper's by default: ``svdharm
tune``'s choice is tried with it, see ``bench/downstream_tune.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SHIFTS = ("blur-noise", "gamma-gain", "combined", "framing")
METHODS = (
    "baseline",
    "instance-norm",
    "histogram-matching",
    "nyul",
    "svd-harmonization",
    "svd-harmonization-standardized",
    "svd-deharmonization",
    "svd-harmonization-deharmonization",
)
RANDOM = ("svd-deharmonization", "svd-harmonization-deharmonization")
MODELS = ("cnn", "ridge")
FRACTIONS = (0.07, 0.2, 0.5)
PAPER_TABLE_1 = {
    "MNIST homologous": {"baseline": 0.9899, "svd-harmonization-deharmonization": 0.9921},
    "USPS heterologous": {"baseline": 0.9214, "svd-harmonization-deharmonization": 0.9461},
}


# -- data ---------------------------------------------------------------------------------


def site_a() -> tuple[np.ndarray, np.ndarray]:
    """``(N, 28, 28)`` float64 in [0, 1] and the labels."""
    from scipy import ndimage
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([ndimage.zoom(im / 16.0, 3.5, order=1) for im in digits.images])
    return np.clip(images, 0.0, 1.0), digits.target


def shifted(images: np.ndarray, shift: str) -> np.ndarray:
    """Site ``shift``: every image through one simulated acquisition change (seeded)."""
    from scipy import ndimage

    rng = np.random.default_rng(len(shift))
    if shift == "framing":
        out = np.zeros_like(images)
        for k, im in enumerate(images):
            small = ndimage.zoom(im, 18 / 28, order=1)
            out[k, 5:23, 5:23] = small[:18, :18]
        return np.clip(out, 0.0, 1.0)
    out = images
    if shift in ("blur-noise", "combined"):
        out = np.stack([ndimage.gaussian_filter(im, 1.2) for im in out])
        out = out + 0.06 * rng.standard_normal(out.shape)
    if shift in ("gamma-gain", "combined"):
        out = 0.25 + 0.6 * np.clip(out, 0.0, 1.0) ** 1.8
    return np.clip(out, 0.0, 1.0)


def split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    return train_test_split(
        np.arange(len(labels)), test_size=0.5, stratify=labels, random_state=seed
    )


# -- methods ------------------------------------------------------------------------------

Prepare = Callable[[np.ndarray], np.ndarray]


def prepare(
    method: str, train_images: np.ndarray, seed: int, fractions: Sequence[float] = FRACTIONS
) -> tuple[Any, Prepare]:
    """The method fitted on the training site's training images: ``(train, test)`` where
    ``train`` is a per-sample callable (random methods: a new draw per call) and ``test``
    maps a stack of images."""
    from svdharm_cli.transforms import (
        RandSVDDeharmonize,
        RandSVDHarmonizeDeharmonize,
        SVDHarmonize,
        fit_reference,
    )

    def each(fn: Callable[[np.ndarray], np.ndarray]) -> Prepare:
        return lambda stack: np.stack([fn(im) for im in stack])

    if method == "baseline":
        return (lambda im: im), (lambda stack: stack)
    if method == "instance-norm":

        def z(im: np.ndarray) -> np.ndarray:
            return (im - im.mean()) / (im.std() or 1.0)

        return z, each(z)
    if method == "histogram-matching":
        from skimage.exposure import match_histograms

        # The pooled pixels' distribution by 1,001 quantiles: the same target, matched in
        # milliseconds instead of re-sorting 700,000 template pixels for every image.
        pooled = np.quantile(train_images, np.linspace(0.0, 1.0, 1001)).reshape(1, -1)

        def matched(im: np.ndarray) -> np.ndarray:
            return match_histograms(im.reshape(1, -1), pooled).reshape(im.shape)

        return matched, each(matched)
    if method == "nyul":
        import nyul

        standard = nyul.standardizer(nyul.train(list(train_images)))

        def std(im: np.ndarray) -> np.ndarray:
            return nyul.apply(standard, im) / 100.0

        return std, each(std)
    reference = fit_reference([im[None] for im in train_images], fractions=fractions)
    harmonize = SVDHarmonize(reference)

    def harmonized(im: np.ndarray) -> np.ndarray:
        return harmonize(im[None])[0]

    if method == "svd-harmonization":
        return harmonized, each(harmonized)
    if method == "svd-harmonization-standardized":

        def standardized(im: np.ndarray) -> np.ndarray:
            h = harmonized(im)
            return (h - h.mean()) / (h.std() or 1.0)

        return standardized, each(standardized)
    if method == "svd-deharmonization":
        draw = RandSVDDeharmonize(seed=seed, fractions=fractions)
        return (lambda im: draw(im[None])[0]), (lambda stack: stack)
    if method == "svd-harmonization-deharmonization":
        both = RandSVDHarmonizeDeharmonize(reference, seed=seed)
        return (lambda im: both(im[None])[0]), each(harmonized)
    raise ValueError(f"unknown method {method!r}")


# -- models -------------------------------------------------------------------------------


def train_cnn(
    images: np.ndarray, labels: np.ndarray, per_sample: Any, random: bool, seed: int, epochs: int
) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Samples(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            x = per_sample(images[i]) if random else fixed[i]
            return torch.from_numpy(np.asarray(x, np.float32)[None]), int(labels[i])

    fixed = None if random else np.stack([per_sample(im) for im in images])
    loader = torch.utils.data.DataLoader(
        Samples(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net


def cnn_accuracy(net: Any, images: np.ndarray, labels: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        logits = net(torch.from_numpy(images[:, None].astype(np.float32)))
    return float((logits.argmax(1).numpy() == labels).mean())


def train_linear(images: np.ndarray, labels: np.ndarray, per_sample: Any, random: bool) -> Any:
    from sklearn.linear_model import RidgeClassifier

    copies = 3 if random else 1
    x = np.concatenate([np.stack([per_sample(im) for im in images]) for _ in range(copies)])
    y = np.concatenate([labels] * copies)
    model = RidgeClassifier(alpha=1.0)
    model.fit(x.reshape(len(x), -1), y)
    return model


# -- one job: one method, one seed --------------------------------------------------------


def run_job(
    method: str,
    seed: int,
    shifts: Sequence[str],
    epochs: int,
    fractions: Sequence[float] = FRACTIONS,
) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    from threadpoolctl import threadpool_limits

    images, labels = site_a()
    sites = {"A": images} | {s: shifted(images, s) for s in shifts}
    train_idx, test_idx = split(labels, seed)
    plans = [("A", ["A", *shifts])] + [(s, ["A"]) for s in shifts]
    rows = []
    with threadpool_limits(limits=1):
        for train_site, tests in plans:
            train_x, train_y = sites[train_site][train_idx], labels[train_idx]
            per_sample, test_prep = prepare(method, train_x, seed, fractions)
            random = method in RANDOM
            net = train_cnn(train_x, train_y, per_sample, random, seed, epochs)
            per_sample, _ = prepare(method, train_x, seed, fractions)  # the same draws again
            linear = train_linear(train_x, train_y, per_sample, random)
            for test_site in tests:
                test_x = test_prep(sites[test_site][test_idx])
                test_y = labels[test_idx]
                shift = train_site if test_site == "A" else test_site
                for model, accuracy in (
                    ("cnn", cnn_accuracy(net, test_x, test_y)),
                    (
                        "ridge",
                        float(linear.score(test_x.reshape(len(test_x), -1), test_y)),
                    ),
                ):
                    rows.append(
                        {
                            "method": method,
                            "model": model,
                            "train": train_site if train_site == "A" else "shifted",
                            "test": test_site if test_site == "A" else "shifted",
                            "shift": "none" if shift == "A" else shift,
                            "seed": seed,
                            "accuracy": accuracy,
                        }
                    )
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        key = (r["method"], r["model"], r["train"], r["test"], r["shift"])
        groups.setdefault(key, []).append(r["accuracy"])
    return [
        {
            "method": k[0],
            "model": k[1],
            "train": k[2],
            "test": k[3],
            "shift": k[4],
            "mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "n": len(v),
        }
        for k, v in groups.items()
    ]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--shifts", default=",".join(SHIFTS))
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="one seed, 3 epochs")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, default=HERE / "results" / "downstream.json")
    parser.add_argument(
        "--fractions",
        default=",".join(map(str, FRACTIONS)),
        help="band cuts of the svdharm methods (default: the paper's)",
    )
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    shifts = [s for s in args.shifts.split(",") if s]
    unknown = [m for m in methods if m not in METHODS] + [s for s in shifts if s not in SHIFTS]
    if unknown:
        parser.error(f"unknown method or shift: {', '.join(unknown)}")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    epochs = 3 if args.quick else args.epochs
    fractions = tuple(float(f) for f in args.fractions.split(",") if f.strip())
    start = time.perf_counter()
    jobs = [(m, s) for m in methods for s in seeds]
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_job, m, s, shifts, epochs, fractions) for m, s in jobs]
        rows = [row for f in futures for row in f.result()]
    result = {
        "protocol": {
            "data": "scikit-learn digits (UCI, 1,797 images of 8 x 8) resized to 28 x 28 "
            "(scipy.ndimage.zoom, order 1); other sites simulated",
            "shifts": shifts,
            "split": "stratified halves per seed (sklearn train_test_split)",
            "seeds": seeds,
            "epochs": epochs,
            "cnn": "2 conv (16, 32) + linear; SGD lr 0.01, momentum 0.9, weight decay 1e-3, "
            "batch 32, cross-entropy; 1 thread, deterministic",
            "ridge": "sklearn RidgeClassifier(alpha=1.0) on pixels",
            "methods": methods,
            "fractions": list(fractions),
            "paper_table_1": PAPER_TABLE_1,
            "seconds": round(time.perf_counter() - start, 1),
        },
        "results": rows,
        "summary": summarize(rows),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"written to {args.json} in {result['protocol']['seconds']} s")
    return result


def print_table(result: dict) -> None:
    """Mean accuracy (std) per method: homology, A to shifted sites, shifted sites to A."""
    summary = result["summary"]
    for model in MODELS:
        print(f"\n{model}: accuracy, mean (std over seeds); heterology averaged over shifts")
        print(f"{'method':36} {'A->A':>14} {'A->shifted':>14} {'shifted->A':>14}")
        for method in result["protocol"]["methods"]:
            cells = []
            for train, test in (("A", "A"), ("A", "shifted"), ("shifted", "A")):
                rows = [
                    s
                    for s in summary
                    if (s["method"], s["model"], s["train"], s["test"])
                    == (method, model, train, test)
                ]
                if not rows:
                    cells.append("-")
                    continue
                mean = np.mean([r["mean"] for r in rows])
                std = np.mean([r["std"] for r in rows])
                cells.append(f"{mean:.4f} ({std:.4f})")
            print(f"{method:36} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}")


if __name__ == "__main__":
    main()
