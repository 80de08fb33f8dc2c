"""Harmonization, de-harmonization and both, on a stack of channels (METHOD.md sections 4-7).

Every function takes channels as an array ``(c, h, w)`` in normalized units (any real dtype)
and returns a new float64 array of the same shape; inputs are never modified. Each method is
an affine map per component, ``c_i -> a_i c_i + b_i``, so one routine applies all three:

- harmonize: ``a_i = S_i / s_i``, ``b_i = M_i - a_i m_i`` (``a_i = 1`` when ``s_i`` is zero);
- de-harmonize: ``a_i = C_i``, ``b_i = 0``;
- harmonize + de-harmonize: the base as in harmonize, the bands as in de-harmonize.

Random coefficients are drawn first (:func:`draw_coefficients`, from one integer seed) and
then applied deterministically, so a logged seed or coefficient set replays an output.

Volumes (METHOD.md section 3a): every slice is decomposed on its own, its :class:`Moments`
are taken (:func:`slice_moments`), the moments of all slices are pooled exactly
(:func:`pool`), and :func:`transform` applies the same map to every slice with the pooled
statistics passed as ``stats``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from svdharm_cli.core.backend import Array, backend_of
from svdharm_cli.core.bands import DEFAULT_FRACTIONS, Bands, decompose

ZERO_STD = 1e-6
"""Standard deviations at or below this (normalized units, about 1/15 of a 16-bit level)
count as zero: such a component is only shifted to the reference mean, never stretched."""

DEFAULT_LOW = 0.8
DEFAULT_HIGH = 1.2


class Method(str, Enum):
    """What is done to each component."""

    HARMONIZE = "harmonize"
    DEHARMONIZE = "deharmonize"
    HARMONIZE_DEHARMONIZE = "harmonize-deharmonize"


def decompose_channels(
    channels: Array,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    mask: Array | None = None,
) -> list[Bands]:
    """Decompose each channel of ``(c, h, w)`` once, for reuse by several transforms.

    ``mask`` (``(h, w)`` bool, optional) limits the statistics to its True pixels.
    """
    return [decompose(ch, fractions, mask) for ch in _as_channels(channels)]


def channel_statistics(
    channels: np.ndarray,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel, per-component mean and population std (METHOD.md section 3).

    Returns
    -------
    means, stds
        float64 arrays of shape ``(c, n_components)``.
    """
    stats = [b.stats for b in decompose_channels(channels, fractions, mask)]
    return np.stack([m for m, _ in stats]), np.stack([s for _, s in stats])


@dataclass(frozen=True)
class Moments:
    """Per-channel, per-component mean and population std over ``count`` pixels.

    Attributes
    ----------
    count
        Pixels the statistics were taken over (the mask's foreground, or every pixel).
    means, stds
        float64 arrays ``(c, n_components)``.
    """

    count: int
    means: np.ndarray
    stds: np.ndarray


def slice_moments(bands: Sequence[Bands]) -> Moments:
    """The moments of one decomposed slice (its channels share one mask)."""
    count = bands[0].count
    stats = [b.stats for b in bands]
    return Moments(count, np.stack([m for m, _ in stats]), np.stack([s for _, s in stats]))


def pool(moments: Sequence[Moments]) -> Moments:
    """Exact pooled moments of several slices, as if all their pixels were one sample.

    ``mean = sum n_s m_s / N`` and ``var = sum n_s (s_s^2 + (m_s - mean)^2) / N``: the
    population variance of the union, not an average of the slices' statistics. Slices with
    no pixel (an all-padding slice) weigh nothing.
    """
    if not moments:
        raise ValueError("nothing to pool")
    total = sum(m.count for m in moments)
    if total == 0:
        return Moments(0, np.zeros_like(moments[0].means), np.zeros_like(moments[0].stds))
    weights = np.array([m.count / total for m in moments])
    means = np.stack([m.means for m in moments])
    stds = np.stack([m.stds for m in moments])
    mean = np.einsum("s,sij->ij", weights, means)
    var = np.einsum("s,sij->ij", weights, stds**2 + (means - mean) ** 2)
    return Moments(total, mean, np.sqrt(np.maximum(var, 0.0)))


def harmonize(
    channels: np.ndarray,
    ref_means: np.ndarray,
    ref_stds: np.ndarray,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    clip: bool = True,
) -> np.ndarray:
    """Match every component's mean and std to the reference's (METHOD.md section 4).

    ``ref_means`` and ``ref_stds`` have shape ``(c, n_components)``; with ``clip`` the result
    is clipped to [0, 1] (the paper's saturation step).
    """
    bands = decompose_channels(channels, fractions)
    return transform(bands, reference=(ref_means, ref_stds), clip=clip)


def deharmonize(
    channels: np.ndarray,
    coefficients: np.ndarray,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    clip: bool = True,
) -> np.ndarray:
    """Scale component i of channel k by ``coefficients[k, i]`` (METHOD.md section 5)."""
    bands = decompose_channels(channels, fractions)
    return transform(bands, coefficients=coefficients, clip=clip)


def harmonize_deharmonize(
    channels: np.ndarray,
    ref_means: np.ndarray,
    ref_stds: np.ndarray,
    coefficients: np.ndarray,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    clip: bool = True,
) -> np.ndarray:
    """Harmonize the base, scale the bands by coefficients (METHOD.md section 6).

    ``coefficients[:, 0]`` (the base's) is ignored.
    """
    bands = decompose_channels(channels, fractions)
    return transform(bands, reference=(ref_means, ref_stds), coefficients=coefficients, clip=clip)


def method_map(
    channels: int,
    components: int,
    *,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    coefficients: np.ndarray | None = None,
    own: Moments | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A method as per-component scales ``(channels, components)`` and per-channel offsets
    ``(channels,)`` (None for de-harmonization: no offset): harmonize with only
    ``reference`` (means, stds), de-harmonize with only ``coefficients``, harmonize the base
    and scale the bands with both. ``own`` are the moments matched to the reference (an
    image's, or a volume's pooled). Every harmonizing path forms its map here: the worker
    and the transforms (:func:`transform`), a kept decomposition
    (:meth:`~svdharm_cli.core.decomposition.Decomposition.affine`) and ``tune``."""
    if reference is None and coefficients is None:
        raise ValueError("need a reference, coefficients, or both")
    c, n = channels, components
    scales = np.ones((c, n)) if coefficients is None else np.array(coefficients, dtype=float)
    if scales.shape != (c, n):
        raise ValueError(f"coefficients must have shape {(c, n)}, got {scales.shape}")
    if reference is None:
        return scales, None
    if own is None:
        raise ValueError("harmonizing needs the moments matched to the reference")
    # Components matched to the reference: all, or only the base when bands are scaled.
    matched = n if coefficients is None else 1
    offsets = np.zeros(c)
    m, s = own.means, own.stds
    for k in range(c):
        for i in range(matched):
            scales[k, i] = reference[1][k, i] / s[k, i] if s[k, i] > ZERO_STD else 1.0
            offsets[k] += reference[0][k, i] - scales[k, i] * m[k, i]
    return scales, offsets


def transform(
    bands: Sequence[Bands],
    *,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    coefficients: np.ndarray | None = None,
    clip: bool = True,
    stats: Moments | None = None,
) -> np.ndarray:
    """Apply one of the three methods to already decomposed channels.

    With only ``reference`` (means, stds) this harmonizes; with only ``coefficients`` it
    de-harmonizes; with both, the base is harmonized and the bands scaled. ``stats`` are
    the input statistics matched to the reference: the channels' own by default, or a
    volume's pooled :class:`Moments`. Returns float64 ``(c, h, w)``, clipped to [0, 1] when
    ``clip`` (callers whose unit has no [0, 1] range saturate when they store the values).
    """
    if reference is None and coefficients is None:
        raise ValueError("need a reference, coefficients, or both")
    c = len(bands)
    n = bands[0].n_components
    arrays = {"coefficients": coefficients}
    if reference is not None:
        arrays.update(ref_means=reference[0], ref_stds=reference[1])
    for name, arr in arrays.items():
        if arr is not None and np.shape(arr) != (c, n):
            raise ValueError(f"{name} must have shape {(c, n)}, got {np.shape(arr)}")
    own = None if reference is None else (stats or slice_moments(bands))
    scales, offsets = method_map(c, n, reference=reference, coefficients=coefficients, own=own)
    h, w = bands[0].shape
    xp = bands[0].xp
    out = xp.empty((c, h, w), bands[0].x)
    for k, channel in enumerate(bands):
        out[k] = channel.combine(scales[k], 0.0 if offsets is None else offsets[k])
    if clip:
        xp.clip_(out, 0.0, 1.0)
    return out


def transform_stack(
    components: np.ndarray,
    *,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    coefficients: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`transform` for channels decomposed together by
    :func:`~svdharm_cli.core.bands.components_stack`, each matched to its own statistics.

    ``components`` is ``(N, n, h, w)``; ``reference`` (means, stds) and ``coefficients``
    give one row of ``n`` values per channel, ``(N, n)`` each, so channels of different
    images (and references) can share a stack. Returns float64 ``(N, h, w)``, unclipped.
    Each channel's result is computed on its own (no sum runs across channels).
    """
    if reference is None and coefficients is None:
        raise ValueError("need a reference, coefficients, or both")
    xp = backend_of(components)
    count, n = components.shape[:2]
    flat = components.reshape(count, n, -1)
    scales = np.ones((count, n)) if coefficients is None else np.array(coefficients, dtype=float)
    offset = np.zeros(count)
    if reference is not None:
        matched = n if coefficients is None else 1
        m = xp.numpy(xp.mean(flat[:, :matched], 2))
        centred = flat[:, :matched] - xp.asarray(m, flat)[:, :, None]
        energy = xp.numpy(xp.einsum("cij,cij->ci", centred, centred))
        s = np.sqrt(energy / flat.shape[2])
        varies = s > ZERO_STD  # a constant component is only shifted (as in transform)
        ratio = reference[1][:, :matched] / np.where(varies, s, 1.0)
        scales[:, :matched] = np.where(varies, ratio, 1.0)
        offset = (reference[0][:, :matched] - scales[:, :matched] * m).sum(axis=1)
    out = xp.einsum("ci,cij->cj", xp.asarray(scales, flat), flat)
    out += xp.asarray(offset, flat)[:, None]
    return out.reshape(count, *components.shape[2:])


def draw_coefficients(
    seed: int,
    channels: int,
    n_components: int,
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
    *,
    per_channel: bool = False,
) -> np.ndarray:
    """Coefficients ``C ~ Uniform[low, high]`` for one output, shape ``(channels, n_components)``.

    One row is drawn and shared by all channels (hue kept) unless ``per_channel``. The draw
    depends only on the arguments: ``numpy.random.default_rng(seed)`` then one ``uniform``.
    """
    if not low <= high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    rng = np.random.default_rng(seed)
    if per_channel:
        return rng.uniform(low, high, size=(channels, n_components))
    row = rng.uniform(low, high, size=n_components)
    return np.tile(row, (channels, 1))


def output_seed(base_seed: int, relative_path: str, copy_index: int) -> int:
    """The seed of one output, from the run's seed, the input's relative path and the copy.

    Independent of worker count and order (METHOD.md section 7). The result is a 63-bit
    integer so that it fits any JSON reader's integers exactly when logged.
    """
    # surrogateescape: a file name that is not UTF-8 contributes its raw bytes.
    key = f"{base_seed}\x00{relative_path}\x00{copy_index}".encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def _as_channels(channels: Array) -> Array:
    arr = channels if backend_of(channels).name == "torch" else np.asarray(channels)
    if arr.ndim != 3:
        raise ValueError(f"channels must have shape (c, h, w), got {tuple(arr.shape)}")
    return arr
