"""What kind of image a file is (METHOD.md section 3d): the key, beside unit and channel
count, of the reference entry it is fitted into and harmonized with.

In order, the first that gives one:

1. the user's rules, ``--kind NAME=GLOB`` (:class:`KindRule`), matched against the path
   relative to the input folder as ``--include`` is; the first match wins;
2. the file: a DICOM file's Modality (``MR``, ``CT``, ``CR``, ``MG``, ...); a NIfTI file
   named the BIDS way (``sub-01_ses-1_T1w.nii.gz``: ``key-value`` entities, then a suffix)
   its suffix (``T1w``, ``T2w``, ``FLAIR``, ``bold``, ...);
3. else the empty kind: PNG, JPEG, TIFF, and NIfTI or DICOM files that say nothing.

A kind is a short name (letters, digits, ``.``, ``_``, ``-``; at most 64 characters): a
Modality that is not one (a damaged header) gives the empty kind, never header bytes in a
message or the log.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from svdharm_cli.core.reference import KIND_NAME

NAME = KIND_NAME
"""What a kind may be called."""
_ENTITY = re.compile(r"[A-Za-z0-9]+-[A-Za-z0-9]+")
_SUFFIX = re.compile(r"[A-Za-z0-9]+")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


class KindRule(NamedTuple):
    """``--kind NAME=GLOB``: files whose relative path matches ``pattern`` are ``name``."""

    name: str
    pattern: str

    @classmethod
    def parse(cls, text: str) -> KindRule:
        """``NAME=GLOB`` (spaces around either are dropped); a :class:`ValueError` says
        what is wrong."""
        name, sep, pattern = text.partition("=")
        name, pattern = name.strip(), pattern.strip()
        if not sep or not pattern:
            raise ValueError(f"{text!r}: expected NAME=GLOB, such as T1w='*_T1w.nii.gz'")
        if not NAME.fullmatch(name):
            raise ValueError(
                f"{name!r}: a kind is letters, digits, '.', '_' or '-' (at most 64), such as "
                "T1w or CT"
            )
        return cls(name, pattern)

    def __str__(self) -> str:
        return f"{self.name}={self.pattern}"


def rule_kind(rules: Sequence[KindRule], rel: str) -> str | None:
    """The kind the first matching rule gives the file at ``rel`` (POSIX, relative to its
    input folder), or None when no rule matches."""
    for rule in rules:
        if fnmatch.fnmatch(rel, rule.pattern):
            return rule.name
    return None


def bids_suffix(name: str) -> str:
    """The BIDS suffix of a NIfTI file name (``sub-01_T2w.nii.gz``: ``T2w``), or ``""``
    when the name is not a BIDS name (at least one ``key-value`` entity, then a suffix)."""
    lower = name.lower()
    stem = next((name[: -len(s)] for s in NIFTI_SUFFIXES if lower.endswith(s)), None)
    if stem is None:
        return ""
    *entities, suffix = stem.split("_")
    if entities and all(_ENTITY.fullmatch(e) for e in entities) and _SUFFIX.fullmatch(suffix):
        return suffix
    return ""


def modality_kind(ds: Any) -> str:
    """A DICOM dataset's Modality as a kind (``""`` when absent or not a plain code)."""
    value = getattr(ds, "Modality", None)
    text = str(value).strip() if value is not None else ""
    return text if NAME.fullmatch(text) else ""
