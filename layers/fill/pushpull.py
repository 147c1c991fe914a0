"""A smooth fill of unknown pixels from known ones: a weighted multi-scale push-pull (vectorised, no loop over pixels).

Push: the known values, each with a confidence weight, are averaged 2x2 -> 1 level by level (weights summed,
values weight-averaged) until every cell of the coarsest level holds something. Pull: from the coarsest level
back up, each level keeps its own values where it is confident and takes the (bilinearly upsampled) coarser
level where it is not. A hole is thus filled by the values around it, smoothly, from its own edge inwards,
and never by anything whose weight is 0: which pixels may feed a fill is decided entirely by the weights.
"""
from __future__ import annotations

import numpy as np

__all__ = ["push_pull"]


def push_pull(values: np.ndarray, weights: np.ndarray, *, sharpness: float = 1.0) -> np.ndarray:
    """Fill every pixel from the weighted known pixels.

    Args:
        values: float (H, W) or (H, W, C).
        weights: float (H, W) >= 0: how much each pixel's value is trusted (0 = unknown, 1 = known).
        sharpness: how fast a level's own values take over from the coarser fill as their weight grows
            (> 0); larger keeps fills closer to the nearest known pixels.

    Returns:
        float32 array shaped like ``values``: the known pixels (weight >= 1) unchanged, the rest filled.

    Raises:
        ValueError: mismatched shapes, negative weights, or no pixel with a positive weight.
    """
    v = np.asarray(values, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32)
    flat = v.ndim == 2
    if flat:
        v = v[..., None]
    if v.ndim != 3 or w.shape != v.shape[:2]:
        raise ValueError(f"weights {w.shape} must match the values' (H, W) {v.shape[:2]}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and >= 0")
    if not (w > 0).any():
        raise ValueError("nothing to fill from: every weight is 0")
    if not sharpness > 0:
        raise ValueError(f"sharpness must be > 0, got {sharpness!r}")
    out = _pull(v * w[..., None], w, sharpness)
    return out[..., 0] if flat else out


def _pull(wv: np.ndarray, w: np.ndarray, sharpness: float) -> np.ndarray:
    h, wd = w.shape
    mean = wv / np.maximum(w, np.float32(1e-12))[..., None]
    if (w > 0).all() or (h == 1 and wd == 1):
        return mean
    coarse = _pull(*_down(wv, w), sharpness)
    out = _up(coarse, (h, wd))
    trust = np.minimum(w * np.float32(sharpness), np.float32(1.0))[..., None]
    out += (mean - out) * trust
    return out


def _down(wv: np.ndarray, w: np.ndarray):
    """2x2 sums (odd sizes padded with zero weight)."""
    h, wd = w.shape
    ph, pw = h % 2, wd % 2
    if ph or pw:
        wv = np.pad(wv, ((0, ph), (0, pw), (0, 0)))
        w = np.pad(w, ((0, ph), (0, pw)))
    # Strided adds: several times faster than a reshape + sum over two axes.
    return (wv[0::2, 0::2] + wv[1::2, 0::2] + wv[0::2, 1::2] + wv[1::2, 1::2],
            w[0::2, 0::2] + w[1::2, 0::2] + w[0::2, 1::2] + w[1::2, 1::2])


def _up(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling by 2 (cell centres aligned, edges repeated), cropped to ``shape``.

    Fine pixel 2i sits at coarse coordinate i - 1/4 and 2i + 1 at i + 1/4, so the weights are fixed (3/4 on the
    cell, 1/4 on its neighbour): shifted slices instead of gathers, rows first then columns.
    """
    q, t = np.float32(0.25), np.float32(0.75)
    rows = _twice(coarse, 0, q, t)[:shape[0]]
    return _twice(rows, 1, q, t)[:, :shape[1]]


def _twice(a: np.ndarray, axis: int, q: np.float32, t: np.float32) -> np.ndarray:
    n = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (1, 1)
    p = np.pad(a, pad, mode="edge")
    take = lambda start: p[(slice(None),) * axis + (slice(start, start + n),)]  # noqa: E731
    mid = a * t
    shape = list(a.shape)
    shape[axis] = 2 * n
    out = np.empty(shape, np.float32)
    even = (slice(None),) * axis + (slice(0, None, 2),)
    odd = (slice(None),) * axis + (slice(1, None, 2),)
    out[even] = mid + take(0) * q
    out[odd] = mid + take(2) * q
    return out
