"""Filling unknown pixels from known ones: a weighted multi-scale push-pull (vectorised, no loop over pixels).

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
    """Bilinear upsampling by 2 (cell centres aligned), cropped to ``shape``."""
    ch, cw = coarse.shape[:2]
    # Fine pixel i sits at coarse coordinate (i + 0.5) / 2 - 0.5.
    ys = np.clip((np.arange(shape[0], dtype=np.float32) + 0.5) / 2 - 0.5, 0, ch - 1)
    xs = np.clip((np.arange(shape[1], dtype=np.float32) + 0.5) / 2 - 0.5, 0, cw - 1)
    y0 = ys.astype(np.intp)
    x0 = xs.astype(np.intp)
    y1 = np.minimum(y0 + 1, ch - 1)
    x1 = np.minimum(x0 + 1, cw - 1)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    # Separable: rows first on the small array, then columns.
    rows = coarse[y0]
    rows += (coarse[y1] - rows) * fy
    out = rows[:, x0]
    out += (rows[:, x1] - out) * fx
    return out
