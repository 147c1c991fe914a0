"""The midground painter: figures where the prior is high, shaded from the control map's relief, with skin and cloth
tones from the palette and a rim light on the side facing the light; a flat plain backdrop elsewhere.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..base import RenderRequest
from .paint import _blur, _c, _grad, _lambert, _laplace, _mix, _normals, _rim, _smoothstep, _tiles, coverage
from .palette import _HAIRS, _Palette, _SKINS


def _paint_midground(req: RenderRequest, pal: _Palette, light: np.ndarray, rng: np.random.Generator,
                     backdrop: np.ndarray) -> np.ndarray:
    prior = coverage(req)
    H, W = prior.shape
    out = np.empty((3, H, W), np.float32)
    out[:] = _c(backdrop)
    # Work only in the box around the figures (plus room for the rim-light blur); the rest is backdrop.
    rows, cols = np.nonzero(prior.any(axis=1))[0], np.nonzero(prior.any(axis=0))[0]
    if rows.size == 0:
        return out
    m = 16
    box = (slice(max(0, rows[0] - m), min(H, rows[-1] + m + 1)), slice(max(0, cols[0] - m), min(W, cols[-1] + m + 1)))
    out[(slice(None),) + box] = _paint_figures(np.asarray(req.control, np.float32)[box], prior[box], H, min(W, H),
                                               pal, light, rng, backdrop)
    return out


def _paint_figures(n: np.ndarray, p: np.ndarray, frame_h: int, frame_min: int, pal: _Palette, light: np.ndarray,
                   rng: np.random.Generator, backdrop: np.ndarray) -> np.ndarray:
    """Figures for the part of the frame in `n` / `p`; strengths follow the whole frame's size."""
    H, W = n.shape
    scale = frame_min / 512.0
    ns = _blur(n, 1.0)
    gx, gy = _grad(ns)
    lap = _laplace(ns)
    pb = _blur(p, 3.0 * scale + 0.5)
    pgx, pgy = _grad(pb)

    # Which figure each pixel belongs to (labelled on the faint edge too, so anti-aliased pixels get their
    # figure's colours), and where it lies inside that figure: t = 0 at the top of the head, 1 at the feet.
    labels, count = ndimage.label(p > 0.02)
    top = np.zeros(count + 1, np.float32)
    inv_h = np.ones(count + 1, np.float32)
    cx = np.zeros(count + 1, np.float32)
    # Only upright pieces get a figure's anatomy (head, hair, bare arms, sash); other shapes (a band of a
    # user's depth map, a prop) are painted as draped cloth.
    upright = np.zeros(count + 1, np.float32)
    if count:
        boxes = ndimage.find_objects(labels)
        top[1:] = [b[0].start for b in boxes]
        inv_h[1:] = [1.0 / (b[0].stop - b[0].start) for b in boxes]
        upright[1:] = [(b[0].stop - b[0].start) > 1.4 * (b[1].stop - b[1].start) for b in boxes]
        # Centre of mass on every other pixel: plenty for a figure, four times cheaper.
        flat, ps = labels[::2, ::2].ravel(), p[::2, ::2]
        weight = np.bincount(flat, weights=ps.ravel(), minlength=count + 1)
        cols = (ps * np.arange(0, W, 2, dtype=np.float32)[None, :]).ravel()
        cx[:] = np.bincount(flat, weights=cols, minlength=count + 1) / np.maximum(weight, 1e-6)

    # Neighbouring figures swap their two cloth colours, so they read as different people.
    # The seed picks which figure starts, and each figure's skin, hair and the fall of its folds.
    swap = ((np.arange(count + 1) + int(rng.integers(0, 2))) % 2).astype(np.float32)
    skin_tab = _mix(_SKINS[rng.integers(0, len(_SKINS), count + 1)], pal.accent, 0.12)
    hair_tab = _HAIRS[rng.integers(0, len(_HAIRS), count + 1)]
    fold_freq = rng.uniform(40.0, 80.0, count + 1).astype(np.float32)
    fold_phase = rng.uniform(0.0, 2 * np.pi, count + 1).astype(np.float32)
    cloth_c, cloth2_c, accent_c, back_c = _c(pal.cloth), _c(pal.cloth2), _c(pal.accent), _c(backdrop)
    sash_c = _c(pal.accent * 0.9)
    out = np.empty((3, H, W), np.float32)
    out[:] = back_c
    for rs, cs in _tiles(p):
        lab = labels[rs, cs]
        b_p = p[rs, cs]
        v = np.arange(rs.start, rs.stop, dtype=np.float32)[:, None]
        u = np.arange(cs.start, cs.stop, dtype=np.float32)[None, :]
        ih = inv_h[lab]
        t = (v - top[lab]) * ih
        dxn = (u - cx[lab]) * ih
        adx = np.abs(dxn)
        # Parts by position in the figure, with edges anti-aliased over about a pixel (hpx = pixels per unit).
        figure = upright[lab]
        hpx = 1.0 / ih
        head = np.clip(np.minimum(0.16 - t, 0.08 - adx) * hpx + 0.5, 0.0, 1.0)
        arm = np.clip(np.minimum(adx - 0.125, 0.62 - t) * hpx + 0.5, 0.0, 1.0)
        skin = np.maximum(head, arm) * figure
        hair = head * np.clip((0.06 + 0.25 * adx - t) * hpx + 0.5, 0.0, 1.0) * figure
        legs = _smoothstep(0.52, 0.54, t)
        sw = swap[lab]
        lower = legs + sw - 2.0 * legs * sw                 # legs, or the upper body on swapped figures
        sash = ((t > 0.445) & (t < 0.48)) * (1.0 - skin) * figure
        folds = 0.88 + 0.12 * np.sin(dxn * fold_freq[lab] + t * 6.0 + fold_phase[lab])
        cloth = (1.0 - skin) * (1.0 - sash) * folds

        # Shading: key light, creases darkened by concave curvature, rim light on edges facing the light.
        normals = _normals(gx[rs, cs], gy[rs, cs], 0.9 * frame_h)
        crease = np.clip(lap[rs, cs] * (400.0 * scale), 0.0, 0.5)
        sp = (0.42 + 0.68 * _lambert(normals, light)) * (1.0 - crease) * b_p
        b_pb = pb[rs, cs]
        rim = (_rim(_normals(pgx[rs, cs], pgy[rs, cs], 3.0), light, sharp=False) * np.clip((1.0 - b_pb) * 2.6, 0.0, 1.0)
               + 0.6 * _rim(normals, light) * np.clip(1.0 - normals[2], 0.0, 1.0))
        col = (cloth_c * (cloth * (1.0 - lower) * sp) + cloth2_c * (cloth * lower * sp)
               + np.stack([np.take(skin_tab[:, k], lab) for k in range(3)]) * (skin * (1.0 - hair) * sp)
               + np.stack([np.take(hair_tab[:, k], lab) for k in range(3)]) * (hair * sp) + sash_c * (sash * sp)
               + accent_c * (0.85 * np.clip(rim, 0.0, 1.0) * b_p))
        out[:, rs, cs] = col + back_c * (1.0 - b_p)
    return out
