"""Filling a hole with texture: coarse-to-fine PatchMatch from the source pixels only, tones from the smooth fill.

1. **Pyramid.** The picture is halved until the hole is two or three patches across (or the picture or
   its source patches run out). A coarse pixel is a source only if all four of its children are (so nothing of
   a pixel that is not a source is ever copied), and part of the hole if any child is.
2. **Peel.** At the coarsest level the hole is filled from its edge inwards, pixel by pixel, each from the
   source patch most like what is already known around it; a filled neighbour's match, shifted by one pixel,
   is always a candidate, so an edge or a line that meets the hole carries on into it.
3. **Match and copy** (PatchMatch, Barnes et al. 2009): every patch touching the hole looks for the source
   patch most like it (colour; texture features, the local mean absolute gradients, Newson et al. 2014, which
   a coarse level keeps where its averaged colours have lost the fine texture: without them a flat patch is
   nearer to a texture than the same texture out of phase, and the fill comes out flat; plus the depth
   difference of the centres, so a hole takes texture from the layer's pixels at its own depth); each hole pixel
   copies the centre of its own patch's match; a few rounds per level. Copying centres keeps the texture as
   sharp as the source's (averaging what the overlapping patches vote for, tried first, blurred it).
4. **Upward.** The field of matches is carried to the next finer level (each match doubled), which starts from
   that coarse arrangement with the fine texture of the sources, and is refined there by a local search (at
   the two finest levels only near the hole's edge, where the fill meets the picture).
5. **Tones.** Below ``tone_sigma`` the colours are brought to the smooth push-pull fill's: patches from
   elsewhere in the picture carry their own shading, the surroundings of the hole decide it. Structure from
   diffusion, texture from patches (Bertalmio et al. 2003). Over the first ``feather`` pixels the fill fades
   linearly into the smooth one, so no seam shows where it meets the picture.

Deterministic for a seed: one thread, a fixed scan order, a seeded generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .pushpull import push_pull

__all__ = ["TextureSettings", "texture_fill"]


@dataclass(frozen=True)
class TextureSettings:
    """How a hole is filled with texture."""

    patch: int = 7
    """Side of the square patches compared and copied, in pixels (odd, 3..15)."""
    depth_weight: float = 4.0
    """How much a depth difference between a hole pixel and a source pixel counts against their colour
    difference (0..100; 0 = depth plays no part)."""
    tone_sigma: float = 4.0
    """Scale (Gaussian sigma, px) below which the colours follow the smooth fill, 0..32 (0 = the patches alone)."""
    feather: float = 3.0
    """Distance (px) over which the fill fades linearly into the smooth fill at the hole's edge, 0..16 (0 = no
    fade): no seam where the hole meets the picture, and the fill's own texture beyond it."""
    coarse_rounds: int = 3
    """Match-and-copy rounds per coarser level, 1..10."""
    fine_rounds: int = 1
    """Match-and-copy rounds at full size, 0..10 (where a round costs the most; 0: the coarser level's matches,
    doubled, are copied as they are)."""
    scans: int = 2
    """PatchMatch scans per round, 1..10."""
    samples: int = 32
    """Random source patches tried per pixel when the coarsest hole is peeled, 1..1000."""
    texture_weight: float = 3.0
    """Weight of the texture features (local mean absolute gradients) compared alongside the colours, 0..100
    (0 = colours alone): without them a flat patch is the nearest to a texture it does not line up with."""
    texture_window: int = 5
    """Side of the window the texture features average over, px (odd, 1..15)."""

    def __post_init__(self):
        if isinstance(self.patch, bool) or not isinstance(self.patch, int) or not 3 <= self.patch <= 15 \
                or self.patch % 2 == 0:
            raise ValueError(f"patch must be an odd whole number in 3..15, got {self.patch!r}")
        if not 0.0 <= self.depth_weight <= 100.0:
            raise ValueError(f"depth_weight must be in [0, 100], got {self.depth_weight!r}")
        if not 0.0 <= self.tone_sigma <= 32.0:
            raise ValueError(f"tone_sigma must be in [0, 32], got {self.tone_sigma!r}")
        if not 0.0 <= self.feather <= 16.0:
            raise ValueError(f"feather must be in [0, 16], got {self.feather!r}")
        if not 0.0 <= self.texture_weight <= 100.0:
            raise ValueError(f"texture_weight must be in [0, 100], got {self.texture_weight!r}")
        if isinstance(self.texture_window, bool) or not isinstance(self.texture_window, int) \
                or not 1 <= self.texture_window <= 15 or self.texture_window % 2 == 0:
            raise ValueError(f"texture_window must be an odd whole number in 1..15, got {self.texture_window!r}")
        for name, lo, hi in (("coarse_rounds", 1, 10), ("fine_rounds", 0, 10), ("scans", 1, 10), ("samples", 1, 1000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be a whole number in {lo}..{hi}, got {value!r}")


FINE_REACH = 2
"""Random search radius at the finer levels, in patches: the coarse levels have already searched far."""
FINE_BAND = 2
"""Centres refined at the finest levels: those within this many patches of the hole's edge."""
EDGE_LEVELS = 1
"""The levels up to this one (0 = full size) refine only near the hole's edge (FINE_BAND)."""
MIN_SOURCE_PATCHES = 16
"""A coarser level is only used while it has at least this many source patches."""


def texture_fill(image: np.ndarray, source: np.ndarray, hole: np.ndarray, *, depth: Optional[np.ndarray] = None,
                 known: Optional[np.ndarray] = None, seed: int = 0,
                 settings: TextureSettings = TextureSettings()) -> np.ndarray:
    """Fill the hole of a picture with patches of its source pixels.

    Args:
        image: float32 (H, W, C) or (H, W): the sources' values (and ``known``'s); the hole's values are ignored.
        source: bool (H, W): the pixels that may be copied into the hole.
        hole: bool (H, W): the pixels to fill (none of them a source).
        depth: float32 (H, W): every pixel's depth (the hole's completed depth); None = no depth preference.
        known: bool (H, W): pixels that are never copied but whose colour counts when a patch is compared (a
            layer's soft edge, next to the hole); None = the sources only.
        seed: the same seed gives the same fill.
        settings: patch size, depth preference, rounds.

    Returns:
        float32 shaped like ``image``: the hole filled, every other pixel unchanged. Where no whole patch fits
        in the sources, the hole takes the smooth fill instead (``push_pull``).

    Raises:
        ValueError: mismatched shapes, a pixel both source and hole, or no source pixel at all.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float32)
    flat = img.ndim == 2
    if flat:
        img = img[..., None]
    source = np.asarray(source, dtype=bool)
    hole = np.asarray(hole, dtype=bool)
    if img.ndim != 3 or source.shape != img.shape[:2] or hole.shape != img.shape[:2]:
        raise ValueError(f"source {source.shape} and hole {hole.shape} must match the image's (H, W) {img.shape[:2]}")
    if (source & hole).any():
        raise ValueError("a pixel cannot be both a source and part of the hole")
    if depth is not None and np.shape(depth) != hole.shape:
        raise ValueError(f"depth {np.shape(depth)} must match the image's (H, W) {hole.shape}")
    out = img.copy()
    if not hole.any():
        return out[..., 0] if flat else out
    if not source.any():
        raise ValueError("nothing to fill from: no source pixel")
    r = settings.patch // 2
    smooth = push_pull(img, source.astype(np.float32))
    valid = source | hole | (np.asarray(known, dtype=bool) if known is not None else source)
    # The depth is compared at the patch centres, weighted like a patch's worth of colour differences.
    scale = np.float32(np.sqrt(settings.depth_weight) * settings.patch) if depth is not None else np.float32(0)
    guide = (np.zeros(hole.shape, np.float32) if depth is None
             else np.asarray(depth, dtype=np.float32) * scale)[..., None]
    channels = img.shape[2]
    work = img
    if settings.texture_weight > 0:
        work = np.concatenate([img, _texture_features(img, valid & ~hole, settings.texture_window)
                               * np.float32(settings.texture_weight)], axis=2)
    base = _Level(work.copy(), source, hole, valid, guide)
    if not base.prepare(r):
        out[hole] = smooth[hole]
        return out[..., 0] if flat else out
    dist = ndimage.distance_transform_edt(hole).astype(np.float32)
    levels = _pyramid(base, float(dist.max()), r)
    # The finest levels, which refine only near the hole's edge, compare colours alone: the features matter where
    # the hole is laid out (the coarsest level, and the next), and cost most at full size.
    for lv in levels[:min(EDGE_LEVELS + 1, len(levels) - 1)]:
        lv.img = np.ascontiguousarray(lv.img[..., :channels])

    rng = np.random.default_rng(seed)
    state = int(rng.integers(1, 2**62))
    field = None
    for k in range(len(levels) - 1, -1, -1):
        lv = levels[k]
        if field is None:
            ny, nx, state = _peel(lv, r, settings.samples, state, rng)
            reach = max(lv.hole.shape)
        else:
            ny, nx = lv.upsampled(field, levels[k + 1], rng)
            lv.copy_centres(ny, nx)
            reach = FINE_REACH * settings.patch
        # At the two finest levels (below the coarsest) only the centres near the hole's edge are refined, where it
        # meets the picture: inside, the coarser arrangement (carried up with the sources' own fine texture)
        # measured as good.
        edge_only = k <= EDGE_LEVELS and k < len(levels) - 1
        centres = lv.near_edge(FINE_BAND * settings.patch) if edge_only else lv.all_centres()
        for _ in range(settings.fine_rounds if k == 0 else settings.coarse_rounds):
            state = _match(lv, ny, nx, centres, settings.scans, r, reach, state)
            lv.copy_centres(ny, nx)
        field = (ny, nx)
    filled = levels[0].img[..., :channels]
    if settings.tone_sigma > 0:
        sigma = (settings.tone_sigma, settings.tone_sigma, 0)
        filled = filled + ndimage.gaussian_filter(smooth - filled, sigma)
    if settings.feather > 0:
        fade = np.clip(1.0 - (dist - 1.0) / np.float32(settings.feather), 0.0, 1.0)[..., None]
        filled = filled + fade * (smooth - filled)
    out[hole] = filled[hole]
    return out[..., 0] if flat else out


class _Level:
    """One level of the pyramid: its picture, masks and guide, and its patch centres once prepared."""

    def __init__(self, img, source, hole, valid, guide):
        self.img, self.source, self.hole, self.valid, self.guide = img, source, hole, valid, guide

    def prepare(self, r: int) -> bool:
        """Find the source patches and the centres to match; False when no whole patch fits in the sources."""
        from scipy import ndimage

        size = 2 * r + 1
        self.src_ok = _whole_patches(self.source, r)
        self.src_y, self.src_x = (a.astype(np.int64) for a in np.nonzero(self.src_ok))
        if self.src_y.size == 0:
            return False
        centres = ndimage.maximum_filter(self.hole, size=size, mode="constant", cval=False)
        self.cy, self.cx = (a.astype(np.int64) for a in np.nonzero(centres))
        self.index = np.full(self.hole.shape, -1, np.int64)
        self.index[self.cy, self.cx] = np.arange(self.cy.size)
        self.hole_index = self.index[self.hole]
        return True

    def all_centres(self):
        """(positions in the field, their centres' rows and columns, and index map): every centre."""
        return None, self.cy, self.cx, self.index

    def near_edge(self, distance: float):
        """The centres within ``distance`` of a pixel outside the hole, as ``all_centres`` gives them."""
        from scipy import ndimage

        dist = ndimage.distance_transform_edt(self.hole)
        near = np.flatnonzero(dist[self.cy, self.cx] <= distance)
        index = np.full(self.hole.shape, -1, np.int64)
        index[self.cy[near], self.cx[near]] = np.arange(near.size)
        return near, self.cy[near], self.cx[near], index

    def random_field(self, rng):
        pick = rng.integers(0, self.src_y.size, self.cy.size)
        return self.src_y[pick], self.src_x[pick]

    def upsampled(self, field, coarse: "_Level", rng):
        """The coarser level's field carried here: each match doubled, plus the centre's offset in its cell."""
        h, w = self.hole.shape
        j = np.full(self.cy.shape, -1, np.int64)
        cyc, cxc = self.cy // 2, self.cx // 2
        inside = (cyc < coarse.index.shape[0]) & (cxc < coarse.index.shape[1])
        j[inside] = coarse.index[cyc[inside], cxc[inside]]
        ny, nx = self.random_field(rng)
        have = np.flatnonzero(j >= 0)
        uy = np.clip(field[0][j[have]] * 2 + self.cy[have] % 2, 0, h - 1)
        ux = np.clip(field[1][j[have]] * 2 + self.cx[have] % 2, 0, w - 1)
        good = self.src_ok[uy, ux]
        ny[have[good]], nx[have[good]] = uy[good], ux[good]
        return ny, nx

    def copy_centres(self, ny, nx) -> None:
        """Each hole pixel takes the centre of its own patch's match."""
        j = self.hole_index
        self.img[self.hole] = self.img[ny[j], nx[j]]


def _texture_features(img: np.ndarray, known: np.ndarray, window: int) -> np.ndarray:
    """float32 (H, W, 2): the mean absolute horizontal and vertical gradient of the grey picture over a window,
    from the known pixels' differences only (Newson et al. 2014); what a coarser level still knows of the fine
    texture once the colours are averaged."""
    from scipy import ndimage

    grey = img.mean(axis=2)
    out = np.zeros(img.shape[:2] + (2,), np.float32)
    for axis in (0, 1):
        diff = np.abs(np.diff(grey, axis=axis))
        ok = known[1:, :] & known[:-1, :] if axis == 0 else known[:, 1:] & known[:, :-1]
        pad = ((0, 1), (0, 0)) if axis == 0 else ((0, 0), (0, 1))
        diff, ok = np.pad(diff * ok, pad), np.pad(ok, pad).astype(np.float32)
        total = ndimage.uniform_filter(ok, window, mode="constant")
        out[..., axis] = ndimage.uniform_filter(diff, window, mode="constant") / np.maximum(total, 1e-6)
    return out


def _whole_patches(source: np.ndarray, r: int) -> np.ndarray:
    """Centres of the patches that lie whole inside the picture and whose pixels are all sources."""
    from scipy import ndimage

    return ndimage.minimum_filter(source, size=2 * r + 1, mode="constant", cval=False)


def _pyramid(base: _Level, widest: float, r: int) -> list:
    """Levels from full size down until the hole is two or three patches wide, or the picture or its sources run out."""
    levels = [base]
    while widest > 3 * r and min(levels[-1].hole.shape) >= 8 * (2 * r + 1):
        down = _half(levels[-1])
        if np.count_nonzero(_whole_patches(down.source, r)) < MIN_SOURCE_PATCHES or not down.prepare(r):
            break
        levels.append(down)
        widest /= 2.0
    return levels


def _half(lv: _Level) -> _Level:
    """2x2 reduction: colours averaged over the pixels that count (never the hole); a source if all four are,
    hole if any is."""
    img, source, hole, valid, guide = lv.img, lv.source, lv.hole, lv.valid, lv.guide
    h, w = hole.shape
    if h % 2 or w % 2:
        pad = ((0, h % 2), (0, w % 2))
        img = np.pad(img, pad + ((0, 0),), mode="edge")
        guide = np.pad(guide, pad + ((0, 0),), mode="edge")
        source, hole, valid = np.pad(source, pad), np.pad(hole, pad), np.pad(valid, pad)

    def quad(a, op):
        return op(op(a[0::2, 0::2], a[1::2, 0::2]), op(a[0::2, 1::2], a[1::2, 1::2]))

    known = (valid & ~hole).astype(np.float32)
    total = quad(known, np.add)
    colour = quad(img * known[..., None], np.add) / np.maximum(total, 1.0)[..., None]
    small_hole = quad(hole, np.logical_or)
    small_valid = (quad(valid, np.logical_and) & (total > 0)) | small_hole
    return _Level(colour.astype(np.float32), quad(source, np.logical_and) & ~small_hole, small_hole, small_valid,
                  (quad(guide, np.add) * np.float32(0.25)).astype(np.float32))


def _match(lv: _Level, ny, nx, centres, scans: int, r: int, reach: int, state: int) -> int:
    """Improve the field (ny, nx) at ``centres`` (``_Level.all_centres`` / ``near_edge``); -> the state."""
    from .patchmatch import patchmatch

    which, cy, cx, index = centres
    if which is None:
        return patchmatch(lv.img, lv.valid, lv.guide, lv.src_ok, cy, cx, index, ny, nx, scans, r, int(reach), state)
    sy, sx = ny[which], nx[which]
    state = patchmatch(lv.img, lv.valid, lv.guide, lv.src_ok, cy, cx, index, sy, sx, scans, r, int(reach), state)
    ny[which], nx[which] = sy, sx
    return state


def _peel(lv: _Level, r: int, samples: int, state: int, rng):
    """The coarsest level's hole filled from its edge inwards; -> (field, state)."""
    from scipy import ndimage

    from .patchmatch import peel

    dist = ndimage.distance_transform_edt(lv.hole)
    hy, hx = np.nonzero(lv.hole)
    order = np.lexsort((hx, hy, dist[hy, hx]))
    my = np.full(lv.hole.shape, -1, np.int64)
    mx = np.full(lv.hole.shape, -1, np.int64)
    known = lv.valid & ~lv.hole
    state = peel(lv.img, known, lv.guide, lv.src_ok, lv.src_y, lv.src_x, hy[order].astype(np.int64),
                 hx[order].astype(np.int64), my, mx, r, samples, state)
    ny, nx = lv.random_field(rng)
    peeled = my[lv.cy, lv.cx] >= 0
    ny[peeled], nx[peeled] = my[lv.cy, lv.cx][peeled], mx[lv.cy, lv.cx][peeled]
    return ny, nx, state
