"""The MONAI and TorchIO adapters: their frameworks' conventions, kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.transforms import Compose, ScaleIntensityd
from monai.utils import set_determinism

from svdharm_cli.transforms import SVDDeharmonize, SVDHarmonize, fit_reference
from svdharm_cli.transforms import monai as sm
from svdharm_cli.transforms import torchio as st
from tests.images import textured
from tests.volumes import phantom


@pytest.fixture(scope="module")
def reference():  # type: ignore[no-untyped-def]
    return fit_reference([textured(40, 36, seed=k) * 0.6 + 0.2 for k in range(3)])


def _sample(seed: int) -> dict[str, object]:
    image = MetaTensor(
        torch.from_numpy(textured(40, 36, seed=seed)).float(),
        meta={"filename_or_obj": f"case{seed}.png"},
    )
    return {"img": image, "label": torch.from_numpy(textured(40, 36, seed=seed) > 0.5)}


def test_monai_array_transforms_keep_meta_type_and_dtype(reference) -> None:  # type: ignore[no-untyped-def]
    sample = _sample(1)
    img = sample["img"]
    out = sm.SVDHarmonize(reference)(img)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    assert out.meta["filename_or_obj"] == "case1.png"
    assert np.abs(out.numpy() - SVDHarmonize(reference)(img.numpy())).max() < 1e-6
    rand = sm.RandSVDDeharmonize(prob=1.0)
    rand.set_random_state(4)
    augmented = rand(img)
    assert isinstance(augmented, MetaTensor) and rand.coefficients is not None
    replay = SVDDeharmonize(rand.coefficients)(img.numpy())
    assert np.abs(augmented.numpy() - replay).max() < 1e-6
    assert sm.RandSVDDeharmonize.backend == sm.SVDHarmonize.backend
    numpy_in = sm.SVDHarmonize(reference)(img.numpy())
    assert isinstance(numpy_in, np.ndarray)


def test_monai_one_draw_shared_by_the_keys_of_a_sample(reference) -> None:  # type: ignore[no-untyped-def]
    sample = _sample(2)
    sample["twin"] = sample["img"].clone()
    for t in (
        sm.RandSVDDeharmonized(["img", "twin"], prob=1.0),
        sm.RandSVDHarmonizeDeharmonized(["img", "twin"], reference, prob=1.0),
    ):
        t.set_random_state(7)
        out = t(sample)
        assert torch.equal(out["img"].as_tensor(), out["twin"].as_tensor())
        assert torch.equal(out["label"], sample["label"])  # not a key: untouched
        assert not torch.equal(out["img"].as_tensor(), sample["img"].as_tensor())
    masked = sm.SVDHarmonized(["img"], reference, mask_key="label")(sample)
    outside = ~sample["label"][0]
    assert torch.equal(masked["img"][0][outside], sample["img"][0][outside])


def test_cache_dataset_caches_only_the_harmonization(reference) -> None:  # type: ignore[no-untyped-def]
    data = [_sample(k) for k in range(4)]
    pipeline = Compose(
        [
            ScaleIntensityd(keys="img"),
            sm.SVDHarmonized(keys="img", reference=reference),
            sm.RandSVDDeharmonized(keys="img", prob=1.0),
        ]
    )
    dataset = CacheDataset(data, pipeline, cache_rate=1.0, num_workers=0, progress=False)
    for k, cached in enumerate(dataset._cache):
        scaled = ScaleIntensityd(keys="img")(data[k])["img"]
        expected = SVDHarmonize(reference)(scaled.numpy())
        assert np.abs(np.asarray(cached["img"]) - expected).max() < 1e-6
    first, second = dataset[0]["img"], dataset[0]["img"]
    assert not torch.equal(first.as_tensor(), second.as_tensor())  # drawn online


def _batches(workers: int) -> list[torch.Tensor]:
    set_determinism(seed=0)
    data = [_sample(k) for k in range(6)]
    pipeline = sm.RandSVDDeharmonized(keys="img", prob=0.8)
    loader = DataLoader(
        CacheDataset(data, pipeline, progress=False), batch_size=2, num_workers=workers
    )
    return [batch["img"].as_tensor() for batch in loader]


@pytest.mark.slow
def test_monai_runs_reproduce_with_set_determinism_and_workers() -> None:
    first, second = _batches(2), _batches(2)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    flat = torch.cat(first)
    assert len({tuple(flat[i].flatten()[:40].tolist()) for i in range(6)}) == 6
    set_determinism(seed=None)


def _subject(volume: bool) -> tio.Subject:
    if volume:
        data = torch.from_numpy(np.moveaxis(phantom(6, 32, 28), 0, -1)[None]).float()
    else:
        data = torch.from_numpy(textured(40, 36, seed=3)[..., None]).float()  # (C, W, H, 1)
    return tio.Subject(
        img=tio.ScalarImage(tensor=data),
        seg=tio.LabelMap(tensor=(data > 0.5).to(torch.uint8)),
    )


@pytest.mark.parametrize("volume", [False, True])
def test_torchio_history_replays_and_labels_stay(reference, volume: bool) -> None:  # type: ignore[no-untyped-def]
    ref = (
        reference
        if not volume
        else fit_reference([np.moveaxis(phantom(6, 32, 28, seed=9), 0, -1)[None]])
    )
    subject = _subject(volume)
    torch.manual_seed(1)
    for transform in (
        st.RandomSVDDeharmonize(),
        st.RandomSVDHarmonizeDeharmonize(ref),
        st.RandomSVDDeharmonize(masking_method="seg"),
    ):
        out = transform(subject)
        assert out.img.data.dtype == torch.float32 and out.img.data.shape == subject.img.data.shape
        assert torch.equal(out.seg.data, subject.seg.data)
        assert not torch.equal(out.img.data, subject.img.data)
        twin = out.history[-1]
        assert type(twin).__name__ in ("SVDDeharmonize", "SVDHarmonize")
        replay = out.get_composed_history()(subject)
        assert torch.equal(replay.img.data, out.img.data)
    masked = st.RandomSVDDeharmonize(masking_method="seg")(subject)
    outside = subject.seg.data == 0
    assert torch.equal(masked.img.data[outside], subject.img.data[outside])


def test_torchio_draws_follow_torch_seed() -> None:
    subject = _subject(False)
    torch.manual_seed(5)
    a = st.RandomSVDDeharmonize()(subject)
    torch.manual_seed(5)
    b = st.RandomSVDDeharmonize()(subject)
    assert torch.equal(a.img.data, b.img.data)
    assert a.history[-1].coefficients == b.history[-1].coefficients
