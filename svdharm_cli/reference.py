"""The reference: per-channel, per-component target statistics (METHOD.md section 3).

A reference is fitted once, from one image or a cohort (each statistic is the plain average
over images of the per-image statistic), and stored as JSON, never pickle::

    {
      "format": "svdharm-reference",
      "format_version": 1,
      "tool_version": "0.1.0",
      "fractions": [0.07, 0.2, 0.5],
      "channels": 1,
      "components": ["base", "band1", "band2", "band3"],
      "mean": [[...4 numbers...]],          # one row per channel, normalized units
      "std": [[...4 numbers...]],           # population std (ddof 0)
      "sources": [{"path": "...", "sha256": "...", "shape": [h, w]}]
    }

Statistics are in normalized units, so a reference fitted on 8-bit PNGs harmonizes 16-bit
data and the other way round. :meth:`Reference.from_json` checks every field and names the
one that is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from svdharm_cli import __version__
from svdharm_cli.bands import validate_fractions
from svdharm_cli.errors import ReferenceFileError

FORMAT_NAME = "svdharm-reference"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Source:
    """One image a reference was fitted from."""

    path: str
    sha256: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Reference:
    """Target statistics, shape ``(channels, n_components)`` each, float64, normalized units."""

    fractions: tuple[float, ...]
    mean: np.ndarray
    std: np.ndarray
    sources: tuple[Source, ...] = ()
    tool_version: str = __version__

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_components(self) -> int:
        return len(self.fractions) + 1

    @classmethod
    def fit(
        cls,
        stats: Sequence[tuple[np.ndarray, np.ndarray]],
        fractions: Sequence[float],
        sources: Sequence[Source] = (),
    ) -> Reference:
        """Average per-image ``(mean, std)`` arrays, each ``(channels, n_components)``.

        Raises
        ------
        ValueError
            When there are no images, or their shapes differ (e.g. gray with RGB).
        """
        if not stats:
            raise ValueError("a reference needs at least one image")
        shapes = {m.shape for m, _ in stats} | {s.shape for _, s in stats}
        if len(shapes) != 1:
            raise ValueError(f"reference images disagree in channels/components: {sorted(shapes)}")
        mean = np.mean([m for m, _ in stats], axis=0)
        std = np.mean([s for _, s in stats], axis=0)
        return cls(validate_fractions(fractions), mean, std, tuple(sources))

    def to_dict(self) -> dict[str, Any]:
        n = self.n_components
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "tool_version": self.tool_version,
            "fractions": list(self.fractions),
            "channels": self.channels,
            "components": ["base"] + [f"band{i}" for i in range(1, n)],
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "sources": [
                {"path": s.path, "sha256": s.sha256, "shape": list(s.shape)} for s in self.sources
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "reference") -> Reference:
        """Parse and validate; :class:`ReferenceFileError` names the field that is wrong."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReferenceFileError(f"{origin}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, origin)

    @classmethod
    def from_dict(cls, data: Any, origin: str = "reference") -> Reference:
        def bad(field: str, why: str) -> ReferenceFileError:
            return ReferenceFileError(f"{origin}: field {field!r} {why}")

        if not isinstance(data, dict):
            raise ReferenceFileError(f"{origin}: a reference must be a JSON object")
        if data.get("format") != FORMAT_NAME:
            raise bad("format", f"must be {FORMAT_NAME!r}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise bad("format_version", f"is {version!r}; this svdharm reads {FORMAT_VERSION}")
        raw_fractions = data.get("fractions")
        if not isinstance(raw_fractions, list) or not all(_is_number(f) for f in raw_fractions):
            raise bad("fractions", "must be a list of numbers")
        try:
            fractions = validate_fractions(raw_fractions)
        except ValueError as exc:
            raise bad("fractions", f"is invalid: {exc}") from exc
        channels = data.get("channels")
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise bad("channels", "must be a positive integer")
        shape = (channels, len(fractions) + 1)
        arrays = {}
        for name in ("mean", "std"):
            value = data.get(name)
            if not _is_matrix(value, shape):
                raise bad(name, f"must be {shape[0]} rows of {shape[1]} finite numbers")
            arrays[name] = np.asarray(value, dtype=np.float64)
        if (arrays["std"] < 0).any():
            raise bad("std", "must not hold negative values")
        sources = []
        raw_sources = data.get("sources", [])
        if not isinstance(raw_sources, list):
            raise bad("sources", "must be a list")
        for i, src in enumerate(raw_sources):
            if not (
                isinstance(src, dict)
                and isinstance(src.get("path"), str)
                and isinstance(src.get("sha256"), str)
                and isinstance(src.get("shape"), list)
                and all(isinstance(n, int) for n in src["shape"])
            ):
                raise bad(f"sources[{i}]", "must have a string path and sha256 and a shape list")
            sources.append(Source(src["path"], src["sha256"], tuple(src["shape"])))
        tool_version = data.get("tool_version", "unknown")
        return cls(fractions, arrays["mean"], arrays["std"], tuple(sources), str(tool_version))


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
