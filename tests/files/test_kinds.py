"""Kinds (METHOD.md section 3d): how a file's kind is found, and what a reference does with it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pydicom
import pytest

from svdharm_cli.core.reference import Reference
from svdharm_cli.errors import ReferenceFileError
from svdharm_cli.files.kinds import KindRule, bids_suffix, modality_kind, rule_kind


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("sub-01_T1w.nii.gz", "T1w"),
        ("sub-01_ses-2_acq-fast_T2w.nii", "T2w"),
        ("sub-control01_task-rest_bold.nii.gz", "bold"),
        ("sub-01_FLAIR.NII.GZ", "FLAIR"),
        ("head_b.nii.gz", ""),  # no key-value entity: not a BIDS name
        ("T1w.nii.gz", ""),
        ("sub-01_T1w.json", ""),  # a sidecar is not an image
        ("sub-01_T1w.png", ""),
        ("sub-01__T1w.nii", ""),
        ("sub-01_T1 w.nii", ""),
    ],
)
def test_the_bids_suffix_is_the_last_entity_of_a_bids_name(name: str, suffix: str) -> None:
    assert bids_suffix(name) == suffix


def test_rules_parse_and_the_first_match_wins() -> None:
    rules = (KindRule.parse("T1w=*_T1w.nii.gz"), KindRule.parse("brain = mr/*"))
    assert rules[1] == KindRule("brain", "mr/*") and str(rules[0]) == "T1w=*_T1w.nii.gz"
    assert rule_kind(rules, "mr/sub-01_T1w.nii.gz") == "T1w"
    assert rule_kind(rules, "mr/x.nii") == "brain"
    assert rule_kind(rules, "ct/x.dcm") is None
    for bad in ("T1w", "=*.nii", "T1w=", "T 1=*.nii", "x" * 65 + "=*", "../a=*"):
        with pytest.raises(ValueError):
            KindRule.parse(bad)


def test_a_modality_is_a_kind_only_when_it_is_a_plain_code() -> None:
    ds = pydicom.Dataset()
    assert modality_kind(ds) == ""
    ds.Modality = "MR"
    assert modality_kind(ds) == "MR"
    with warnings.catch_warnings():  # pydicom warns of the invalid value, as it should
        warnings.simplefilter("ignore")
        ds.Modality = "M R\x00"
    assert modality_kind(ds) == ""


def _stats(value: float, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    return np.full((channels, 4), value), np.full((channels, 4), value / 10 + 0.01)


def test_a_reference_keeps_kinds_apart_and_only_then_writes_version_4() -> None:
    t1, t2 = _stats(0.3), _stats(0.6)
    kinded = Reference.fit([("raw", *t1, "T1w"), ("raw", *t2, "T2w")], (0.07, 0.2, 0.5))
    assert [(e.kind, e.images) for e in kinded.entries] == [("T1w", 1), ("T2w", 1)]
    data = kinded.to_dict()
    assert data["format_version"] == 4 and [e["kind"] for e in data["entries"]] == ["T1w", "T2w"]
    again = Reference.from_json(kinded.to_json())
    assert again.entries[1].key == ("T2w", "raw", 1)
    np.testing.assert_array_equal(again.entry("raw", 1, "T2w").mean, t2[0])  # type: ignore[union-attr]
    assert again.entry("raw", 1, "FLAIR") is None and again.entry("raw", 1) is None
    # Without kinds: the same file as before kinds existed, serving every kind.
    plain = Reference.fit([("raw", *t1), ("raw", *t2)], (0.07, 0.2, 0.5))
    text = plain.to_json()
    assert json.loads(text)["format_version"] == 2 and '"kind"' not in text
    assert json.loads(plain.without_paths().to_json())["format_version"] == 2
    assert plain.entry("raw", 1, "T1w") is plain.entry("raw", 1)
    with pytest.raises(ValueError, match="kind 'T 1'"):
        Reference.fit([("raw", *t1, "T 1")], (0.07, 0.2, 0.5))


def test_a_merge_merges_entries_of_one_key_only() -> None:
    a = Reference.fit(
        [("normalized", *_stats(0.2), "MR"), ("normalized", *_stats(0.4), "CR")], (0.07, 0.2, 0.5)
    )
    b = Reference.fit([("normalized", *_stats(0.6), "MR")], (0.07, 0.2, 0.5))
    merged = Reference.merge([a, b], ["a" * 64, "b" * 64])
    assert [(e.kind, e.images) for e in merged.entries] == [("CR", 1), ("MR", 2)]
    np.testing.assert_allclose(merged.entry("normalized", 1, "MR").mean, 0.4)  # type: ignore[union-attr]
    data = Reference.from_json(merged.to_json()).to_dict()
    assert data["format_version"] == 4
    assert data["merged"][0]["entries"][0] == {  # a's entries, in a's order
        "kind": "CR",
        "unit": "normalized",
        "channels": 1,
        "images": 1,
    }


def test_kinds_in_an_older_version_or_a_newer_file_are_refused_clearly() -> None:
    data = Reference.fit([("raw", *_stats(0.3), "T1w")], (0.07, 0.2, 0.5)).to_dict()
    data["format_version"] = 2
    with pytest.raises(ReferenceFileError, match="kind"):
        Reference.from_dict(data)
    data["format_version"] = 5
    with pytest.raises(
        ReferenceFileError, match=r"is 5; this svdharm reads versions \[1, 2, 3, 4\]"
    ):
        Reference.from_dict(data)
    data["format_version"] = 4
    data["entries"][0]["kind"] = "T1w\n"
    with pytest.raises(ReferenceFileError, match="entries\\[0\\].kind"):
        Reference.from_dict(data)
