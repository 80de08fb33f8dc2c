"""Train with svdharm in a TorchIO pipeline on MR volumes; replay a sample from its history.

    pip install 'svdharm[torchio]'
    python examples/torchio_pipeline.py --steps 20

The subjects are the MR volumes that ship with nibabel (``anatomical.nii`` and the two
volumes of ``example4d.nii.gz``), each with a rough brain label (a threshold). A reference
is fitted on the first subject; ``SVDHarmonize`` matches every volume to it (slices pooled
over the volume) and ``RandomSVDDeharmonize`` draws band coefficients per subject, which the
subject's history records: ``get_composed_history()`` replays the sample exactly. The
label maps are never touched. A tiny 3-D network learns the label for a few steps.
"""

from __future__ import annotations

import argparse
import os

import nibabel as nib
import numpy as np
import torch
import torchio as tio
from nibabel.testing import data_path
from torch import nn

from svdharm_cli.transforms import fit_reference
from svdharm_cli.transforms.torchio import RandomSVDDeharmonize, SVDHarmonize

SHAPE = (32, 32, 16)


def subjects() -> list[tio.Subject]:
    volumes = [nib.load(os.path.join(data_path, "anatomical.nii")).get_fdata()]
    four = nib.load(os.path.join(data_path, "example4d.nii.gz")).get_fdata()
    volumes += [four[..., t] for t in range(four.shape[-1])]
    out = []
    for volume in volumes:
        data = torch.from_numpy(volume[None].astype(np.float32))
        label = (data > data.mean()).to(torch.uint8)
        out.append(tio.Subject(mri=tio.ScalarImage(tensor=data), brain=tio.LabelMap(tensor=label)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    cohort = subjects()
    prepare = tio.Compose([tio.RescaleIntensity(out_min_max=(0, 1)), tio.CropOrPad(SHAPE)])
    reference = fit_reference([prepare(cohort[0]).mri.data])
    pipeline = tio.Compose(
        [prepare, SVDHarmonize(reference), RandomSVDDeharmonize(low=0.8, high=1.2)]
    )
    dataset = tio.SubjectsDataset(cohort, transform=pipeline)
    sample = dataset[1]
    replayed = sample.get_composed_history()(cohort[1])
    assert torch.equal(replayed.mri.data, sample.mri.data), "the history replays the sample"
    print("history:", ", ".join(type(t).__name__ for t in sample.get_composed_history()))
    loader = tio.SubjectsLoader(dataset, batch_size=2, shuffle=True, num_workers=args.workers)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 1, 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    step = 0
    while step < args.steps:
        for batch in loader:
            x, y = batch["mri"][tio.DATA], batch["brain"][tio.DATA].float()
            loss = nn.functional.binary_cross_entropy_with_logits(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step >= args.steps:
                break
    print(f"{step} steps, last loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
