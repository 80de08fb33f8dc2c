"""One decomposition of a slice, measured for many band cuts at once (the work of ``tune``).

The cuts decide which singular vectors go to which band, not the vectors. A slice ``X``
(``h x w`` in working orientation, ``w <= h``) is decomposed once up to ``K``, the largest
rank any cut set asks for (:func:`~svdharm_cli.core.bands.decompose`), and split at every
rank any cut set uses into *segments* ``Q_s = P_s V_s^T`` (the columns ``e_s .. e_{s+1}``
of ``P = X V`` and ``V``), plus the rest ``R = X - P V^T``. Every cut set's components are
sums of consecutive segments (its finest band also takes ``R``), so their means and
standard deviations follow from the segments' first and second moments: a few numbers per
slice, whatever the number of cut sets.

Harmonizing with a cut set is a per-component affine map (METHOD.md section 4), so the
harmonized slice is ``Y = sum_s alpha_s Q_s + a_last R + beta``: again a combination of the
segments. ``tune`` measures every harmonized slice with one fixed yardstick, the same for
every cut set and for the unharmonized slice (so that their figures compare): the
statistics of ``Y`` along the input's own singular vectors, cut at :data:`YARDSTICK`
(component ``t`` is ``Y V_t V_t^T``, the finest ``Y - Y V V^T``), and ``Y``'s values at a
fixed sample of pixels. For the unharmonized slice these are its band statistics at the
yardstick's cuts (what ``compare`` measures); for a harmonized one they are linear in the
segments and in the constant image's projections ``G_t``, so they too are a few numbers
per cut set. Band statistics are of the values before clipping to [0, 1]; the sampled
values are clipped by the caller where harmonize clips.

Moments are accumulated per *pixel set* (every pixel, ``"all"``, or a mask's True pixels),
shifted by each atom's mean over the slice for accuracy, in row blocks so that memory stays
a few segments' worth of rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from svdharm_cli.core.bands import band_ranks, decompose, validate_fractions
from svdharm_cli.core.methods import ZERO_STD, Moments

YARDSTICK: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7)
"""The cuts every candidate's harmonized images are measured at: finer than any default
candidate, spaced about evenly on a log scale, so that a difference left inside a
candidate's coarse band shows."""

_BLOCK_VALUES = 2**22
"""Atom values formed at a time (row blocks of at most this many per channel)."""


@dataclass(frozen=True)
class PixelMoments:
    """First and second moments of a slice's atoms over one set of pixels, per channel.

    The atoms are ``[Q_0 .. Q_{S-1}, R, G_0 .. G_{T-1}]`` (see the module); ``sums`` and
    ``cross`` are of the atoms minus ``shift``.
    """

    count: int
    shift: np.ndarray
    """``(C, A)``."""
    sums: np.ndarray
    """``(C, A)``."""
    cross: np.ndarray
    """``(C, A, A)``."""

    def moments(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means and population stds ``(C, k)`` of the combinations ``rows`` ``(C, k, A)``
        of the atoms (zeros over an empty set)."""
        c, k = rows.shape[:2]
        if self.count == 0:
            return np.zeros((c, k)), np.zeros((c, k))
        mean = self.sums / self.count  # of the shifted atoms
        cov = self.cross / self.count - mean[:, :, None] * mean[:, None, :]
        means = np.einsum("cka,ca->ck", rows, mean + self.shift)
        var = np.einsum("cka,cab,ckb->ck", rows, cov, rows)
        return means, np.sqrt(np.maximum(var, 0.0))


@dataclass(frozen=True)
class SliceSpectrum:
    """What :func:`slice_spectrum` keeps of one slice: enough to measure any of its cut
    sets, harmonized with any map, without the pixels."""

    rank: int
    """``r``, the slice's number of singular values."""
    edges: tuple[int, ...]
    """Segment edges ``0 = e_0 < ... < e_S = K`` (ranks)."""
    yardstick: tuple[float, ...]
    sets: Mapping[str, PixelMoments]
    samples: np.ndarray
    """``(C, S + 1, m)`` float32: the segments and ``R`` at the sampled pixels."""

    @property
    def segments(self) -> int:
        return len(self.edges) - 1

    def _segment_band(self, fractions: Sequence[float]) -> np.ndarray:
        """For each segment, the component of ``fractions`` it belongs to."""
        ranks = band_ranks(self.rank, fractions)
        starts = np.array(self.edges[:-1])
        return np.searchsorted(np.array(ranks), starts, side="right")

    def components(self, fractions: Sequence[float]) -> np.ndarray:
        """The components of ``fractions`` as rows ``(n, A)`` over the atoms."""
        n = len(fractions) + 1
        rows = np.zeros((n, self._atoms))
        rows[self._segment_band(fractions), np.arange(self.segments)] = 1.0
        rows[n - 1, self.segments] = 1.0  # R
        return rows

    def moments(self, fractions: Sequence[float], pixels: str) -> Moments:
        """The slice's own moments at ``fractions`` over ``pixels`` (a pixel set's name):
        what :func:`~svdharm_cli.core.methods.slice_moments` gives for that decomposition."""
        pm = self.sets[pixels]
        rows = self.components(fractions)
        means, stds = pm.moments(np.broadcast_to(rows, (pm.sums.shape[0], *rows.shape)))
        return Moments(pm.count, means, stds)

    @property
    def _atoms(self) -> int:
        return self.segments + 1 + len(self.yardstick) + 1

    def measure(
        self,
        fractions: Sequence[float],
        scales: np.ndarray,
        offsets: np.ndarray,
        pixels: str,
    ) -> tuple[Moments, np.ndarray]:
        """The yardstick moments over ``pixels`` and the values at the sampled pixels
        ``(C, m)`` of ``sum_i scales[:, i] c_i + offsets`` (``c_i`` the components of
        ``fractions``; ``scales`` ``(C, n)``, ``offsets`` ``(C,)``)."""
        band = self._segment_band(fractions)
        alpha = scales[:, band]  # (C, S)
        last = scales[:, -1]
        c, s = alpha.shape
        yard = self._segment_band(self.yardstick)
        t = len(self.yardstick) + 1
        rows = np.zeros((c, t, self._atoms))
        rows[:, yard, np.arange(s)] = alpha
        rows[:, t - 1, s] = last
        rows[:, np.arange(t), s + 1 + np.arange(t)] = offsets[:, None]
        means, stds = self.sets[pixels].moments(rows)
        weights = np.concatenate([alpha, last[:, None]], axis=1)
        values = np.einsum("ca,cam->cm", weights, self.samples) + offsets[:, None]
        return Moments(self.sets[pixels].count, means, stds), values


def slice_spectrum(
    frame: np.ndarray,
    cut_sets: Sequence[Sequence[float]],
    masks: Mapping[str, np.ndarray | None],
    positions: np.ndarray,
    yardstick: Sequence[float] = YARDSTICK,
) -> SliceSpectrum:
    """Decompose ``frame`` ``(C, h, w)`` once for every cut set in ``cut_sets`` and the
    yardstick, and take its atoms' moments over each pixel set of ``masks`` (a name and a
    bool ``(h, w)`` mask, None for every pixel) and their values at ``positions`` (flat
    indices into ``(h, w)``)."""
    frame = np.asarray(frame, dtype=np.float64)
    yard = validate_fractions(yardstick)
    cuts = [validate_fractions(f) for f in cut_sets]
    largest = max(f[-1] for f in [*cuts, yard])
    h, w = frame.shape[1:]
    transposed = w > h
    r = min(h, w)
    edges = sorted({0} | {k for f in [*cuts, yard] for k in band_ranks(r, f)})
    rows_at, cols_at = np.divmod(np.asarray(positions, dtype=np.int64), w)
    if transposed:
        rows_at, cols_at = cols_at, rows_at
    per_channel = [
        _channel_atoms(channel, largest, edges, yard, masks, transposed, rows_at, cols_at)
        for channel in frame
    ]
    sets = {
        name: PixelMoments(
            per_channel[0][0][name][0],
            np.stack([p[0][name][1] for p in per_channel]),
            np.stack([p[0][name][2] for p in per_channel]),
            np.stack([p[0][name][3] for p in per_channel]),
        )
        for name in masks
    }
    samples = np.stack([p[1] for p in per_channel]).astype(np.float32)
    return SliceSpectrum(r, tuple(edges), yard, sets, samples)


def _channel_atoms(
    channel: np.ndarray,
    largest: float,
    edges: list[int],
    yardstick: tuple[float, ...],
    masks: Mapping[str, np.ndarray | None],
    transposed: bool,
    rows_at: np.ndarray,
    cols_at: np.ndarray,
) -> tuple[dict[str, tuple[int, np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
    bands = decompose(channel, (largest,))
    x, p, v = bands.x, bands.p, bands.v
    h, w = x.shape
    k = edges[-1]
    p, v = p[:, :k], v[:, :k]
    segments = list(zip(edges, edges[1:]))
    # The constant image's projection on each yardstick component: every row is u_t.
    ones = np.ones(w)
    yard_edges = (0, *band_ranks(w, yardstick))
    u = [v[:, a:b] @ (v[:, a:b].T @ ones) for a, b in zip(yard_edges, yard_edges[1:])]
    u.append(ones - sum(u))
    # Each atom's mean over the slice (exact, cheap): the shift for the moments.
    col_p, col_v = p.sum(axis=0), v.sum(axis=0)
    seg_means = [float(col_p[a:b] @ col_v[a:b]) / (h * w) for a, b in segments]
    shift = np.array([*seg_means, float(x.mean()) - sum(seg_means), *(ut.mean() for ut in u)])
    atoms = len(segments) + 1 + len(u)
    planes = {
        name: None if m is None else (np.asarray(m, dtype=bool).T if transposed else m)
        for name, m in masks.items()
    }
    counts = dict.fromkeys(masks, 0)
    sums = {name: np.zeros(atoms) for name in masks}
    cross = {name: np.zeros((atoms, atoms)) for name in masks}
    step = max(1, _BLOCK_VALUES // (w * atoms))
    for start in range(0, h, step):
        rows = slice(start, min(h, start + step))
        b = rows.stop - rows.start
        block = np.empty((atoms, b, w))
        for s, (lo, hi) in enumerate(segments):
            np.matmul(p[rows, lo:hi], v[:, lo:hi].T, out=block[s])
        block[len(segments)] = x[rows] - block[: len(segments)].sum(axis=0)
        for t, ut in enumerate(u):
            block[len(segments) + 1 + t] = ut
        flat = block.reshape(atoms, -1)
        flat -= shift[:, None]
        for name, plane in planes.items():
            chosen = flat if plane is None else flat[:, np.asarray(plane[rows]).ravel()]
            counts[name] += chosen.shape[1]
            sums[name] += chosen.sum(axis=1)
            cross[name] += chosen @ chosen.T
    sampled = np.stack([(p[rows_at, lo:hi] * v[cols_at, lo:hi]).sum(axis=1) for lo, hi in segments])
    rest = x[rows_at, cols_at] - sampled.sum(axis=0)
    values = np.concatenate([sampled, rest[None]])
    moments = {name: (counts[name], shift, sums[name], cross[name]) for name in masks}
    return moments, values


def harmonizing_map(
    own: Moments, reference: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Harmonization's per-component scales ``(C, n)`` and per-channel offsets ``(C,)``
    for an image of moments ``own`` (METHOD.md section 4, as
    :func:`~svdharm_cli.core.methods.transform` forms them)."""
    means, stds = own.means, own.stds
    safe = np.where(stds > ZERO_STD, stds, 1.0)
    scales = np.where(stds > ZERO_STD, reference[1] / safe, 1.0)
    offsets = (reference[0] - scales * means).sum(axis=1)
    return scales, offsets
