"""Checking a parsed reference field by field (:meth:`Reference.from_dict`): every
field's type, shape and range, so that a damaged or hand-edited file is refused with the
field named (``entries[0].std``) instead of harmonizing with nonsense."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from svdharm_cli.core.bands import validate_fractions
from svdharm_cli.core.reference import (
    FORMAT_NAME,
    KINDS_VERSION,
    MASKS,
    READABLE_VERSIONS,
    SHARED_VERSION,
    UNITS,
    Entry,
    Merged,
    Reference,
    Source,
    _is_kind,
    describe_kind,
)
from svdharm_cli.errors import ReferenceFileError

MAGNITUDE_LIMITS = {"normalized": 16.0, "HU": 1e6, "raw": float(np.finfo(np.float32).max)}
"""The largest mean or std magnitude a reference entry may hold, per unit. In normalized
units a component's mean and std over a whole image are at most 1 (its values are an
orthogonal part of an image in [0, 1]); a mask can raise them over its pixels, so 16 leaves
ample room. HU: CT spans about -1,024 to 3,071 HU, 30,000 in the widest 16-bit rescale.
Raw: the largest float32 value (what NIfTI stores)."""


def reference_from_dict(data: Any, origin: str = "reference") -> Reference:
    """The reference ``data`` (parsed JSON) holds; :class:`ReferenceFileError` names the
    field that is wrong."""

    def bad(field: str, why: str) -> ReferenceFileError:
        return ReferenceFileError(f"{origin}: field {field!r} {why}")

    if not isinstance(data, dict):
        raise ReferenceFileError(f"{origin}: a reference must be a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise bad("format", f"must be {FORMAT_NAME!r}")
    version = data.get("format_version")
    if version not in READABLE_VERSIONS:
        raise bad(
            "format_version",
            f"is {version!r}; this svdharm reads versions {list(READABLE_VERSIONS)}",
        )
    raw_fractions = data.get("fractions")
    if not isinstance(raw_fractions, list) or not all(_is_number(f) for f in raw_fractions):
        raise bad("fractions", "must be a list of numbers")
    try:
        fractions = validate_fractions(raw_fractions)
    except ValueError as exc:
        raise bad("fractions", f"is invalid: {exc}") from exc
    n = len(fractions) + 1
    raw_entries: Any
    if version == 1:
        raw_entries = [{**data, "unit": "normalized", "images": len(data.get("sources", []))}]
    else:
        raw_entries = data.get("entries")
        if not isinstance(raw_entries, list) or not raw_entries:
            raise bad("entries", "must be a non-empty list")
    entries: list[Entry] = []
    for i, raw in enumerate(raw_entries):
        where = "" if version == 1 else f"entries[{i}]."
        if not isinstance(raw, dict):
            raise bad(f"entries[{i}]", "must be an object")
        kind = raw.get("kind", "")
        if not _is_kind(kind) or (kind and version < KINDS_VERSION):
            raise bad(f"{where}kind", "must be a short name (letters, digits, '.', '_', '-')")
        unit = raw.get("unit")
        if unit not in UNITS:
            raise bad(f"{where}unit", f"must be one of {list(UNITS)}")
        channels = raw.get("channels")
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise bad(f"{where}channels", "must be a positive integer")
        arrays = {}
        for name in ("mean", "std"):
            value = raw.get(name)
            if not _is_matrix(value, (channels, n)):
                raise bad(f"{where}{name}", f"must be {_rows(channels)} of {n} finite numbers")
            arrays[name] = np.asarray(value, dtype=np.float64)
        if (arrays["std"] < 0).any():
            raise bad(f"{where}std", "must not hold negative values")
        limit = MAGNITUDE_LIMITS[unit]
        for name, values in arrays.items():
            if (np.abs(values) > limit).any():
                worst = float(np.abs(values).max())
                raise bad(
                    f"{where}{name}",
                    f"holds {worst:.6g}, beyond what any image in {unit} units can have "
                    f"(at most {limit:g} in magnitude)",
                )
        if any(e.key == (kind, unit, channels) for e in entries):
            raise bad(
                f"{where}unit", f"repeats the entry for {describe_kind(unit, channels, kind)}"
            )
        images = raw.get("images", 1)
        images = images if isinstance(images, int) and images >= 0 else 1
        entries.append(Entry(unit, channels, arrays["mean"], arrays["std"], images, kind))
    sources = _sources(data.get("sources", []), version, bad)
    tool_version = data.get("tool_version", "unknown")
    mask = data.get("mask", "none")
    if mask not in MASKS:
        raise bad("mask", f"must be one of {list(MASKS)}")
    merged = _merged(data.get("merged", []), bad)
    return Reference(fractions, tuple(entries), sources, str(tool_version), mask, merged)


def _sources(raw_sources: Any, version: int, bad: Any) -> tuple[Source, ...]:
    """The ``sources`` of a reference, checked (a shared reference's have no path)."""
    sources = []
    if not isinstance(raw_sources, list):
        raise bad("sources", "must be a list")
    for i, src in enumerate(raw_sources):
        if not (
            isinstance(src, dict)
            and isinstance(src.get("path", ""), str)
            and (version >= SHARED_VERSION or "path" in src)
            and isinstance(src.get("sha256"), str)
            and isinstance(src.get("shape"), list)
            and all(isinstance(k, int) for k in src["shape"])
        ):
            raise bad(f"sources[{i}]", "must have a string path and sha256 and a shape list")
        unit = src.get("unit", "normalized")
        channels = src.get("channels", 1)
        kind = src.get("kind", "")
        sources.append(
            Source(
                src.get("path"),
                src["sha256"],
                tuple(src["shape"]),
                unit if isinstance(unit, str) else "normalized",
                channels if isinstance(channels, int) else 1,
                kind if _is_kind(kind) else "",
            )
        )
    return tuple(sources)


def _merged(raw: Any, bad: Any) -> tuple[Merged, ...]:
    """The ``merged`` record of a merged reference, checked."""
    if not isinstance(raw, list):
        raise bad("merged", "must be a list")
    found = []
    for i, item in enumerate(raw):
        entries = item.get("entries") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(item.get("sha256"), str):
            raise bad(f"merged[{i}]", "must be an object with a string sha256")
        if not isinstance(entries, list) or not all(
            isinstance(e, dict)
            and e.get("unit") in UNITS
            and isinstance(e.get("channels"), int)
            and isinstance(e.get("images"), int)
            and _is_kind(e.get("kind", ""))
            for e in entries
        ):
            raise bad(f"merged[{i}].entries", "must list unit, channels and images")
        kinds = tuple((e["unit"], e["channels"], e["images"], e.get("kind", "")) for e in entries)
        found.append(Merged(item["sha256"], kinds))
    return tuple(found)


def _rows(count: int) -> str:
    return "1 row" if count == 1 else f"{count} rows"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_matrix(value: Any, shape: tuple[int, int]) -> bool:
    return (
        isinstance(value, list)
        and len(value) == shape[0]
        and all(
            isinstance(row, list) and len(row) == shape[1] and all(_is_number(v) for v in row)
            for row in value
        )
    )
