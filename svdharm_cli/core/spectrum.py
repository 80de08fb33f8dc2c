"""One decomposition of a slice, for many band cuts at once (the work of ``svdharm tune``).

The cuts decide which singular vectors go to which band, not the vectors. A slice is
decomposed once up to ``K``, the largest rank any cut set asks for
(:func:`decompose_once`); each cut set's components are then that decomposition cut again
(:meth:`~svdharm_cli.core.bands.Bands.recut`). Their statistics, for every cut set at once,
come from the *segments*: the slice split at every rank any cut set uses, ``Q_s = P_s
V_s^T`` (the columns ``e_s .. e_{s+1}`` of ``P = X V`` and ``V``), plus the rest ``R = X -
P V^T``. Every cut set's component is a sum of consecutive segments (its finest band also
takes ``R``), so its mean and standard deviation over any pixels follow from the segments'
first and second moments over those pixels: one pass over the slice, a few numbers kept,
whatever the number of cut sets (:func:`slice_spectrum`).

Moments are accumulated per *pixel set* (a name and a mask, None for every pixel), shifted
by each segment's mean over the slice for accuracy, in row blocks so that memory stays a
few segments' worth of rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from svdharm_cli.core.bands import Bands, band_ranks, decompose, validate_fractions
from svdharm_cli.core.methods import Moments

_BLOCK_VALUES = 2**22
"""Segment values formed at a time (row blocks of at most this many per channel)."""


@dataclass(frozen=True)
class PixelMoments:
    """First and second moments of a slice's segments (``[Q_0 .. Q_{S-1}, R]``, ``A`` of
    them) over one set of pixels, per channel; ``sums`` and ``cross`` are of the segments
    minus ``shift``."""

    count: int
    shift: np.ndarray
    """``(C, A)``."""
    sums: np.ndarray
    """``(C, A)``."""
    cross: np.ndarray
    """``(C, A, A)``."""

    def moments(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means and population stds ``(C, k)`` of the sums ``rows`` ``(k, A)`` of the
        segments (zeros over an empty set)."""
        c, k = self.sums.shape[0], rows.shape[0]
        if self.count == 0:
            return np.zeros((c, k)), np.zeros((c, k))
        mean = self.sums / self.count  # of the shifted segments
        cov = self.cross / self.count - mean[:, :, None] * mean[:, None, :]
        means = np.einsum("ka,ca->ck", rows, mean + self.shift)
        var = np.einsum("ka,cab,kb->ck", rows, cov, rows)
        return means, np.sqrt(np.maximum(var, 0.0))


@dataclass(frozen=True)
class SliceSpectrum:
    """What :func:`slice_spectrum` keeps of one slice: enough for the statistics of any of
    its cut sets over any of its pixel sets, without the pixels."""

    rank: int
    """``r``, the slice's number of singular values."""
    edges: tuple[int, ...]
    """Segment edges ``0 = e_0 < ... < e_S = K`` (ranks)."""
    sets: Mapping[str, PixelMoments]

    def components(self, fractions: Sequence[float]) -> np.ndarray:
        """The components of ``fractions`` as rows ``(n, S + 1)`` of 0 and 1 over the
        segments and ``R``."""
        ranks = np.array(band_ranks(self.rank, fractions))
        segments = len(self.edges) - 1
        band = np.searchsorted(ranks, np.array(self.edges[:-1]), side="right")
        rows = np.zeros((len(ranks) + 1, segments + 1))
        rows[band, np.arange(segments)] = 1.0
        rows[-1, segments] = 1.0  # R
        return rows

    def moments(self, fractions: Sequence[float], pixels: str) -> Moments:
        """The slice's moments at ``fractions`` over ``pixels`` (a pixel set's name): what
        :func:`~svdharm_cli.core.methods.slice_moments` gives for that decomposition."""
        found = self.sets[pixels]
        means, stds = found.moments(self.components(fractions))
        return Moments(found.count, means, stds)


def decompose_once(frame: np.ndarray, cut_sets: Sequence[Sequence[float]]) -> list[Bands]:
    """Each channel of ``frame`` ``(C, h, w)`` decomposed up to the largest cut of any of
    ``cut_sets``: :meth:`~svdharm_cli.core.bands.Bands.recut` gives each set's bands."""
    largest = max(validate_fractions(f)[-1] for f in cut_sets)
    return [decompose(channel, (largest,)) for channel in frame]


def slice_spectrum(
    bands: Sequence[Bands],
    cut_sets: Sequence[Sequence[float]],
    masks: Mapping[str, np.ndarray | None],
) -> SliceSpectrum:
    """The segments' moments of a slice decomposed by :func:`decompose_once` (its channels'
    ``bands``), for every cut set of ``cut_sets``, over each pixel set of ``masks`` (a name
    and a bool ``(h, w)`` mask in the slice's orientation, None for every pixel)."""
    r = int(bands[0].x.shape[1])
    edges = sorted({0} | {k for f in cut_sets for k in band_ranks(r, validate_fractions(f))})
    per_channel = [_channel_moments(b, edges, masks) for b in bands]
    sets = {
        name: PixelMoments(
            per_channel[0][name][0],
            np.stack([p[name][1] for p in per_channel]),
            np.stack([p[name][2] for p in per_channel]),
            np.stack([p[name][3] for p in per_channel]),
        )
        for name in masks
    }
    return SliceSpectrum(r, tuple(edges), sets)


def _channel_moments(
    bands: Bands, edges: list[int], masks: Mapping[str, np.ndarray | None]
) -> dict[str, tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    x = bands.x
    h, w = x.shape
    p, v = bands.p[:, : edges[-1]], bands.v[:, : edges[-1]]
    segments = list(zip(edges, edges[1:]))
    # Each segment's mean over the slice (exact, cheap): the shift for the moments.
    col_p, col_v = p.sum(axis=0), v.sum(axis=0)
    seg_means = [float(col_p[a:b] @ col_v[a:b]) / (h * w) for a, b in segments]
    shift = np.array([*seg_means, float(x.mean()) - sum(seg_means)])
    atoms = len(segments) + 1
    planes = {
        name: None if m is None else (np.asarray(m, dtype=bool).T if bands.transposed else m)
        for name, m in masks.items()
    }
    counts = dict.fromkeys(masks, 0)
    sums = {name: np.zeros(atoms) for name in masks}
    cross = {name: np.zeros((atoms, atoms)) for name in masks}
    step = max(1, _BLOCK_VALUES // (w * atoms))
    for start in range(0, h, step):
        rows = slice(start, min(h, start + step))
        block = np.empty((atoms, rows.stop - rows.start, w))
        for s, (lo, hi) in enumerate(segments):
            np.matmul(p[rows, lo:hi], v[:, lo:hi].T, out=block[s])
        block[-1] = x[rows] - block[:-1].sum(axis=0)
        flat = block.reshape(atoms, -1)
        flat -= shift[:, None]
        for name, plane in planes.items():
            chosen = flat if plane is None else flat[:, np.asarray(plane[rows]).ravel()]
            counts[name] += chosen.shape[1]
            sums[name] += chosen.sum(axis=1)
            cross[name] += chosen @ chosen.T
    return {name: (counts[name], shift, sums[name], cross[name]) for name in masks}


def harmonized(
    bands: Sequence[Bands],
    fractions: Sequence[float],
    scales: np.ndarray,
    offsets: np.ndarray,
) -> np.ndarray:
    """The slice ``(C, h, w)`` harmonized with the map ``scales`` ``(C, n)``, ``offsets``
    ``(C,)`` at ``fractions``, from its :func:`decompose_once` bands (unclipped; every pixel
    mapped)."""
    return np.stack(
        [b.recut(fractions).combine(scales[c], float(offsets[c])) for c, b in enumerate(bands)]
    )
