"""The method on a volume in memory: slices in, statistics or new slices out, no file I/O.

This is what the CLI's worker does to an input (a file or a series) and what the
training-loop transforms (:mod:`svdharm_cli.transforms`) do to an array or tensor; both call
these functions, so the two cannot drift apart.

A volume is a sequence of slices, each ``(c, h, w)`` (a 2-D image is a volume of one
slice), NumPy arrays or torch tensors alike, with an optional boolean mask ``(h, w)`` per
slice. With a reference (METHOD.md section 3a): every slice is decomposed, its moments are
taken over its mask, the moments are pooled over each group of slices (one group per 3-D
volume), and one map per component is then applied to every slice of the group.
Decompositions are kept between the two steps while they fit in ``cache_bytes``; slices
beyond that are decomposed again, so memory stays bounded whatever the volume's size.
Outside a slice's mask the new values are the input's (METHOD.md section 3b).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from svdharm_cli.core.backend import Array
from svdharm_cli.core.bands import Bands
from svdharm_cli.core.methods import Moments, decompose_channels, pool, slice_moments, transform

CACHE_BYTES = 512 * 2**20
"""Decompositions kept between the statistics step and the apply step of one volume."""

T = TypeVar("T")
Map = Callable[[Callable[[int], Any], Iterable[int]], list[Any]]
"""``run(fn, indices) -> [fn(i) for i in indices]``, possibly over threads."""


def serial(fn: Callable[[int], T], items: Iterable[int]) -> list[T]:
    """The default :data:`Map`: one slice after the other."""
    return [fn(i) for i in items]


def volume_moments(
    slices: Sequence[Array],
    fractions: Sequence[float],
    masks: Sequence[Array | None] | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    run: Map = serial,
) -> list[Moments]:
    """The pooled moments of each group of slices (all slices one group by default).

    This is what a reference is fitted from: one :class:`~svdharm_cli.core.methods.Moments` per
    volume (pass ``groups=[[i] for i in range(n)]`` for slice-by-slice statistics).
    """
    masks = _masks(slices, masks)
    moments = run(
        lambda i: slice_moments(decompose_channels(slices[i], fractions, masks[i])),
        range(len(slices)),
    )
    return [pool([moments[i] for i in group]) for group in _groups(slices, groups)]


def _pooled(
    groups: Sequence[Sequence[int]],
    decompose: Callable[[int], list[Bands]],
    run: Map,
    cache: list[list[Bands] | None],
    cache_bytes: int,
) -> list[Moments | None]:
    """Each slice's moments pooled over its group (the first pass); decompositions are
    kept in ``cache`` while they fit in ``cache_bytes``, for the second pass."""
    budget = [cache_bytes]
    lock = threading.Lock()

    def measure(i: int) -> Moments:
        bands = decompose(i)
        size = sum(b.nbytes for b in bands)
        with lock:
            if size <= budget[0]:
                budget[0] -= size
                cache[i] = bands
        return slice_moments(bands)

    moments = run(measure, range(len(cache)))
    stats: list[Moments | None] = [None] * len(cache)
    for group in groups:
        pooled = pool([moments[i] for i in group])
        for i in group:
            stats[i] = pooled
    return stats


def transform_volume(
    slices: Sequence[Array],
    fractions: Sequence[float],
    *,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    coefficients: Sequence[np.ndarray | None] = (None,),
    masks: Sequence[Array | None] | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    per_slice: bool = False,
    run: Map = serial,
    check: Callable[[], None] | None = None,
    cache_bytes: int = CACHE_BYTES,
    sink: Callable[[int, int, Array], None] | None = None,
) -> list[list[Array]]:
    """Harmonize, de-harmonize or both, every slice of a volume, for one or more outputs.

    Parameters
    ----------
    slices
        ``(c, h, w)`` each, in the volume's unit; never modified.
    fractions
        The band cuts (the reference's, when there is one).
    reference
        ``(means, stds)`` of the reference entry, ``(c, n_components)`` each, or None.
    coefficients
        One entry per output: ``(c, n_components)`` coefficients, or None (harmonize
        only). ``(None,)`` with a reference: one harmonized output.
    masks
        A boolean ``(h, w)`` (or None: every pixel) per slice; statistics are taken over
        the True pixels and the other pixels keep their input values.
    groups
        Slice indices pooled together (each 3-D volume of a 4-D series on its own);
        default all slices.
    per_slice
        Match each slice to the reference with its own statistics instead of the pooled
        ones (a stack of unrelated images).
    run
        How slices are mapped (:func:`serial`, or a thread pool's map).
    check
        Called before each slice is decomposed; may raise to abandon the volume.
    sink
        ``sink(output, slice, values)`` receives each new slice as it is computed; the
        returned lists are then empty (the caller stores the values, say as float32).

    Returns
    -------
    list of list
        ``[output][slice]`` float64 ``(c, h, w)`` on the slices' device, unclipped (the
        caller saturates for its unit).
    """
    if reference is None and all(c is None for c in coefficients):
        raise ValueError("need a reference, coefficients, or both")
    masks = _masks(slices, masks)
    count = len(slices)

    def decompose(i: int) -> list[Bands]:
        if check is not None:
            check()
        return decompose_channels(slices[i], fractions, masks[i])

    cache: list[list[Bands] | None] = [None] * count
    stats: list[Moments | None] = [None] * count
    if reference is not None and not per_slice and count > 1:
        stats = _pooled(_groups(slices, groups), decompose, run, cache, cache_bytes)
    outputs: list[list[Array]] = [[None] * count if sink is None else [] for _ in coefficients]

    def apply(i: int) -> None:
        bands = cache[i] or decompose(i)
        cache[i] = None
        inside = masks[i]
        outside = None if inside is None else ~bands[0].xp.as_bool(inside, bands[0].x)
        for j, coefs in enumerate(coefficients):
            new = transform(
                bands, reference=reference, coefficients=coefs, clip=False, stats=stats[i]
            )
            if outside is not None:  # outside the mask: the input's values
                new[:, outside] = bands[0].xp.float64(slices[i])[:, outside]
            if sink is None:
                outputs[j][i] = new
            else:
                sink(j, i, new)

    run(apply, range(count))
    return outputs


def _masks(slices: Sequence[Array], masks: Sequence[Array | None] | None) -> list[Array | None]:
    if masks is None:
        return [None] * len(slices)
    if len(masks) != len(slices):
        raise ValueError(f"{len(masks)} masks for {len(slices)} slices")
    return list(masks)


def _groups(slices: Sequence[Array], groups: Sequence[Sequence[int]] | None) -> list[list[int]]:
    if groups is None:
        return [list(range(len(slices)))]
    return [list(g) for g in groups]
