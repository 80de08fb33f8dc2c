"""The reference: target statistics per kind, unit and channel count (METHOD.md sections 1,
3 and 3d).

A reference is fitted once, from one image or a cohort, and stored as JSON, never pickle.
A cohort may mix kinds of images: its images are grouped by (kind, unit, channel count) and
each group gives one *entry*, whose statistics are the plain average over the group's images (a
volume counts as one image, with its slices pooled)::

    {
      "format": "svdharm-reference",
      "format_version": 2,
      "tool_version": "0.2.0",
      "fractions": [0.07, 0.2, 0.5],
      "components": ["base", "band1", "band2", "band3"],
      "mask": "none",
      "entries": [
        {"unit": "normalized", "channels": 1, "images": 12,
         "mean": [[...4 numbers...]], "std": [[...4 numbers...]]},
        {"unit": "HU", "channels": 1, "images": 3, "mean": [[...]], "std": [[...]]}
      ],
      "sources": [{"path": "...", "sha256": "...", "shape": [h, w], "unit": "normalized",
                   "channels": 1}]
    }

``mean`` and ``std`` have one row per channel and are in the entry's unit: ``normalized``
(a reference fitted on 8-bit PNGs harmonizes 16-bit data and the other way round), ``HU``
(CT) or ``raw`` (NIfTI). The *kind* says what the images show (a DICOM Modality, a BIDS
suffix such as ``T1w``, a user's rule; :mod:`svdharm_cli.files.kinds`), ``""`` for images
that do not say. An input is harmonized with the entry of its own kind, unit and channel
count only; a reference without kinds (every entry's kind empty: fitted on files that say
nothing, or before kinds existed) is applied by unit and channel count to inputs of any
kind. Version-1 files (one set of statistics, normalized) are read as one entry.

A reference with kinds is written as format version 4, which adds ``"kind"`` to its entries
(and sources, and merged entries); older svdharm refuses it by its version. A reference
without kinds is written exactly as before (version 2, or 3 when shared).
:meth:`Reference.from_json` checks every field and names the one that is wrong.

Sharing between institutions
----------------------------
A reference holds statistics only, so sites can exchange it instead of images. Two things
serve that: sources without paths (``fit-reference --no-paths``: a source is then its
SHA-256, shape, unit and channel count, since hospital paths often carry names or record
numbers), and :meth:`Reference.merge`, exact because an entry is the plain average of its
images' statistics: the image-count-weighted average of the sites' entries is the entry a
fit on the union of their images gives. A merged reference records ``merged``: each merged
reference's SHA-256 and its entries' image counts, never a path. Such files are written as
format version 3 (path-less sources and ``merged`` are what version 2 readers would refuse);
every other reference stays version 2.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from svdharm_cli import __version__
from svdharm_cli.core.bands import validate_fractions
from svdharm_cli.core.masks import MaskMode
from svdharm_cli.errors import ReferenceFileError

FORMAT_NAME = "svdharm-reference"
FORMAT_VERSION = 2
SHARED_VERSION = 3
"""The version of references with path-less sources or a ``merged`` record."""
KIND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""What a kind may be called (:mod:`svdharm_cli.files.kinds` gives no other)."""
KINDS_VERSION = 4
"""The version of references with kinds (any of the other versions' contents besides)."""
READABLE_VERSIONS = (1, 2, 3, 4)
UNITS = ("normalized", "HU", "raw")
MASKS = tuple(mode.value for mode in MaskMode)
"""How a reference's statistics were masked (DICOM padding is always left out)."""


@dataclass(frozen=True)
class Source:
    """One image (or volume) a reference was fitted from; ``path`` is None when the
    reference was fitted with ``--no-paths`` or merged."""

    path: str | None
    sha256: str
    shape: tuple[int, ...]
    unit: str = "normalized"
    channels: int = 1
    kind: str = ""


@dataclass(frozen=True)
class Entry:
    """Target statistics for one (kind, unit, channel count): ``(channels, n_components)``
    each, float64, in ``unit``; ``images`` is how many images (or volumes) were averaged."""

    unit: str
    channels: int
    mean: np.ndarray
    std: np.ndarray
    images: int = 1
    kind: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.kind, self.unit, self.channels)

    @property
    def described(self) -> str:
        return describe_kind(self.unit, self.channels, self.kind)


def describe_kind(unit: str, channels: int, kind: str = "") -> str:
    """``"gray (1 channel) in normalized units"``, ``"T1w, gray (1 channel) in raw units"``:
    how messages name a kind of image."""
    colour = {1: "gray (1 channel)", 3: "RGB (3 channels)"}.get(channels, f"{channels} channels")
    return f"{kind + ', ' if kind else ''}{colour} in {unit} units"


def kind_names(kinds: Sequence[str]) -> str:
    """``MR, CT and no kind``: the kinds of a reference or a run, for messages."""
    names = [k or "no kind" for k in dict.fromkeys(kinds)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@dataclass(frozen=True)
class Merged:
    """One reference that went into a merge: its file's SHA-256 and, per entry, the unit,
    channel count, number of images and kind."""

    sha256: str
    entries: tuple[tuple[str, int, int, str], ...]
    """``(unit, channels, images, kind)`` of each entry."""


@dataclass(frozen=True)
class Reference:
    """Target statistics per (unit, channel count), for one set of band fractions."""

    fractions: tuple[float, ...]
    entries: tuple[Entry, ...]
    sources: tuple[Source, ...] = ()
    tool_version: str = __version__
    mask: str = "none"
    merged: tuple[Merged, ...] = ()

    def __repr__(self) -> str:
        entries = ", ".join(f"{e.described}: {e.images} image(s)" for e in self.entries)
        return f"Reference(fractions={list(self.fractions)}, mask={self.mask!r}, [{entries}])"

    def without_paths(self) -> Reference:
        """The same reference, its sources recorded by SHA-256, shape, unit and channels."""
        sources = tuple(replace(source, path=None) for source in self.sources)
        return replace(self, sources=sources)

    @classmethod
    def merge(cls, references: Sequence[Reference], digests: Sequence[str]) -> Reference:
        """One reference from several fitted on disjoint cohorts (``digests``: each file's
        SHA-256): every (kind, unit, channel count) entry is the image-count-weighted average
        of the entries of that key (different kinds stay apart), which is what fitting on the
        union of the cohorts gives (an entry is the plain average of its images'
        statistics). Sources are kept without paths; the result records each merged
        reference in ``merged``.

        Raises
        ------
        ValueError
            When the references' fractions or masks differ (the message names the values),
            or an entry to be weighted records no images.
        """
        if not references:
            raise ValueError("nothing to merge")
        first = references[0]
        for ref in references[1:]:
            if ref.fractions != first.fractions:
                raise ValueError(
                    f"fractions differ: {list(first.fractions)} and {list(ref.fractions)}"
                )
            if ref.mask != first.mask:
                raise ValueError(f"mask modes differ: {first.mask!r} and {ref.mask!r}")
        groups: dict[tuple[str, str, int], list[Entry]] = {}
        for ref in references:
            for e in ref.entries:
                groups.setdefault(e.key, []).append(e)
        entries = []
        for (kind, unit, channels), same in sorted(groups.items(), key=_entry_order):
            counts = np.array([e.images for e in same], dtype=np.float64)
            if len(same) > 1 and (counts <= 0).any():
                raise ValueError(
                    f"an entry for {describe_kind(unit, channels, kind)} records no image count, "
                    "so it cannot be weighted"
                )
            weights = counts / counts.sum() if counts.sum() > 0 else np.ones(1)
            mean = np.einsum("k,kcn->cn", weights, np.stack([e.mean for e in same]))
            std = np.einsum("k,kcn->cn", weights, np.stack([e.std for e in same]))
            entries.append(Entry(unit, channels, mean, std, int(counts.sum()), kind))
        sources = tuple(replace(s, path=None) for ref in references for s in ref.sources)
        merged = tuple(
            Merged(digest, tuple((e.unit, e.channels, e.images, e.kind) for e in ref.entries))
            for ref, digest in zip(references, digests)
        )
        return cls(first.fractions, tuple(entries), sources, mask=first.mask, merged=merged)

    @property
    def n_components(self) -> int:
        return len(self.fractions) + 1

    @property
    def has_kinds(self) -> bool:
        """Whether any entry has a kind (else it serves inputs of any kind)."""
        return any(e.kind for e in self.entries)

    def entry(self, unit: str, channels: int, kind: str = "") -> Entry | None:
        """The entry for images of ``kind``, ``unit`` and ``channels`` channels, if there is
        one. A reference without kinds answers for any kind by unit and channel count."""
        want = kind if self.has_kinds else ""
        for e in self.entries:
            if e.key == (want, unit, channels):
                return e
        return None

    def kinds(self) -> str:
        """The entries this reference holds, for messages: each kind of image and how many
        images it was fitted on."""
        return "; ".join(
            f"{e.described} ({e.images} image{'' if e.images == 1 else 's'})" for e in self.entries
        )

    @classmethod
    def fit(
        cls,
        stats: Sequence[tuple[Any, ...]],
        fractions: Sequence[float],
        sources: Sequence[Source] = (),
        mask: str = "none",
    ) -> Reference:
        """Average per-image ``(unit, mean, std)`` or ``(unit, mean, std, kind)`` statistics
        (``(channels, n_components)`` arrays) within each (kind, unit, channel count) group.

        Raises
        ------
        ValueError
            When there are no images, an image's arrays do not fit the fractions, or a kind
            is not a short name.
        """
        if not stats:
            raise ValueError("a reference needs at least one image")
        fr = validate_fractions(fractions)
        groups: dict[tuple[str, str, int], list[tuple[np.ndarray, np.ndarray]]] = {}
        for unit, mean, std, *kind in stats:
            if mean.shape != std.shape or mean.ndim != 2 or mean.shape[1] != len(fr) + 1:
                raise ValueError(f"statistics of shape {mean.shape} do not fit {len(fr)} cuts")
            key = (kind[0] if kind else "", unit, mean.shape[0])
            if not _is_kind(key[0]):
                raise ValueError(
                    f"kind {key[0]!r}: a kind is letters, digits, '.', '_' or '-' (at most 64)"
                )
            groups.setdefault(key, []).append((mean, std))
        entries = tuple(
            Entry(
                unit,
                channels,
                np.mean([m for m, _ in items], axis=0),
                np.mean([s for _, s in items], axis=0),
                len(items),
                kind,
            )
            for (kind, unit, channels), items in sorted(groups.items(), key=_entry_order)
        )
        return cls(fr, entries, tuple(sources), mask=mask)

    def to_dict(self) -> dict[str, Any]:
        n = self.n_components
        shared = bool(self.merged) or any(s.path is None for s in self.sources)
        kinds = self.has_kinds or any(s.kind for s in self.sources)
        version = KINDS_VERSION if kinds else SHARED_VERSION if shared else FORMAT_VERSION
        data: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": version,
            "tool_version": self.tool_version,
            "fractions": list(self.fractions),
            "components": ["base"] + [f"band{i}" for i in range(1, n)],
            "mask": self.mask,
            "entries": [
                {
                    **({"kind": e.kind} if kinds else {}),
                    "unit": e.unit,
                    "channels": e.channels,
                    "images": e.images,
                    "mean": e.mean.tolist(),
                    "std": e.std.tolist(),
                }
                for e in self.entries
            ],
            "sources": [
                {
                    **({} if s.path is None else {"path": s.path}),
                    "sha256": s.sha256,
                    "shape": list(s.shape),
                    "unit": s.unit,
                    "channels": s.channels,
                    **({"kind": s.kind} if kinds else {}),
                }
                for s in self.sources
            ],
        }
        if self.merged:
            data["merged"] = [
                {
                    "sha256": m.sha256,
                    "entries": [
                        {
                            **({"kind": rest[0]} if kinds and rest else {}),
                            "unit": unit,
                            "channels": channels,
                            "images": images,
                        }
                        for unit, channels, images, *rest in m.entries
                    ],
                }
                for m in self.merged
            ]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Reference:
        """A reference JSON file (what ``fit-reference`` writes), validated;
        :class:`ReferenceFileError` says what is wrong with it."""
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
            if len(raw) > MAX_FILE_BYTES:
                raise ReferenceFileError(
                    f"reference {path}: the file is larger than {MAX_FILE_BYTES // 2**20} MiB, "
                    "more than any reference holds (its sources list grows by about 200 bytes "
                    "an image); is it a reference?"
                )
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ReferenceFileError(f"reference {path}: cannot read: {exc}") from exc
        return cls.from_json(text, origin=str(path))

    @classmethod
    def from_json(cls, text: str, origin: str = "reference") -> Reference:
        """Parse and validate; :class:`ReferenceFileError` names the field that is wrong."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReferenceFileError(f"{origin}: not valid JSON ({exc})") from exc
        except RecursionError as exc:
            raise ReferenceFileError(
                f"{origin}: the JSON is nested more deeply than Python can read (a reference "
                f"nests {MAX_DEPTH} levels at most)"
            ) from exc
        depth = _depth(data)
        if depth > MAX_DEPTH:
            raise ReferenceFileError(
                f"{origin}: the JSON is nested more than {MAX_DEPTH} levels deep, deeper "
                "than any reference"
            )
        return cls.from_dict(data, origin)

    @classmethod
    def from_dict(cls, data: Any, origin: str = "reference") -> Reference:
        """Validate a parsed reference (:mod:`svdharm_cli.core.reference_checks`)."""
        from svdharm_cli.core.reference_checks import reference_from_dict

        return reference_from_dict(data, origin)


def _entry_order(item: tuple[tuple[str, str, int], Any]) -> tuple[str, int, int]:
    """Entries by kind (the empty kind first), then unit, then channel count."""
    (kind, unit, channels), _ = item
    return kind, UNITS.index(unit) if unit in UNITS else len(UNITS), channels


def _is_kind(value: Any) -> bool:
    """A kind as :mod:`svdharm_cli.files.kinds` names them, or the empty kind."""
    return isinstance(value, str) and (value == "" or KIND_NAME.fullmatch(value) is not None)


MAX_FILE_BYTES = 256 * 2**20
"""The largest reference file read (a merged reference of a million images is about 200 MiB)."""

MAX_DEPTH = 16
"""How deeply a reference's JSON may nest (what fit-reference and merge-references write nests 6
to 7 levels: the object, a list, an entry, a matrix, a row, a number)."""


def _depth(value: Any) -> int:
    """How deeply ``value`` (parsed JSON) nests, a scalar being 1 level and ``[[1]]`` 3;
    counted without recursion, and only up to one level past :data:`MAX_DEPTH`."""
    stack = [(value, 1)]
    deepest = 1
    while stack and deepest <= MAX_DEPTH:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest
