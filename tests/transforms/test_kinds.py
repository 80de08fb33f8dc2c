"""The transforms pick the reference entry of the input's kind (METHOD.md section 3d)."""

from __future__ import annotations

import numpy as np
import pytest

from svdharm_cli.transforms import (
    RandSVDHarmonizeDeharmonize,
    SVDHarmonize,
    fit_reference,
)
from tests.images import textured


def _pair() -> tuple[np.ndarray, np.ndarray]:
    t1 = textured(40, 36, seed=1) * 0.5 + 0.1  # (c, h, w)
    t2 = textured(40, 36, seed=2) * 0.3 + 0.6
    return t1, t2


def _reference() -> object:
    t1, t2 = _pair()
    one = fit_reference([t1], kind="T1w")
    two = fit_reference([t2], kind="T2w")
    from svdharm_cli.core.reference import Reference

    return Reference.merge([one, two], ["1" * 64, "2" * 64])


def test_each_kind_comes_back_from_its_own_entry() -> None:
    t1, t2 = _pair()
    reference = _reference()
    for image, kind in ((t1, "T1w"), (t2, "T2w")):
        np.testing.assert_allclose(SVDHarmonize(reference, kind=kind)(image), image, atol=1e-6)
    moved = SVDHarmonize(reference, kind="T2w")(t1)  # a T1w harmonized as a T2w
    assert np.abs(moved - t1).max() > 0.1
    with pytest.raises(ValueError, match="of no kind.*entries only for T1w"):
        SVDHarmonize(reference)(t1)
    with pytest.raises(ValueError, match="the input is FLAIR"):
        SVDHarmonize(reference, kind="FLAIR")(t1)
    draw = RandSVDHarmonizeDeharmonize(reference, 1.0, 1.0, kind="T1w", seed=0)
    np.testing.assert_allclose(draw(t1), t1, atol=1e-6)
    assert draw.replay().kind == "T1w"
    # A reference without kinds serves every kind.
    plain = fit_reference([t1])
    np.testing.assert_allclose(SVDHarmonize(plain, kind="T1w")(t1), t1, atol=1e-6)


def test_monai_takes_a_kind_per_key() -> None:
    pytest.importorskip("monai")
    from svdharm_cli.transforms.monai import RandSVDHarmonizeDeharmonized, SVDHarmonized

    t1, t2 = _pair()
    reference = _reference()
    sample = {"t1": t1.astype(np.float32), "t2": t2.astype(np.float32), "label": 3}
    kinds = {"t1": "T1w", "t2": "T2w"}
    out = SVDHarmonized(["t1", "t2"], reference, kind=kinds)(sample)
    for key in ("t1", "t2"):
        np.testing.assert_allclose(np.asarray(out[key]), sample[key], atol=1e-5)
    assert out["label"] == 3
    swapped = SVDHarmonized(["t1", "t2"], reference, kind={"t1": "T2w", "t2": "T1w"})(sample)
    assert np.abs(np.asarray(swapped["t1"]) - sample["t1"]).max() > 0.1
    drawn = RandSVDHarmonizeDeharmonized(["t1", "t2"], reference, 1.0, 1.0, kind=kinds)
    drawn.set_random_state(0)
    out = drawn(sample)
    for key in ("t1", "t2"):
        np.testing.assert_allclose(np.asarray(out[key]), sample[key], atol=1e-5)


def test_torchio_takes_a_kind_per_image_name() -> None:
    tio = pytest.importorskip("torchio")
    import torch

    from svdharm_cli.transforms.torchio import RandomSVDHarmonizeDeharmonize
    from svdharm_cli.transforms.torchio import SVDHarmonize as TioHarmonize

    t1, t2 = _pair()
    reference = _reference()
    subject = tio.Subject(
        t1=tio.ScalarImage(tensor=torch.from_numpy(t1[..., None].astype(np.float32))),
        t2=tio.ScalarImage(tensor=torch.from_numpy(t2[..., None].astype(np.float32))),
    )
    kinds = {"t1": "T1w", "t2": "T2w"}
    out = TioHarmonize(reference, kind=kinds)(subject)
    for name, image in (("t1", t1), ("t2", t2)):
        np.testing.assert_allclose(out[name].data.numpy()[..., 0], image, atol=1e-5)
    drawn = RandomSVDHarmonizeDeharmonize(reference, 1.0, 1.0, kind=kinds)(subject)
    np.testing.assert_allclose(drawn["t1"].data.numpy()[..., 0], t1, atol=1e-5)
    replayed = drawn.history[-1]
    assert replayed.kind == kinds  # the history records the kinds, and replays
    np.testing.assert_allclose(replayed(subject)["t2"].data.numpy()[..., 0], t2, atol=1e-5)
