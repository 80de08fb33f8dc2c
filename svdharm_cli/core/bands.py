"""Decomposition of one image channel into a base and frequency bands (METHOD.md section 2).

For a channel ``X`` (h x w) with ``r = min(h, w)`` and increasing fractions ``f``, the ranks
are ``k_i = max(1, min(r, floor(f_i * r + 0.5)))`` and the components, coarse to fine, are::

    c0 = I(k1)              base
    c_i = I(k_{i+1}) - I(k_i) bands
    c_n = X - I(k_n)        finest band

where ``I(k)`` is the rank-k reconstruction. ``I(k)`` equals the projection ``X V_k V_k^T``
onto the top-k right singular vectors, so only those vectors are computed: from an
eigen-decomposition of the smaller Gram matrix (``X^T X`` or ``X X^T``), which is several
times cheaper than a full SVD. The components are kept implicitly as ``P = X V`` and ``V``;
statistics and weighted sums of components need no component to be materialized:

- ``mean(c_i) = sum_j colsum(P)_j * colsum(V)_j / (h w)`` over the columns j of band i;
- ``||c_i||^2 = sum_j ||P_j||^2`` (V has orthonormal columns); the finest band is formed
  explicitly, in row blocks, for its statistics;
- ``sum_i a_i c_i = a_n X + (P diag(a_band(j) - a_n)) V^T``: one matrix product.

Everything runs in float64. Single precision was tried and rejected: singular values at a
cut are often nearly equal, float32 mixes the vectors on both sides, and harmonization then
stretches the error (up to 7 8-bit levels on 1024 x 1024 test images, against a bound of 1).

A channel may be a NumPy array or a torch tensor (CPU or CUDA): the arithmetic is written
once, against :mod:`~svdharm_cli.core.backend`, and runs on the channel's device. Statistics are
returned as NumPy arrays either way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from svdharm_cli.core.backend import NUMPY, Array, Backend, backend_of

DEFAULT_FRACTIONS: tuple[float, ...] = (0.07, 0.20, 0.50)
"""The paper's 7 %, 20 % and 50 % cuts (with 100 % the four components)."""

_ROW_BLOCK = 512
_SMALL = 256 * 256
"""Channels of at most this many pixels get their statistics from the formed components
(cheaper there than the column-sum formulas' Python overhead, and exact two-pass)."""


def validate_fractions(fractions: Iterable[float]) -> tuple[float, ...]:
    """Return ``fractions`` as a tuple after checking they are increasing and in (0, 1).

    Raises
    ------
    ValueError
        With a message naming the offending value.
    """
    values = tuple(float(f) for f in fractions)
    if not values:
        raise ValueError("at least one fraction is needed")
    for f in values:
        if not (0.0 < f < 1.0) or math.isnan(f):
            raise ValueError(f"fraction {f!r} is not strictly between 0 and 1")
    for a, b in zip(values, values[1:]):
        if not a < b:
            raise ValueError(f"fractions must increase strictly: {a!r} is followed by {b!r}")
    return values


def band_ranks(r: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """Ranks ``k_i = max(1, min(r, floor(f_i * r + 0.5)))`` for ``r`` singular values."""
    if r < 1:
        raise ValueError("an image needs at least one row and one column")
    return tuple(max(1, min(r, math.floor(f * r + 0.5))) for f in fractions)


@dataclass(frozen=True)
class Bands:
    """The components of one channel, held implicitly.

    Attributes
    ----------
    x
        The channel, float64, in working orientation (transposed when h < w, so that the
        Gram matrix is the smaller one).
    p, v
        ``P = X V`` (h x k_n) and the top ``k_n`` right singular vectors ``V`` (w x k_n),
        columns ordered by decreasing singular value, float64.
    ranks
        ``(k_1, ..., k_n)``.
    transposed
        Whether ``x`` is the transpose of the channel given to :func:`decompose`.
    mask
        Optional boolean array like ``x``: statistics use only the True pixels.
    xp
        The array backend of ``x``, ``p``, ``v`` and ``mask`` (NumPy or torch).
    """

    x: Array
    p: Array
    v: Array
    ranks: tuple[int, ...]
    transposed: bool
    mask: Array | None = None
    xp: Backend = NUMPY

    @property
    def n_components(self) -> int:
        return len(self.ranks) + 1

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.x.shape
        return (w, h) if self.transposed else (h, w)

    @property
    def nbytes(self) -> int:
        """Memory held by the decomposition (``P`` and ``V``)."""
        return self.xp.nbytes(self.p) + self.xp.nbytes(self.v)

    @property
    def count(self) -> int:
        """Pixels the statistics are taken over (the mask's, or every pixel)."""
        return self.xp.size(self.x) if self.mask is None else int(self.mask.sum())

    def recut(self, fractions: Sequence[float]) -> Bands:
        """The same decomposition cut at ``fractions`` instead: the cuts decide which
        singular vectors go to which band, not the vectors, so a channel decomposed once up
        to its largest cut serves every smaller set of cuts (``svdharm tune``). Equal to
        :func:`decompose` with ``fractions`` up to float rounding."""
        ranks = band_ranks(int(self.x.shape[1]), validate_fractions(fractions))
        k = ranks[-1]
        if k > self.p.shape[1]:
            raise ValueError(
                f"cuts {tuple(fractions)} need rank {k}; decomposed up to {self.p.shape[1]}"
            )
        return Bands(
            self.x, self.p[:, :k], self.v[:, :k], ranks, self.transposed, self.mask, self.xp
        )

    def with_mask(self, mask: Array | None) -> Bands:
        """The same decomposition with its statistics over ``mask`` (bool, the channel's
        shape, as :func:`decompose` takes it; None: every pixel)."""
        working = _working_mask(mask, self.shape, self.transposed, self.xp, self.x)
        return Bands(self.x, self.p, self.v, self.ranks, self.transposed, working, self.xp)

    def _column_slices(self) -> list[slice]:
        edges = (0, *self.ranks)
        return [slice(a, b) for a, b in zip(edges, edges[1:])]

    @cached_property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and population standard deviation (ddof 0) of every component.

        Means come from column sums (no component formed). For the middle bands the variance
        is ``||P_i||^2 / (h w) - mean^2``; the base (whose mean dominates its energy) and the
        finest band (``X - P V^T``, whose energy is a small difference) would lose accuracy
        that way, so they are formed in row blocks and their centred squares summed.

        Returns
        -------
        means, stds
            float64 NumPy arrays of length ``n_components``, coarse to fine.
        """
        xp = self.xp
        size = xp.size(self.x)
        if size <= _SMALL:
            comps = self.components()
            if self.mask is not None:
                comps = comps[:, self.mask.T if self.transposed else self.mask]
                if comps.shape[1] == 0:
                    return np.zeros(self.n_components), np.zeros(self.n_components)
            axes = tuple(range(1, comps.ndim))
            return xp.numpy(xp.mean(comps, axes)), xp.numpy(xp.std(comps, axes))
        if self.mask is not None:
            return self._masked_stats(self.mask)
        col_p = self.p.sum(axis=0)
        col_v = self.v.sum(axis=0)
        energy_p = xp.einsum("ij,ij->j", self.p, self.p)
        slices = self._column_slices()
        means = [float(col_p[cols] @ col_v[cols]) / size for cols in slices]
        means.append(float(self.x.mean()) - sum(means))
        var = [float(energy_p[cols].sum()) / size - m * m for cols, m in zip(slices, means)]
        k1 = self.ranks[0]
        base_sq = res_sq = 0.0
        for start in range(0, self.x.shape[0], _ROW_BLOCK):
            rows = slice(start, start + _ROW_BLOCK)
            base = self.p[rows, :k1] @ self.v[:, :k1].T
            res = self.x[rows] - self.p[rows] @ self.v.T
            base -= means[0]
            res -= means[-1]
            base_sq += float(xp.einsum("ij,ij->", base, base))
            res_sq += float(xp.einsum("ij,ij->", res, res))
        var[0] = base_sq / size
        var.append(res_sq / size)
        return np.asarray(means), np.sqrt(np.maximum(var, 0.0))

    def _block_components(self, rows: slice) -> list[Array]:
        parts = [self.p[rows, cols] @ self.v[:, cols].T for cols in self._column_slices()]
        parts.append(self.x[rows] - sum(parts))
        return parts

    def _masked_stats(self, mask: Array) -> tuple[np.ndarray, np.ndarray]:
        """Statistics over the True pixels of ``mask``: components formed in row blocks,
        means first, then centred squares (two passes, for accuracy)."""
        count = int(mask.sum())
        n = self.n_components
        if count == 0:
            return np.zeros(n), np.zeros(n)
        sums, squares = np.zeros(n), np.zeros(n)
        blocks = [slice(s, s + _ROW_BLOCK) for s in range(0, self.x.shape[0], _ROW_BLOCK)]
        for rows in blocks:
            for i, comp in enumerate(self._block_components(rows)):
                sums[i] += float(comp[mask[rows]].sum())
        means = sums / count
        for rows in blocks:
            for i, comp in enumerate(self._block_components(rows)):
                d = comp[mask[rows]] - float(means[i])
                squares[i] += float(d @ d)
        return means, np.sqrt(squares / count)

    def combine(self, scales: Sequence[float] | np.ndarray, offset: float = 0.0) -> Array:
        """Return ``sum_i scales[i] * c_i + offset`` as float64, in the channel's orientation
        (on its device)."""
        a = np.asarray(scales, dtype=np.float64)
        if a.shape != (self.n_components,):
            raise ValueError(f"need {self.n_components} scales, got {a.shape}")
        last = a[-1]
        column_scale = np.empty(self.p.shape[1], dtype=np.float64)
        for cols, scale in zip(self._column_slices(), a[:-1]):
            column_scale[cols] = scale - last
        out = (self.p * self.xp.asarray(column_scale, self.p)) @ self.v.T
        out += float(last) * self.x
        out += float(offset)
        return out.T if self.transposed else out

    def component(self, index: int) -> Array:
        """Materialize component ``index`` (0 = base) as float64."""
        scales = np.zeros(self.n_components)
        scales[index] = 1.0
        return self.combine(scales)

    def components(self) -> Array:
        """All components stacked, shape ``(n_components, h, w)``, float64.

        Each band is its own product ``P_i V_i^T`` (columns of band i only), so forming all
        of them costs one ``h x w x k_n`` product in total; the finest band is the rest.
        """
        xp = self.xp
        h, w = self.x.shape
        out = xp.empty((self.n_components, h, w), self.x)
        for i, cols in enumerate(self._column_slices()):
            xp.matmul(self.p[:, cols], self.v[:, cols].T, out=out[i])
        xp.subtract(self.x, out[:-1].sum(axis=0), out=out[-1])
        return xp.permute(out, (0, 2, 1)) if self.transposed else out


def decompose(
    channel: Array,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    mask: Array | None = None,
) -> Bands:
    """Split one channel into a base and bands (METHOD.md section 2).

    Parameters
    ----------
    channel
        2-D array or tensor of any real dtype, in its working unit (METHOD.md section 1);
        it is converted to float64 (on its device) and never modified.
    fractions
        Increasing fractions in (0, 1); n fractions give n + 1 components.
    mask
        Optional boolean array of the channel's shape; only True pixels enter the
        statistics (the decomposition itself uses every pixel).

    Returns
    -------
    Bands
        The components held implicitly; see the module docstring.
    """
    fr = validate_fractions(fractions)
    xp = backend_of(channel)
    x = xp.float64(channel)
    if x.ndim != 2:
        raise ValueError(f"a channel must be 2-D, got shape {tuple(x.shape)}")
    transposed = x.shape[1] > x.shape[0]
    mask = _working_mask(mask, tuple(x.shape), transposed, xp, x)
    if transposed:
        x = x.T
    w = x.shape[1]
    ranks = band_ranks(w, fr)
    k = ranks[-1]
    # eigh returns eigenvalues in ascending order: the last k columns, reversed, are V_k.
    vecs = xp.eigh_vectors(x.T @ x)
    v = xp.contiguous(xp.flip_last(vecs[:, w - k :]))
    p = x @ v
    return Bands(x=x, p=p, v=v, ranks=ranks, transposed=transposed, mask=mask, xp=xp)


def _working_mask(
    mask: Array | None, shape: tuple[int, ...], transposed: bool, xp: Backend, like: Array
) -> Array | None:
    """A boolean mask given in the channel's ``shape``, in the working orientation; None when
    every pixel is in."""
    if mask is None:
        return None
    mask = xp.as_bool(mask, like)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} differs from the channel's {tuple(shape)}"
        )
    if mask.all():
        return None
    return mask.T if transposed else mask


def components_stack(channels: Array, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> Array:
    """The components of many channels of one size at once, formed explicitly.

    For small images (a 28 x 28 channel decomposes in about 0.05 ms), calling
    :func:`decompose` once per channel costs more in per-call overhead than in arithmetic;
    here every step is one call over the whole stack (LAPACK still factors each Gram
    matrix on its own). Each channel's result is exactly what it would be in a stack of
    one, so the outcome does not depend on which channels were stacked together.

    Parameters
    ----------
    channels
        ``(N, h, w)``, any real dtype (converted to float64, never modified); a NumPy
        array or a torch tensor.
    fractions
        As for :func:`decompose`.

    Returns
    -------
    Array
        float64 ``(N, n_components, h, w)``, coarse to fine; the finest band is the rest,
        ``X - sum`` of the others, as in :meth:`Bands.components`.
    """
    fr = validate_fractions(fractions)
    xp = backend_of(channels)
    x = xp.float64(channels)
    if x.ndim != 3:
        raise ValueError(f"a stack of channels must be 3-D, got shape {tuple(x.shape)}")
    transposed = x.shape[2] > x.shape[1]
    if transposed:
        x = xp.permute(x, (0, 2, 1))
    x = xp.contiguous(x)
    count, h, w = x.shape
    ranks = band_ranks(w, fr)
    k = ranks[-1]
    gram = xp.matmul(xp.contiguous(xp.permute(x, (0, 2, 1))), x)
    vecs = xp.eigh_vectors(gram)
    v = xp.contiguous(xp.flip_last(vecs[:, :, w - k :]))
    p = xp.matmul(x, v)
    vt = xp.contiguous(xp.permute(v, (0, 2, 1)))
    out = xp.empty((count, len(ranks) + 1, h, w), x)
    edges = (0, *ranks)
    for i, (a, b) in enumerate(zip(edges, edges[1:])):
        xp.matmul(p[:, :, a:b], vt[:, a:b], out=out[:, i])
    xp.subtract(x, out[:, :-1].sum(axis=1), out=out[:, -1])
    return xp.permute(out, (0, 1, 3, 2)) if transposed else out
