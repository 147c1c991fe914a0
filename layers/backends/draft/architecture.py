"""The background painter: a complete, opaque painting of the architecture the control map describes.

Surfaces are shaded by their depth (far = hazy, lighter and cooler; near = darker and more saturated), with
perspective floor tiles, ribs and arches along lines of equal depth, glowing windows, a portal on the far wall and
lantern-stars.
"""
from __future__ import annotations

import numpy as np

from ..base import RenderRequest
from .paint import (IVORY, WHITE, _bands, _blur, _c, _grad, _lambert, _laplace, _mix, _normals, _rim, _smoothstep,
                    _stamp_glows)
from .palette import _Palette


def _paint_background(req: RenderRequest, pal: _Palette, light: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = np.asarray(req.control, np.float32)
    H, W = n.shape
    scale = min(W, H) / 512.0
    ns = _blur(n, 1.0)
    nmin, nmax = float(ns.min()), float(ns.max())
    span = max(nmax - nmin, 1e-3)
    gx, gy = _grad(ns)

    # Pseudo distance from nearness (nearness is about affine in inverse distance), 1 at the nearest pixel.
    off = min(0.05, nmin) - 0.005
    z = 1.0 / np.maximum(ns - off, 1e-3)
    z_near = float(z.min())
    z *= 1.0 / z_near
    relief = ns - _blur(ns, 5.0 * scale)
    lap = _laplace(ns)

    # Vanishing point: the middle of the farthest region; the horizon from the floor's nearness ramp if any.
    rows, cols = np.nonzero(ns[::2, ::2] <= nmin + 0.06 * span)
    rows, cols = rows * 2, cols * 2
    vx = float(cols.mean()) if cols.size else W / 2
    vy = float(rows.mean()) if rows.size else H / 2
    sub = (slice(int(vy) + 1, None, 3), slice(None, None, 3))
    fr, fc = np.nonzero((gy[sub] > 2.5 * np.abs(gx[sub])) & (gy[sub] * H > 0.05))
    if fr.size > 50:
        # Least-squares line through the floor's nearness down the rows; the horizon is where it meets `off`.
        rr = fr * 3.0 + int(vy) + 1
        nn = ns[sub][fr, fc].astype(np.float64)
        slope = float(np.mean((rr - rr.mean()) * (nn - nn.mean())) / max(np.var(rr), 1e-9))
        icpt = float(nn.mean() - slope * rr.mean())
        if slope > 1e-6:
            vy = float(np.clip((off - icpt) / slope, 0, H))

    # The portal on the far wall: an arched doorway of light, painted in its own box after the bands.
    portal = None
    if rows.size:
        fw = float(cols.max() - cols.min() + 1)
        fh = float(rows.max() - rows.min() + 1)
        # A doorway in proportion to the far wall, never a slab of light over a whole sky.
        pw = float(np.clip(0.2 * fw, 4.0 * scale, 0.09 * W))
        p_bottom = float(rows.max())
        p_spring = p_bottom - float(np.clip(0.45 * fh, 2.0 * pw, 0.3 * H))
        px = vx + rng.uniform(-0.15, 0.15) * fw
        reach = 30.0 * scale + 3.0
        y0, y1 = int(max(0, p_spring - pw - reach)), int(min(H, p_bottom + reach + 1))
        x0, x1 = int(max(0, px - pw - reach)), int(min(W, px + pw + reach + 1))
        if y0 < y1 and x0 < x1:
            du = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - px) / pw
            vv = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
            inside = (np.abs(du) <= 1.0) & (vv <= p_bottom) & (
                (vv >= p_spring) | (du * du + ((vv - p_spring) / pw) ** 2 <= 1.0))
            door = _blur(inside.astype(np.float32), 0.8)
            portal = (slice(y0, y1), slice(x0, x1), door, _blur(door, 10.0 * scale))

    deep, accent, haze = pal.deep, pal.accent, pal.haze
    stone = _mix(np.array((0.62, 0.58, 0.54), np.float32), deep, 0.35)
    tile_light, tile_dark = _c(_mix(deep, IVORY, 0.55)), _c(deep * 0.35)
    wall_c, ceil_c, far_c, stone_c = _c(deep * 0.9), _c(deep * 0.55 + 0.05), _c(_mix(deep, stone, 0.4)), _c(stone)
    accent_c, haze_c = _c(accent), _c(haze)
    window_c, portal_c = _c(_mix(accent, IVORY, 0.35) * 0.9), _c(_mix(accent, WHITE, 0.6))
    u = np.arange(W, dtype=np.float32)[None, :] + 0.5
    tile, rib_step = 0.16, 0.9
    win_w, spring_y, bottom_y = 0.42, 0.35, -0.45
    out = np.empty((3, H, W), np.float32)

    for rs in _bands(H):
        v = np.arange(rs.start, rs.stop, dtype=np.float32)[:, None] + 0.5
        b_ns, b_gx, b_gy, b_z, b_rel = ns[rs], gx[rs], gy[rs], z[rs], relief[rs]
        far = np.clip((nmax - b_ns) * (1.0 / span), 0.0, 1.0)
        X = (u - vx) * b_z * (1.0 / H)
        Y = (vy - v) * b_z * (1.0 / H)

        # Surface classes, soft: floor (nearer downward), ceiling (nearer upward), walls (sideways), far / flat.
        gnorm = np.sqrt(b_gx * b_gx + b_gy * b_gy) + 1e-9
        b_zg = gnorm * b_z * b_z * z_near + 1e-6                          # |grad z|, from z = k / (n - off)
        flat = 1.0 - _smoothstep(0.02, 0.08, gnorm * H)
        inv_g = (1.0 - flat) / gnorm
        w_floor = _smoothstep(0.75, 0.95, b_gy * inv_g) * (v > vy)
        w_ceil = _smoothstep(0.6, 0.9, -b_gy * inv_g)
        w_wall = _smoothstep(0.6, 0.9, np.abs(b_gx) * inv_g)
        rest = np.clip(1.0 - w_floor - w_wall - w_ceil, 0.0, 1.0)
        column = _smoothstep(0.002, 0.008, b_rel) * (1.0 - w_floor)

        # Floor: polished tiles in perspective, fading to their average where they get smaller than a few pixels.
        sx, sz = np.sin(X * (np.pi / tile)), np.sin(b_z * (np.pi / (tile * 1.4)))
        checker = np.clip(sx * sz * 4.0, -1.0, 1.0) * _smoothstep(4.0, 14.0, tile / b_zg)
        grout = 0.75 + 0.25 * _smoothstep(0.0, 0.25, np.minimum(np.abs(sx), np.abs(sz)))

        # Walls and vault: ribs along lines of equal depth (transverse arches); arched windows in the bays.
        bay = b_z * (1.0 / rib_step)
        bay -= np.floor(bay)
        rib_px = rib_step / b_zg                                          # bay width in pixels
        rib_fade = _smoothstep(6.0, 16.0, rib_px)
        rib = 1.0 - _smoothstep(0.8 * scale, 2.2 * scale + 0.6, np.abs(np.abs(bay - 0.5) - 0.5) * rib_px)
        rib *= rib_fade * np.clip(w_wall + w_ceil, 0.0, 1.0)
        # Window = a rectangle under an elliptic arch, in (bay, height) wall coordinates; its edges are
        # anti-aliased from their distance in pixels.
        zc = (bay - 0.5) * 2.0
        yy = Y * 2.2
        px_y = H / (2.2 * b_z)                                          # pixels per unit of yy
        sides = (win_w - np.abs(zc)) * (0.5 * rib_px)
        arch = (1.0 - np.sqrt((zc * (1.0 / win_w)) ** 2 + ((yy - spring_y) * (1.0 / 0.45)) ** 2)) * np.minimum(
            win_w * 0.5 * rib_px, 0.45 * px_y)
        edge = np.minimum((yy - bottom_y) * px_y, np.maximum(np.minimum(sides, (spring_y - yy) * px_y), arch))
        window = np.clip(edge + 0.5, 0.0, 1.0) * w_wall * (1.0 - column) * rib_fade * (np.abs(b_rel) < 0.004)

        # Light: a broad key from the stated direction plus ambient; protruding relief catches a rim.
        normals = _normals(b_gx, b_gy, 0.9 * H)
        shade = 0.55 + 0.5 * _lambert(normals, light)
        ink = 1.0 - 0.45 * _smoothstep(0.004, 0.02, np.abs(lap[rs]))   # ink lines where the depth jumps
        # Atmospheric perspective: far = lighter, cooler, hazier; near = darker.
        fog = far * np.sqrt(far)
        keep = (1.0 - 0.72 * fog) * (0.78 + 0.22 * (1.0 - (1.0 - far) ** 2))
        k_surface = shade * ink * keep * (1.0 - 0.85 * rib)
        wf = w_floor * grout * k_surface
        ww = w_wall * k_surface
        col = (tile_light * (wf * (0.5 + 0.5 * checker)) + tile_dark * (wf * (0.5 - 0.5 * checker))
               + wall_c * (ww * (1.0 - 0.3 * column)) + stone_c * (ww * 0.3 * column)
               + ceil_c * (w_ceil * k_surface) + far_c * (rest * k_surface))
        rimlight = _rim(normals, light) * _smoothstep(0.001, 0.006, np.abs(b_rel))
        glow_k = 1.0 - 0.3 * fog
        col += accent_c * ((0.68 * rib * shade + 0.6 * rimlight) * ink * keep)
        col += haze_c * (0.72 * fog)
        col += window_c * (window * glow_k)
        if portal is not None and rs.stop > p_bottom:
            # The doorway's light spills over the floor toward the viewer.
            spill = np.exp(-(((u - px) / (pw * 1.6 + 0.1 * np.clip(v - p_bottom, 0, None))) ** 2))
            col += accent_c * (0.25 * spill * w_floor * (v > p_bottom) * glow_k)
        # A soft vignette keeps the eye in the middle of the frame.
        r2 = ((u - W / 2) * (2.0 / W)) ** 2 + ((v - H / 2) * (2.0 / H)) ** 2
        out[:, rs] = col * (1.0 - 0.22 * np.clip(r2 - 0.3, 0.0, 1.5))

    if portal is not None:
        ys, xs, door, halo = portal
        glow_k = 1.0 - 0.3 * np.clip((nmax - ns[ys, xs]) * (1.0 / span), 0.0, 1.0) ** 1.5
        out[:, ys, xs] += (portal_c * door + _c(accent) * (0.8 * halo)) * glow_k

    # Lantern-stars up in the vault / sky, smaller and dimmer with distance.
    count = int(rng.integers(26, 44))
    sxs = rng.uniform(0, W, count)
    sys_ = rng.uniform(0, max(vy, 1.0) * 0.95, count)
    zs = z[sys_.astype(int).clip(0, H - 1), sxs.astype(int).clip(0, W - 1)]
    radii = (rng.uniform(1.0, 2.6, count) * scale * np.clip(3.0 / zs, 0.5, 1.6)).clip(0.8)
    tints = [_mix(accent, WHITE, rng.uniform(0.2, 0.7)) * rng.uniform(0.5, 1.0) for _ in range(count)]
    _stamp_glows(out, zip(sxs, sys_), radii, tints)
    return out
