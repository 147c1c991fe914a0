"""The foreground painter: debris where the prior is high (velvet folds, glass shards, chain links, rocks, glinting
particles); a flat plain backdrop elsewhere.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..base import RenderRequest
from .paint import WHITE, _blur, _c, _grad, _lambert, _mix, _normals, _rim, _stamp_glows, _tiles, coverage
from .palette import _Palette

# Materials: velvet, metal (chain), glass (shards), rock / prop, particle.
_VELVET, _METAL, _GLASS, _ROCK, _PARTICLE = range(5)
#                      ambient diffuse sheen specular rim
_MATERIAL_LIGHT = np.array([[0.22, 0.6, 0.6, 0.15, 0.35],
                            [0.25, 0.8, 0.2, 1.2, 0.6],
                            [0.45, 0.45, 0.3, 1.5, 0.9],
                            [0.35, 0.8, 0.1, 0.1, 0.5],
                            [0.7, 0.5, 0.0, 0.6, 0.4]], np.float32)


def _debris_materials(p: np.ndarray, control: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The pieces of debris (a label per pixel), the material of each piece, and how many pieces there are.

    Pieces are the prior split along steps in depth, so a chain lying across a drape is a piece of its own.
    Big and hanging in from the frame = velvet; ring-like (a hole through which something farther shows) = metal;
    long and thin = glass; tiny = particle; anything else = rock / prop.
    """
    H, W = p.shape
    solid = p > 0.5
    step = np.zeros((H, W), bool)
    sx = np.abs(np.diff(control, axis=1)) > 0.012
    sy = np.abs(np.diff(control, axis=0)) > 0.012
    step[:, 1:] |= sx
    step[:, :-1] |= sx
    step[1:] |= sy
    step[:-1] |= sy
    labels, count = ndimage.label(solid & ~step)
    if count == 0:
        return labels, np.full(1, _ROCK, np.int8), 0
    # Shape statistics on every other pixel: plenty to tell a speck from a shard, four times cheaper.
    flat = labels[::2, ::2].ravel()
    hs, ws = labels[::2, ::2].shape
    uu = np.broadcast_to(np.arange(ws, dtype=np.float64)[None, :], (hs, ws)).ravel()
    vv = np.broadcast_to(np.arange(hs, dtype=np.float64)[:, None], (hs, ws)).ravel()
    a = np.maximum(np.bincount(flat, minlength=count + 1), 1.0)
    area = a * 4.0
    mx, my = np.bincount(flat, uu, count + 1) / a, np.bincount(flat, vv, count + 1) / a
    sxx = np.bincount(flat, uu * uu, count + 1) / a - mx * mx + 0.1
    syy = np.bincount(flat, vv * vv, count + 1) / a - my * my + 0.1
    sxy = np.bincount(flat, uu * vv, count + 1) / a - mx * my
    tr, det = sxx + syy, sxx * syy - sxy * sxy
    disc = np.sqrt(np.maximum(tr * tr / 4 - det, 0.0))
    elong = np.sqrt((tr / 2 + disc) / np.maximum(tr / 2 - disc, 1e-6))
    frame = float(W * H)
    speck = (0.016 * min(W, H)) ** 2 * 3.2
    material = np.full(count + 1, _ROCK, np.int8)
    material[(elong > 2.0) & (area < 0.006 * frame)] = _GLASS
    material[area < speck] = _PARTICLE
    # Velvet: big pieces hanging in from the frame (drapes, the heap along the bottom edge).
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    on_edge = np.zeros(count + 1, bool)
    on_edge[edge_labels] = True
    material[(area >= 0.006 * frame) & on_edge] = _VELVET
    # Rings: a hole through the piece where something clearly farther shows (the "holes" of a drape hold
    # nearer debris, or a slightly lower heap).
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or area[k] < speck or area[k] > 0.03 * frame:
            continue
        piece = labels[box] == k
        # Holes: parts of the box outside the piece that do not reach the box's border.
        outside, n_out = ndimage.label(~piece)
        if n_out < 2:
            continue
        reach = np.unique(np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]]))
        enclosed = np.ones(n_out + 1, bool)
        enclosed[reach] = False
        enclosed[0] = False
        hole = enclosed[outside]
        n_hole = int(hole.sum())
        if n_hole >= 4 and n_hole >= 0.06 * (n_hole + area[k]) and \
                control[box][hole].mean() < control[box][piece].mean() - 0.03:
            material[k] = _METAL
    material[0] = _ROCK
    # Depth steps and soft rims take the piece next to them (two rounds of a 3 x 3 maximum, only where needed).
    ys, xs = np.nonzero((labels == 0) & (p > 0))
    for _ in range(2):
        if ys.size == 0:
            break
        pad = np.pad(labels, 1)
        grown = np.zeros(ys.size, labels.dtype)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.maximum(grown, pad[ys + dy, xs + dx], out=grown)
        labels[ys, xs] = grown
        ys, xs = ys[grown == 0], xs[grown == 0]
    return labels, material, count


def _paint_foreground(req: RenderRequest, pal: _Palette, light: np.ndarray, rng: np.random.Generator,
                      backdrop: np.ndarray) -> np.ndarray:
    n = np.asarray(req.control, np.float32)
    p = coverage(req)
    H, W = n.shape
    scale = min(W, H) / 512.0
    gx, gy = _grad(_blur(n, 0.8))
    pieces, material, count = _debris_materials(p, n)
    # The seed varies each piece's tone a little, as a model varies its props.
    tone = rng.uniform(0.78, 1.18, count + 1).astype(np.float32)
    materials = np.stack([
        pal.deep,                                                              # velvet
        _mix(pal.accent, np.array((0.55, 0.45, 0.25), np.float32), 0.35),     # gilded metal
        _mix(np.array((0.75, 0.86, 0.92), np.float32), pal.haze, 0.3),        # glass
        _mix(np.array((0.36, 0.31, 0.28), np.float32), pal.cloth2, 0.25),     # rock / prop
        _mix(pal.accent, WHITE, 0.3),                                         # particle
    ]).astype(np.float32)
    # Per piece: base colour (count + 1, 3) and light gains (count + 1, 5).
    piece_base = materials[material]
    piece_gain = _MATERIAL_LIGHT[material].copy()
    piece_gain[:, :3] *= tone[:, None]
    accent_c, back_c = _c(pal.accent), _c(backdrop)
    out = np.empty((3, H, W), np.float32)
    out[:] = back_c
    spec_full = np.zeros((H, W), np.float32)
    for rs, cs in _tiles(p):
        b_p, b_k = p[rs, cs], pieces[rs, cs]
        normals = _normals(gx[rs, cs], gy[rs, cs], 1.4 * H)
        nz = normals[2]
        lam = _lambert(normals, light)
        rim = _rim(normals, light)
        spec = np.clip(2.0 * lam * nz - light[2], 0.0, 1.0)            # reflection of the light toward the viewer
        spec *= spec
        spec *= spec
        spec *= spec
        spec = spec * spec * spec                                       # ^24
        spec_full[rs, cs] = spec
        sheen = 1.0 - nz
        sheen *= np.sqrt(sheen)
        g = [np.take(piece_gain[:, k], b_k) for k in range(5)]
        diffuse = (g[0] + g[1] * lam + g[2] * sheen) * b_p
        base = np.stack([np.take(piece_base[:, k], b_k) for k in range(3)])
        out[:, rs, cs] = (base * diffuse + (g[3] * spec * b_p)[None] + accent_c * (g[4] * rim * b_p)
                          + back_c * (1.0 - b_p))

    # A few glints on shards, chain links and particles.
    ys, xs = np.nonzero((spec_full > 0.5) & (p > 0.9))
    shiny = ((material != _VELVET) & (material != _ROCK))[pieces[ys, xs]]
    ys, xs = ys[shiny], xs[shiny]
    if ys.size:
        pick = rng.choice(ys.size, size=min(14, ys.size), replace=False)
        radii = rng.uniform(1.0, 2.2, pick.size) * scale + 0.6
        _stamp_glows(out, zip(xs[pick] + 0.5, ys[pick] + 0.5), radii, [_mix(pal.accent, WHITE, 0.7)] * pick.size,
                     mask=p)
    return out
