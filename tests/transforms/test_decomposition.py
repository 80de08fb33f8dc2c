"""A decomposition computed once and kept (METHOD.md section 7b): every transform gives from
it what it gives from the image, with the same draws, in the input's type."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

from svdharm_cli.core.backend import TORCH_ON_CPU
from svdharm_cli.core.decomposition import Decomposition
from svdharm_cli.transforms import (
    RandSVDDeharmonize,
    RandSVDHarmonizeDeharmonize,
    SVDDecompose,
    SVDDeharmonize,
    SVDHarmonize,
    fit_reference,
)
from tests import oracle
from tests.images import textured
from tests.volumes import phantom

COEFFICIENTS = np.array([1.15, 0.85, 1.1, 0.9])


def _image(kind: str, unit: str) -> np.ndarray:
    """float64 channel-first inputs in ``unit``; the gray and RGB ones are scikit-image's
    sample photographs (cropped to keep the test quick)."""
    if kind == "gray":
        x = skdata.camera()[100:196, 150:270][None] / 255.0
    elif kind == "rgb":
        x = np.moveaxis(skdata.astronaut()[:72, 200:290], -1, 0) / 255.0
    else:
        x = np.moveaxis(phantom(6, 40, 36), 0, -1)[None]
        x = (x - x.min()) / (x.max() - x.min())
    if unit == "HU":
        return x * 2400.0 - 1000.0
    if unit == "raw":
        return x * 900.0 + 40.0
    return x.astype(np.float64)


def _mask(x: np.ndarray) -> np.ndarray:
    """A foreground mask of the input's spatial shape: all but a border strip."""
    mask = np.ones(x.shape[1:], dtype=bool)
    mask[:6] = False
    mask[:, -5:] = False
    return mask


def _transforms(reference: object, unit: str, seed: int) -> dict[str, object]:
    return {
        "SVDHarmonize": SVDHarmonize(reference, unit=unit),
        "SVDHarmonize+coefficients": SVDHarmonize(reference, unit=unit, coefficients=COEFFICIENTS),
        "SVDDeharmonize": SVDDeharmonize(COEFFICIENTS, unit=unit),
        "RandSVDDeharmonize": RandSVDDeharmonize(unit=unit, seed=seed),
        "RandSVDHarmonizeDeharmonize": RandSVDHarmonizeDeharmonize(reference, unit=unit, seed=seed),
    }


@pytest.mark.parametrize("kind", ["gray", "rgb", "volume"])
@pytest.mark.parametrize("unit", ["normalized", "HU", "raw"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("library", ["numpy", "torch", "torch kernels"])
def test_cached_equals_uncached(
    kind: str, unit: str, masked: bool, library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All four transforms, from float64 storage (exact) and from float32 (1e-5 of the
    value range), with the same draws for the same seed."""
    if library == "torch kernels":
        monkeypatch.setenv(TORCH_ON_CPU, "1")
    x = _image(kind, unit)
    scale = float(np.ptp(x))
    reference = fit_reference([x * 0.7 + 0.2 * x.mean()], unit=unit)
    mask = _mask(x) if masked else None
    wrap = (lambda a: a) if library == "numpy" else torch.from_numpy
    host = (lambda a: a) if library == "numpy" else (lambda t: t.numpy())
    kept = {
        dtype: SVDDecompose(unit=unit, dtype=dtype)(wrap(x), mask=None if mask is None else mask)
        for dtype in ("float64", "float32")
    }
    assert all(isinstance(d, Decomposition) for d in kept.values())
    for name, fn in _transforms(reference, unit, seed=11).items():
        expected = fn(wrap(x), mask=mask)  # type: ignore[operator]
        drawn = getattr(fn, "last_coefficients", None)
        for dtype, d in kept.items():
            if drawn is not None:
                fn.set_random_state(11)  # type: ignore[attr-defined]
            got = fn(d)  # type: ignore[operator]
            assert type(got) is type(expected) and got.dtype == expected.dtype, name
            assert tuple(got.shape) == x.shape
            if drawn is not None:
                np.testing.assert_array_equal(fn.last_coefficients, drawn)  # type: ignore[attr-defined]
            worst = float(np.abs(host(got) - host(expected)).max()) / scale
            assert worst <= (1e-12 if dtype == "float64" else 1e-5), (name, dtype, worst)
            if mask is not None:
                kept_x = x.astype(dtype)  # the input as stored, exactly
                assert np.array_equal(host(got)[:, ~mask], kept_x[:, ~mask]), name


def test_the_kept_form_follows_the_oracle() -> None:
    """De-harmonization from a kept decomposition is the weighted sum of the oracle's
    full-SVD components."""
    x = skdata.camera()[200:264, 100:180][None] / 255.0
    d = SVDDecompose(dtype="float64")(x)
    expected = np.clip(oracle.deharmonize_channel(x[0], COEFFICIENTS), 0, 1)
    np.testing.assert_allclose(SVDDeharmonize(COEFFICIENTS)(d)[0], expected, atol=1e-9)
    d32 = SVDDecompose()(x)
    assert np.abs(SVDDeharmonize(COEFFICIENTS)(d32)[0] - expected).max() < 1e-5


def test_input_type_dtype_and_shape_come_back() -> None:
    x = textured(48, 40, seed=2)
    stored = np.round(x * 255).astype(np.uint8)
    reference = fit_reference([x * 0.8])
    out = SVDHarmonize(reference)(SVDDecompose()(stored / 255.0))
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    as_uint8 = SVDHarmonize(reference, unit="raw")
    raw_reference = fit_reference([stored.astype(float) * 0.8], unit="raw")
    as_uint8 = SVDHarmonize(raw_reference, unit="raw")
    got = as_uint8(SVDDecompose(unit="raw")(stored))
    assert got.dtype == np.uint8
    assert np.abs(got.astype(int) - as_uint8(stored).astype(int)).max() <= 1
    tensor = torch.from_numpy(x.astype(np.float32))
    got_t = RandSVDDeharmonize(seed=1)(SVDDecompose()(tensor))
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float32
    assert tuple(got_t.shape) == x.shape
    volume = np.moveaxis(phantom(5, 30, 28), 0, 1)[None]  # slices along the first axis
    volume = (volume - volume.min()) / np.ptp(volume)
    d = SVDDecompose(slice_axis=0, dtype="float64")(volume)
    assert d.shape == volume.shape and d.slice_axis == 1
    expected = SVDDeharmonize(COEFFICIENTS, slice_axis=0)(volume)
    np.testing.assert_allclose(SVDDeharmonize(COEFFICIENTS)(d), expected, atol=1e-12)


def test_undrawn_samples_come_back_as_they_were() -> None:
    x = textured(40, 40, seed=5).astype(np.float32)
    d = SVDDecompose()(x)
    t = RandSVDDeharmonize(prob=0.0, seed=0)
    np.testing.assert_array_equal(t(d), x)
    reference = fit_reference([x * 0.9])
    both = RandSVDHarmonizeDeharmonize(reference, prob=0.0, seed=0)
    np.testing.assert_allclose(both(d), SVDHarmonize(reference)(x), atol=1e-6)


def test_pickles_is_immutable_and_reports_its_size() -> None:
    x = textured(64, 64, seed=3, channels=3).astype(np.float32)
    d = SVDDecompose()(x, mask=_mask(x))
    assert d.nbytes == 4 * x.nbytes + 64 * 64  # four float32 components and the mask
    assert SVDDecompose(dtype="float64")(x).nbytes == 8 * x.nbytes
    again = pickle.loads(pickle.dumps(d))
    t = SVDDeharmonize(COEFFICIENTS)
    np.testing.assert_array_equal(t(again), t(d))
    assert copy.deepcopy(d) is d and copy.copy(d) is d
    with pytest.raises(ValueError, match="read-only"):
        d.components[0, 0, 0, 0] = 1.0
    assert "shape=(3, 64, 64)" in repr(d)


def test_clear_errors() -> None:
    x = textured(40, 40, seed=1)
    reference = fit_reference([x * 0.8])
    d = SVDDecompose()(x)
    with pytest.raises(ValueError, match=r"fractions \(0\.07, 0\.2, 0\.5\).*uses \(0\.1, 0\.3\)"):
        SVDDeharmonize([1, 1, 1], fractions=(0.1, 0.3))(d)
    with pytest.raises(ValueError, match="unit 'normalized'.*unit 'raw'"):
        RandSVDDeharmonize(unit="raw")(d)
    with pytest.raises(ValueError, match="give the mask to SVDDecompose"):
        SVDHarmonize(reference)(d, mask=np.ones((40, 40), bool))
    with pytest.raises(ValueError, match="give the mask to SVDDecompose"):
        RandSVDDeharmonize(mask="auto")(d)
    rgb = SVDDecompose()(textured(40, 40, seed=1, channels=3))
    with pytest.raises(ValueError, match=r"RGB \(3 channels\).*only for gray"):
        RandSVDHarmonizeDeharmonize(reference)(rgb)
    with pytest.raises(ValueError, match="dtype must be one of"):
        SVDDecompose(dtype="float16")
    with pytest.raises(TypeError, match="already a Decomposition"):
        SVDDecompose()(d)


def _monai_epochs(seed: int) -> tuple[list[torch.Tensor], object]:
    from monai.data import CacheDataset, DataLoader, MetaTensor
    from monai.transforms import Compose
    from monai.utils import set_determinism

    from svdharm_cli.transforms.monai import RandSVDDeharmonized, SVDDecomposed

    set_determinism(seed=seed)
    camera = skdata.camera() / 255.0
    items = [
        {
            "img": MetaTensor(
                torch.from_numpy(camera[None, 32 * i : 32 * i + 32, :48].astype(np.float32)),
                meta={"filename_or_obj": f"camera-{i}.png"},
            ),
            "label": i,
        }
        for i in range(8)
    ]
    pipeline = Compose([SVDDecomposed("img"), RandSVDDeharmonized("img", prob=0.9)])
    dataset = CacheDataset(items, pipeline, progress=False)
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    epochs = [torch.cat([batch["img"] for batch in loader]) for _ in range(2)]
    return epochs, next(iter(loader))["img"]


@pytest.mark.slow
def test_monai_cached_draws_differ_between_epochs_and_reproduce() -> None:
    from monai.data import MetaTensor

    first, batch = _monai_epochs(seed=5)
    again, _ = _monai_epochs(seed=5)
    other, _ = _monai_epochs(seed=6)
    assert not torch.allclose(first[0], first[1])  # a new draw every epoch
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.allclose(first[0], other[0])
    assert isinstance(batch, MetaTensor)
    assert list(batch.meta["filename_or_obj"]) == [f"camera-{i}.png" for i in range(4)]


def test_monai_from_the_cache_equals_from_the_image() -> None:
    from monai.data import MetaTensor
    from monai.transforms import Compose

    from svdharm_cli.transforms.monai import (
        RandSVDHarmonizeDeharmonized,
        SVDDecomposed,
        SVDHarmonized,
    )

    camera = skdata.camera()[None, 100:164, 100:180] / 255.0
    image = MetaTensor(torch.from_numpy(camera), meta={"filename_or_obj": "camera.png"})
    mask = np.zeros(camera.shape, dtype=np.uint8)
    mask[:, 4:60, 6:70] = 1
    reference = fit_reference([camera * 0.6 + 0.2])
    for cls in (SVDHarmonized, RandSVDHarmonizeDeharmonized):
        kw = {"keys": "img", "reference": reference, "mask_key": "seg"}
        plain, cached = cls(**kw), Compose([SVDDecomposed("img", mask_key="seg"), cls(**kw)])
        for t in (plain, cached.transforms[-1]):
            if hasattr(t, "set_random_state"):
                t.set_random_state(3)
        a = plain({"img": image, "seg": mask})["img"]
        b = cached({"img": image, "seg": mask})["img"]
        assert isinstance(b, MetaTensor) and b.meta["filename_or_obj"] == "camera.png"
        assert float((a - b).abs().max()) < 1e-5
    unmasked = SVDDecomposed("img")({"img": image, "seg": mask})
    with pytest.raises(ValueError, match="give mask_key to SVDDecomposed"):
        SVDHarmonized("img", reference, mask_key="seg")(unmasked)


def test_monai_persistent_dataset_reads_its_cache_back(tmp_path: Path) -> None:
    """PersistentDataset loads with weights_only: the decomposition must come back from
    the file, not be recomputed (MONAI warns of a corrupt cache and recomputes)."""
    import warnings

    from monai.data import MetaTensor, PersistentDataset
    from monai.transforms import Compose

    from svdharm_cli.transforms.monai import RandSVDDeharmonize as MonaiRandDeharmonize
    from svdharm_cli.transforms.monai import SVDDecomposed

    camera = skdata.camera()[None, :96, :80] / 255.0
    item = {"img": MetaTensor(torch.from_numpy(camera), meta={"filename_or_obj": "c.png"})}
    pipeline = Compose([SVDDecomposed("img", dtype="float64")])
    first = PersistentDataset([item], pipeline, cache_dir=tmp_path)[0]["img"]
    assert len(list(tmp_path.iterdir())) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Corrupt cache file detected" would raise
        again = PersistentDataset([item], pipeline, cache_dir=tmp_path)[0]["img"]
    assert isinstance(again, Decomposition) and again is not first
    draw = MonaiRandDeharmonize()
    draw.set_random_state(4)
    out = draw(again)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "c.png"
    draw.set_random_state(4)
    np.testing.assert_array_equal(out.numpy(), draw(first).numpy())


def test_torchio_from_the_subject_equals_from_the_image() -> None:
    import torchio as tio

    from svdharm_cli.transforms.torchio import (
        DECOMPOSITIONS,
        RandomSVDDeharmonize,
    )
    from svdharm_cli.transforms.torchio import (
        SVDDecompose as TioDecompose,
    )

    volume = np.moveaxis(phantom(6, 40, 36), 0, -1)[None].astype(np.float32)
    volume = (volume - volume.min()) / np.ptp(volume)
    subject = tio.Subject(t1=tio.ScalarImage(tensor=torch.from_numpy(volume)))
    decomposed = TioDecompose()(subject)
    assert DECOMPOSITIONS in decomposed and DECOMPOSITIONS not in subject
    torch.manual_seed(0)
    from_cache = RandomSVDDeharmonize()(decomposed)
    torch.manual_seed(0)
    from_image = RandomSVDDeharmonize()(subject)
    assert DECOMPOSITIONS not in from_cache and DECOMPOSITIONS in decomposed
    assert float((from_cache.t1.data - from_image.t1.data).abs().max()) < 1e-5
    replayed = from_cache.get_composed_history()(subject)
    assert float((replayed.t1.data - from_cache.t1.data).abs().max()) < 1e-5
    flipped = tio.Compose([tio.Flip(axes=(0,)), RandomSVDDeharmonize()])
    with pytest.raises(ValueError, match="changed after SVDDecompose"):
        flipped(decomposed)
