"""Train with svdharm in a MONAI pipeline: harmonization cached, de-harmonization online.

    pip install 'svdharm[monai]'
    python examples/monai_pipeline.py --steps 200

The samples are dictionaries (``img``, ``label``) of scikit-learn's digits resized to
28 x 28. ``CacheDataset`` runs the deterministic head of the pipeline once
(``ScaleIntensityd``, then ``SVDDecomposed``: each image's decomposition, kept as data) and
caches it; ``RandSVDHarmonizeDeharmonized`` (the paper's best method, to a reference fitted
on the training images) is random, so it runs on every access, in the DataLoader's workers,
seeded by ``set_determinism`` as MONAI seeds its own transforms, and from the cached
decomposition it costs one weighted sum per sample, not a decomposition.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose, ScaleIntensityd
from monai.utils import set_determinism
from scipy import ndimage
from sklearn.datasets import load_digits
from torch import nn

from svdharm_cli.transforms import fit_reference
from svdharm_cli.transforms.monai import RandSVDHarmonizeDeharmonized, SVDDecomposed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    set_determinism(seed=0)
    data = load_digits()
    images = np.stack([np.clip(ndimage.zoom(im / 16.0, 3.5, order=1), 0, 1) for im in data.images])
    samples = [
        {"img": images[i][None].astype(np.float32), "label": int(data.target[i])}
        for i in range(0, len(images), 2)
    ]
    reference = fit_reference([s["img"] for s in samples])
    pipeline = Compose(
        [
            ScaleIntensityd(keys="img"),
            SVDDecomposed(keys="img", fractions=reference.fractions),
            RandSVDHarmonizeDeharmonized(keys="img", reference=reference, prob=0.9),
        ]
    )
    dataset = CacheDataset(samples, pipeline, cache_rate=1.0, progress=False)
    loader = DataLoader(
        dataset,
        batch_size=32,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 14 * 14, 10),
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    step = 0
    while step < args.steps:
        for batch in loader:
            loss = nn.functional.cross_entropy(net(batch["img"].as_tensor()), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step >= args.steps:
                break
    print(f"{step} steps, last loss {loss.item():.3f}, {len(dataset)} samples cached")


if __name__ == "__main__":
    main()
