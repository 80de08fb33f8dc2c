"""The training-loop transforms: against the CLI's files, torch against NumPy, masks, draws,
seeds across DataLoader workers, MONAI caching and TorchIO history, errors, imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from svdharm_cli.core.backend import TORCH_ON_CPU, backend_of
from svdharm_cli.core.reference import Reference
from svdharm_cli.files.formats import read_image
from svdharm_cli.transforms import (
    RandSVDDeharmonize,
    RandSVDHarmonizeDeharmonize,
    SVDDeharmonize,
    SVDHarmonize,
    fit_reference,
)
from tests import oracle
from tests.conftest import only_log, svdharm
from tests.images import save, textured
from tests.volumes import phantom, write_nifti

LEVEL = 0.51
"""Half a stored level (the CLI's file is rounded), plus the float32 rounding of the
CLI's intermediate values (0.002 levels at 16 bits)."""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A gray and an RGB reference cohort, inputs of both, and the CLI's runs on them."""
    root = tmp_path_factory.mktemp("site")
    refs, inputs = root / "refs", root / "in"
    for k in range(3):
        save(refs / f"g{k}.png", textured(64, 56, seed=20 + k) * 0.6 + 0.2)
        save(refs / f"c{k}.png", textured(48, 40, seed=30 + k, channels=3) * 0.7 + 0.1)
    save(inputs / "gray.png", textured(72, 60, seed=1), bits=16)
    save(inputs / "rgb.png", textured(50, 66, seed=2, channels=3))
    vol = (phantom(8, 40, 36, seed=5) * 900 + 50).astype(np.float32)
    write_nifti(inputs / "head.nii.gz", vol)
    write_nifti(
        refs / "head_ref.nii.gz", (phantom(6, 40, 36, seed=6) * 700 + 80).astype(np.float32)
    )
    reference = root / "reference.json"
    for args in (
        ("fit-reference", refs, "-o", reference),
        ("harmonize", inputs, root / "harmonized", "--reference", reference),
        ("augment", inputs, root / "augmented", "--seed", "7"),
        ("augment", inputs, root / "both", "--seed", "7", "--reference", reference),
    ):
        result = svdharm(*args, "--workers", "1")
        assert result.code == 0, result.stderr
    return {"root": root, "refs": refs, "in": inputs, "reference": reference}


def _read(path: Path) -> np.ndarray:
    return read_image(path).frames[0]


def _coefficients(folder: Path, name: str) -> list[list[float | None]]:
    for record in only_log(folder)["files"]:
        if record["path"] == name:
            return record["outputs"][0]["coefficients"]
    raise AssertionError(name)


def _nifti(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata(), dtype=np.float64)[None]


@pytest.mark.parametrize("name", ["gray.png", "rgb.png"])
def test_harmonize_equals_the_cli_within_its_quantization(site: dict, name: str) -> None:
    x = _read(site["in"] / name)
    top = 65535 if name == "gray.png" else 255
    mine = SVDHarmonize(site["reference"])(x)
    cli = _read(site["root"] / "harmonized" / name)
    assert mine.shape == x.shape and mine.dtype == x.dtype
    assert np.abs(mine - cli).max() * top <= LEVEL


@pytest.mark.parametrize("name", ["gray.png", "rgb.png"])
def test_replayed_draws_equal_the_cli(site: dict, name: str) -> None:
    x = _read(site["in"] / name)
    top = 65535 if name == "gray.png" else 255
    coefficients = _coefficients(site["root"] / "augmented", name)
    cli = _read(site["root"] / "augmented" / name.replace(".png", "_aug0.png"))
    assert np.abs(SVDDeharmonize(coefficients)(x) - cli).max() * top <= LEVEL
    both = _coefficients(site["root"] / "both", name)
    rows = [[1.0, *row[1:]] for row in both]  # the log's base coefficient is null (matched)
    cli = _read(site["root"] / "both" / name.replace(".png", "_aug0.png"))
    mine = SVDHarmonize(site["reference"], coefficients=rows)(x)
    assert np.abs(mine - cli).max() * top <= LEVEL


def test_a_volume_is_pooled_as_the_cli_pools_it(site: dict) -> None:
    vol = _nifti(site["in"] / "head.nii.gz")
    cli = _nifti(site["root"] / "harmonized" / "head.nii.gz")
    mine = SVDHarmonize(site["reference"], unit="raw")(vol)
    assert mine.shape == vol.shape
    scale = np.abs(vol).max()
    assert np.abs(mine - cli).max() / scale < 1e-6
    # Per slice the statistics differ, so a per-slice harmonization would not match.
    alone = np.stack(
        [SVDHarmonize(site["reference"], unit="raw")(vol[..., z]) for z in range(vol.shape[-1])],
        axis=-1,
    )
    assert np.abs(alone - cli).max() / scale > 1e-3


def test_fit_reference_equals_the_cli(site: dict) -> None:
    cli = Reference.read(site["reference"])
    images = [_read(p) for p in sorted(site["refs"].glob("*.png"))]
    fitted = fit_reference(images)
    volume = fit_reference([_nifti(site["refs"] / "head_ref.nii.gz")], unit="raw")
    for entry in (*fitted.entries, *volume.entries):
        theirs = cli.entry(entry.unit, entry.channels)
        assert theirs is not None and theirs.images == entry.images
        np.testing.assert_allclose(entry.mean, theirs.mean, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(entry.std, theirs.std, rtol=1e-12, atol=1e-15)
    again = Reference.from_json(fitted.to_json())
    assert again.entries[0].mean.tolist() == fitted.entries[0].mean.tolist()


@pytest.mark.parametrize("kernels", ["numpy", "torch"])
@pytest.mark.parametrize(
    "shape", [(1, 64, 64), (3, 120, 97), (1, 512, 512), (1, 1024, 1024), (1, 40, 36, 6)]
)
def test_torch_equals_numpy(
    shape: tuple[int, ...], kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU tensors are computed by NumPy on their memory (exactly NumPy's result); with
    SVDHARM_TORCH_ON_CPU=1 by the torch backend, the code a CUDA tensor runs."""
    if kernels == "torch":
        monkeypatch.setenv(TORCH_ON_CPU, "1")
    rng = np.random.default_rng(0)
    x = (
        textured(*shape[1:3], seed=3, channels=shape[0])
        if len(shape) == 3
        else np.moveaxis(phantom(shape[3], shape[1], shape[2]), 0, -1)[None]
    )
    reference = fit_reference([textured(*x.shape[1:3], seed=9, channels=shape[0]) * 0.8])
    coefficients = rng.uniform(0.8, 1.2, 4)
    for fn in (
        SVDHarmonize(reference),
        SVDDeharmonize(coefficients),
        SVDHarmonize(reference, coefficients=coefficients),
        SVDHarmonize(reference, mask="auto"),
    ):
        mine = fn(x)
        theirs = fn(torch.from_numpy(x))
        assert isinstance(theirs, torch.Tensor) and theirs.dtype == torch.float64
        if kernels == "numpy":
            assert np.array_equal(theirs.numpy(), mine)
        else:
            assert np.abs(theirs.numpy() - mine).max() < 1e-6
    single = fn(torch.from_numpy(x).float())
    assert single.dtype == torch.float32 and single.shape == x.shape
    assert backend_of(torch.zeros(1)).name == kernels


def test_the_transform_follows_the_oracle() -> None:
    x = textured(40, 52, seed=4)
    reference = fit_reference([textured(40, 52, seed=5) * 0.5 + 0.3])
    entry = reference.entries[0]
    expected = np.clip(oracle.harmonize_channel(x[0], entry.mean[0], entry.std[0]), 0, 1)
    np.testing.assert_allclose(SVDHarmonize(reference)(x)[0], expected, atol=1e-9)
    c = np.array([1.1, 0.9, 1.15, 0.85])
    expected = np.clip(oracle.deharmonize_channel(x[0], c), 0, 1)
    np.testing.assert_allclose(SVDDeharmonize(c)(x)[0], expected, atol=1e-9)


def test_masks_keep_what_lies_outside() -> None:
    x = textured(60, 60, seed=6) * 0.6 + 0.3
    x[:, :, :15] = 0.0  # an empty surround at the left
    reference = fit_reference([textured(60, 60, seed=7) * 0.5 + 0.2])
    mask = np.zeros((60, 60), dtype=bool)
    mask[:, 15:] = True
    given = SVDHarmonize(reference)(x, mask=mask)
    assert np.array_equal(given[:, ~mask], x[:, ~mask])
    assert not np.allclose(given[:, mask], x[:, mask])
    auto = SVDHarmonize(reference, mask="auto")(x)
    assert np.array_equal(auto[:, :, :15], x[:, :, :15])
    tensor = SVDHarmonize(reference)(torch.from_numpy(x), mask=torch.from_numpy(mask[None]))
    assert np.abs(tensor.numpy() - given).max() < 1e-9


def test_one_draw_per_call_shared_by_channels_and_slices() -> None:
    rgb = textured(40, 44, seed=8, channels=3)
    t = RandSVDDeharmonize(seed=3)
    out = t(rgb)
    c = t.last_coefficients
    assert c is not None and c.shape == (3, 4) and (c == c[0]).all()
    assert np.array_equal(out, t.replay()(rgb))
    per = RandSVDDeharmonize(seed=3, per_channel=True)
    per(rgb)
    assert (
        per.last_coefficients is not None
        and not (per.last_coefficients == per.last_coefficients[0]).all()
    )
    vol = np.moveaxis(phantom(5, 30, 28), 0, -1)[None]
    t(vol)
    row = t.last_coefficients
    assert row is not None
    whole = SVDDeharmonize(row)(vol)
    for z in range(5):  # every slice got the same coefficients
        np.testing.assert_allclose(whole[..., z], SVDDeharmonize(row)(vol[..., z]), atol=1e-12)
    draws = {tuple(t.randomize(1, 4)[0]) for _ in range(5)}  # type: ignore[index]
    assert len(draws) == 5


def test_seeds_reproduce_and_prob() -> None:
    x = textured(32, 32, seed=9)
    a, b = RandSVDDeharmonize(seed=11), RandSVDDeharmonize(seed=11)
    assert all(np.array_equal(a(x), b(x)) for _ in range(3))
    never = RandSVDDeharmonize(prob=0.0, seed=1)
    assert never(x) is x and never.last_coefficients is None
    reference = fit_reference([textured(32, 32, seed=10) * 0.5])
    harm = RandSVDHarmonizeDeharmonize(reference, prob=0.0, seed=1)
    np.testing.assert_allclose(harm(x), SVDHarmonize(reference)(x), atol=1e-12)


class _Samples(torch.utils.data.Dataset):
    def __init__(self, transform: RandSVDDeharmonize) -> None:
        self.transform = transform
        self.x = torch.from_numpy(textured(24, 24, seed=12)).float()

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.x)


def _epochs(workers: int, seed: int) -> list[torch.Tensor]:
    loader = torch.utils.data.DataLoader(
        _Samples(RandSVDDeharmonize(seed=5)),
        batch_size=2,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        multiprocessing_context="spawn" if workers else None,
    )
    return [torch.cat(list(loader)) for _ in range(2)]


@pytest.mark.slow
def test_dataloader_workers_draw_apart_and_reproduce() -> None:
    first, second = _epochs(2, 0), _epochs(2, 0)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    epoch = first[0]
    assert len({tuple(epoch[i].flatten()[:50].tolist()) for i in range(8)}) == 8  # no repeats
    assert not torch.equal(first[0], first[1])  # epochs differ


def test_clear_errors(site: dict) -> None:
    gray_only = fit_reference([textured(30, 30, seed=1)])
    with pytest.raises(ValueError, match=r"RGB \(3 channels\) in normalized units.*only for gray"):
        SVDHarmonize(gray_only)(textured(30, 30, channels=3))
    with pytest.raises(ValueError, match="in HU units.*only for gray"):
        SVDHarmonize(gray_only, unit="HU")(textured(30, 30) * 1000)
    with pytest.raises(ValueError, match=r"span \[0, 1000\].*'normalized' means \[0, 1\]"):
        SVDHarmonize(gray_only)(np.linspace(0, 1000, 900).reshape(1, 30, 30))
    with pytest.raises(ValueError, match="unit must be one of"):
        SVDHarmonize(gray_only, unit="hu")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        RandSVDDeharmonize(fractions=(0.1, 1.5))
    with pytest.raises(ValueError, match="do not fit 3 cuts"):
        SVDDeharmonize([1.0, 1.0])
    with pytest.raises(ValueError, match="channel-first"):
        SVDDeharmonize([1.0] * 4)(np.zeros((30, 30)))
    with pytest.raises(ValueError, match="does not fit an input"):
        SVDHarmonize(gray_only)(textured(30, 30), mask=np.ones((20, 20), bool))
    with pytest.raises(ValueError, match="NaN"):
        SVDDeharmonize([1.0] * 4)(np.full((1, 8, 8), np.nan))
    with pytest.raises(Exception, match="not valid JSON"):
        bad = site["root"] / "bad.json"
        bad.write_text("{")
        SVDHarmonize(bad)


def test_integer_inputs_are_rounded_and_saturated() -> None:
    hu = np.rint(textured(40, 40, seed=2) * 2000 - 1000).astype(np.int16)
    reference = fit_reference([hu.astype(float) * 1.3 + 100], unit="HU")
    out = SVDHarmonize(reference, unit="HU")(hu)
    assert out.dtype == np.int16
    exact = SVDHarmonize(reference, unit="HU")(hu.astype(np.float64))
    assert np.abs(out - exact).max() <= 0.5 + 1e-9


def test_no_torch_import_on_the_cli_path(tmp_path: Path) -> None:
    save(tmp_path / "in" / "a.png", textured(30, 30, seed=1))
    code = (
        "import sys, runpy\n"
        "import svdharm_cli, svdharm_cli.transforms, svdharm_cli.ui.app\n"
        f"sys.argv = ['svdharm', 'augment', {str(tmp_path / 'in')!r}, {str(tmp_path / 'out')!r},"
        " '--seed', '1', '--workers', '1', '-q']\n"
        "try:\n"
        "    runpy.run_module('svdharm_cli', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "frameworks = ('torch', 'monai', 'torchio')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in frameworks))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"')) == []
    assert (tmp_path / "out" / "a_aug0.png").is_file()
