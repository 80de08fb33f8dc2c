"""A plain float64 full-SVD implementation of METHOD.md, written independently of the package.

It is slow and obvious on purpose: the package's outputs are checked against it.
"""

from __future__ import annotations

import math

import numpy as np


def ranks(r: int, fractions: tuple[float, ...]) -> list[int]:
    return [max(1, min(r, math.floor(f * r + 0.5))) for f in fractions]


def components(x: np.ndarray, fractions: tuple[float, ...] = (0.07, 0.2, 0.5)) -> np.ndarray:
    """``(n + 1, h, w)``: base, bands, finest band, by rank-k reconstructions."""
    x = np.asarray(x, dtype=np.float64)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    ks = ranks(len(s), fractions)

    def recon(k: int) -> np.ndarray:
        return (u[:, :k] * s[:k]) @ vt[:k]

    out = [recon(ks[0])]
    out += [recon(b) - recon(a) for a, b in zip(ks, ks[1:])]
    out.append(x - recon(ks[-1]))
    return np.stack(out)


def stats(x: np.ndarray, fractions: tuple[float, ...] = (0.07, 0.2, 0.5)) -> tuple:
    c = components(x, fractions)
    return c.mean(axis=(1, 2)), c.std(axis=(1, 2))


def harmonize_channel(x, ref_mean, ref_std, fractions=(0.07, 0.2, 0.5), zero=1e-6):
    comps = components(x, fractions)
    out = np.zeros_like(comps[0])
    for c, big_m, big_s in zip(comps, ref_mean, ref_std):
        m, s = c.mean(), c.std()
        out += (c - m) / s * big_s + big_m if s > zero else c - m + big_m
    return out


def deharmonize_channel(x, coefficients, fractions=(0.07, 0.2, 0.5)):
    comps = components(x, fractions)
    return sum(a * c for a, c in zip(coefficients, comps))


def combined_channel(x, ref_mean, ref_std, coefficients, fractions=(0.07, 0.2, 0.5)):
    comps = components(x, fractions)
    base = comps[0]
    m, s = base.mean(), base.std()
    out = (base - m) / s * ref_std[0] + ref_mean[0] if s > 1e-6 else base - m + ref_mean[0]
    return out + sum(a * c for a, c in zip(coefficients[1:], comps[1:]))


def to_stored(x: np.ndarray, bits: int) -> np.ndarray:
    top = 2**bits - 1
    return np.rint(np.clip(x, 0, 1) * top).astype(np.int64)
