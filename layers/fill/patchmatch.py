"""PatchMatch kernels (numba, compiled once and cached on disk).

A nearest-neighbour field maps every patch centre that touches the hole to the centre of a source patch (a
patch whose pixels are all sources). ``patchmatch`` improves such a field by propagation (a neighbour's match,
shifted by one pixel, is tried: coherent copies grow) and random search (candidates around the current match
at halving radii), scanning forward and backward in turn (Barnes et al. 2009). ``peel`` builds a first field
where there is none, from the hole's edge inwards, each pixel matched on what is already known around it.

The distance of two patches is their squared colour difference over the pixels that count at the first
patch, plus the squared difference of a guide (the depth) at their centres. Everything runs in one thread,
in a fixed order, from a seeded generator: the same seed gives the same field.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_MULT = 6364136223846793005
_INC = 1442695040888963407
_MASK = (1 << 63) - 1


@njit(cache=True, nogil=True)
def _draw(state, n):
    """(new state, an integer in [0, n)): a 63-bit linear congruential step, read from its high bits."""
    state = (state * _MULT + _INC) & _MASK
    return state, (state >> 31) % n


@njit(cache=True, nogil=True)
def patch_cost(img, valid, guide, py, px, qy, qx, r, limit):
    """Distance between the patch at (py, px) and the source patch at (qy, qx); only pixels ``valid`` at p
    count. Stops early once the sum passes ``limit`` (the caller only wants to know whether it beats it)."""
    h, w = valid.shape
    s = 0.0
    for g in range(guide.shape[2]):
        d = guide[py, px, g] - guide[qy, qx, g]
        s += d * d
    for dy in range(-r, r + 1):
        y = py + dy
        if y < 0 or y >= h:
            continue
        yq = qy + dy
        for dx in range(-r, r + 1):
            x = px + dx
            if x < 0 or x >= w or not valid[y, x]:
                continue
            xq = qx + dx
            for c in range(img.shape[2]):
                d = img[y, x, c] - img[yq, xq, c]
                s += d * d
        if s >= limit:
            return s
    return s


@njit(cache=True, nogil=True)
def _search(img, valid, guide, src_ok, py, px, by, bx, best, r, reach, state):
    """Random search around the match (by, bx) at radii reach, reach/2, ..., 1 -> (by, bx, best, state)."""
    h, w = valid.shape
    radius = reach
    while radius >= 1:
        state, oy = _draw(state, 2 * radius + 1)
        state, ox = _draw(state, 2 * radius + 1)
        qy = min(max(by + oy - radius, 0), h - 1)
        qx = min(max(bx + ox - radius, 0), w - 1)
        if src_ok[qy, qx] and not (qy == by and qx == bx):
            c = patch_cost(img, valid, guide, py, px, qy, qx, r, best)
            if c < best:
                best, by, bx = c, qy, qx
        radius //= 2
    return by, bx, best, state


@njit(cache=True, nogil=True)
def patchmatch(img, valid, guide, src_ok, cy, cx, index, ny, nx, scans, r, reach, state):
    """Improve the field (ny, nx) of the centres (cy, cx) in place; returns the generator's state.

    Args:
        img: float32 (H, W, C), the current picture (sources exact, the hole as filled so far).
        valid: bool (H, W): pixels that count in a patch's distance (sources, the hole, a known edge).
        guide: float32 (H, W, G): a guide per pixel (the depth, weighted), compared at the centres.
        src_ok: bool (H, W): centres of patches made of sources only.
        cy, cx: int64 (N,): the patch centres to match, in raster order.
        index: int64 (H, W): position of each centre in cy/cx, -1 elsewhere.
        ny, nx: int64 (N,): the field (updated).
        scans: scans over the centres (forward, backward, ...).
        r: patch radius.
        reach: largest radius of the random search.
        state: the generator's state.
    """
    h, w = valid.shape
    n = cy.shape[0]
    cost = np.empty(n, np.float64)
    for i in range(n):
        cost[i] = patch_cost(img, valid, guide, cy[i], cx[i], ny[i], nx[i], r, np.inf)
    for it in range(scans):
        step = 1 if it % 2 == 0 else -1
        i = 0 if step == 1 else n - 1
        for _ in range(n):
            py, px = cy[i], cx[i]
            for k in range(2):
                yy = py if k == 0 else py - step
                xx = px - step if k == 0 else px
                if yy < 0 or yy >= h or xx < 0 or xx >= w:
                    continue
                j = index[yy, xx]
                if j < 0:
                    continue
                qy = ny[j] + py - yy
                qx = nx[j] + px - xx
                if qy < 0 or qy >= h or qx < 0 or qx >= w or not src_ok[qy, qx] or (qy == ny[i] and qx == nx[i]):
                    continue
                c = patch_cost(img, valid, guide, py, px, qy, qx, r, cost[i])
                if c < cost[i]:
                    cost[i], ny[i], nx[i] = c, qy, qx
            ny[i], nx[i], cost[i], state = _search(img, valid, guide, src_ok, py, px, ny[i], nx[i], cost[i], r,
                                                   reach, state)
            i += step
    return state


@njit(cache=True, nogil=True)
def peel(img, known, guide, src_ok, src_y, src_x, hy, hx, my, mx, r, samples, state):
    """Fill the hole pixels (hy, hx) one by one, in that order (from the hole's edge inwards): each takes the
    centre of the source patch most like what is known around it (the sources, and the pixels filled before).

    Candidates: the matches of filled neighbours, shifted by one pixel (a structure carries on), ``samples``
    random source centres, then a search around the best. ``my``/``mx`` (H, W) receive each pixel's match and
    ``known`` marks it filled. Returns the generator's state."""
    h, w = known.shape
    n_src = src_y.shape[0]
    for i in range(hy.shape[0]):
        py, px = hy[i], hx[i]
        best = np.inf
        by, bx = src_y[0], src_x[0]
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                yy, xx = py + dy, px + dx
                if (dy == 0 and dx == 0) or yy < 0 or yy >= h or xx < 0 or xx >= w or my[yy, xx] < 0:
                    continue
                qy, qx = my[yy, xx] - dy, mx[yy, xx] - dx
                if qy < 0 or qy >= h or qx < 0 or qx >= w or not src_ok[qy, qx]:
                    continue
                c = patch_cost(img, known, guide, py, px, qy, qx, r, best)
                if c < best:
                    best, by, bx = c, qy, qx
        for _ in range(samples):
            state, k = _draw(state, n_src)
            c = patch_cost(img, known, guide, py, px, src_y[k], src_x[k], r, best)
            if c < best:
                best, by, bx = c, src_y[k], src_x[k]
        by, bx, best, state = _search(img, known, guide, src_ok, py, px, by, bx, best, r, 4 * r, state)
        for c in range(img.shape[2]):
            img[py, px, c] = img[by, bx, c]
        known[py, px] = True
        my[py, px], mx[py, px] = by, bx
    return state
