"""Train with svdharm in a plain PyTorch Dataset: harmonization + de-harmonization online.

    pip install 'svdharm[torch]'
    python examples/pytorch_dataset.py --steps 200

Site A is scikit-learn's handwritten digits (8 x 8, resized to 28 x 28); site B the same
digits through a simulated acquisition change (blur, gamma, gain). A reference is fitted on
site A's training images in memory; every training sample is harmonized to it with freshly
drawn band coefficients (the paper's best method), and site B's test images are harmonized
only. The DataLoader's workers draw apart and, with a seeded generator, reproducibly.

The dataset decomposes each image once, in ``__init__`` (``SVDDecompose``): an image's
components do not change between epochs, only the coefficients do, so ``__getitem__`` costs
one weighted sum instead of a decomposition (METHOD.md 7b). The decompositions are kept in
float32, four times the images' float32 size with the paper's cuts.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage
from sklearn.datasets import load_digits
from torch import nn

from svdharm_cli.transforms import (
    RandSVDHarmonizeDeharmonize,
    SVDDecompose,
    SVDHarmonize,
    fit_reference,
)


def digits(site: str) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 1, 28, 28)`` normalized images and labels of one site."""
    data = load_digits()
    images = np.stack([ndimage.zoom(im / 16.0, 3.5, order=1) for im in data.images])
    images = np.clip(images, 0.0, 1.0)
    if site == "B":
        images = np.stack([ndimage.gaussian_filter(im, 1.0) for im in images])
        images = np.clip(0.15 + 0.7 * images**0.6, 0.0, 1.0)
    return images[:, None].astype(np.float32), data.target


class Digits(torch.utils.data.Dataset):
    """Images decomposed once (here); a fresh draw of coefficients on every access."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: object) -> None:
        decompose = SVDDecompose(fractions=transform.reference.fractions)  # type: ignore[attr-defined]
        self.kept = [decompose(torch.from_numpy(x)) for x in images]
        self.labels, self.transform = labels, transform

    @property
    def nbytes(self) -> int:
        return sum(d.nbytes for d in self.kept)

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.transform(self.kept[i])  # type: ignore[operator]
        return image, int(self.labels[i])


def model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    a, labels = digits("A")
    b, _ = digits("B")
    train, test = np.arange(0, len(a), 2), np.arange(1, len(a), 2)
    reference = fit_reference(list(a[train]))
    augment = RandSVDHarmonizeDeharmonize(reference, low=0.8, high=1.2, seed=0)
    dataset = Digits(a[train], labels[train], augment)
    print(f"{len(dataset)} images decomposed once, {dataset.nbytes / 2**20:.1f} MiB kept")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=32,
        shuffle=True,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=args.workers > 0,
    )
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    step = 0
    while step < args.steps:
        for images, targets in loader:
            loss = nn.functional.cross_entropy(net(images), torch.as_tensor(targets))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step >= args.steps:
                break
    harmonize = SVDHarmonize(reference)
    with torch.no_grad():
        site_b = torch.stack([harmonize(torch.from_numpy(x)) for x in b[test]])
        accuracy = (net(site_b).argmax(1).numpy() == labels[test]).mean()
    print(f"{step} steps, last loss {loss.item():.3f}, site B accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
