"""Depth-conditioning maps and prior masks, one per layer.

Convention: float32 (H, W) in [0, 1], 1 = near (what depth ControlNets expect).

Two sources:

* the procedural scaffold (default), built from the plan and varied by its seed:
  background = a hall or an open court in one-point perspective (floor, side walls, a barrel vault or sky,
  columns and galleries receding to a vanishing point); midground = `plan.figures` standing figures made of
  rounded capsules (head, torso, limbs) on the floor line; foreground = debris crowding the edges and the
  lower frame (velvet drapes in the corners, rocks, glass shards, a chain, particles), the centre left open.
* a depth map (a user's image or an estimated one), split into three nearness bands.

Nearness of the scaffold follows inverse distance (like monocular depth estimators): the background spans
about 0.05 (sky, far wall) to 0.4 (floor at the bottom of the frame), figures about 0.45-0.65, debris
about 0.75-1.0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image
from scipy import ndimage

from .images import check_unit_map, open_image


@dataclass(frozen=True)
class LayerDepth:
    """What one layer is conditioned on."""

    name: str
    """One of plan.LAYER_NAMES."""
    control: np.ndarray
    """float32 (H, W) in [0, 1], 1 = near: the depth map fed to the depth ControlNet for this layer."""
    prior: np.ndarray
    """float32 (H, W) in [0, 1]: where this layer's content goes (1 = surely this layer's)."""
    nearness: float
    """Representative nearness of the layer in [0, 1] (median of control inside the prior); drives parallax."""


DEPTH_SOURCES: tuple[str, ...] = ("scaffold", "map")


@dataclass(frozen=True)
class DepthSettings:
    """How depth maps are made."""

    thresholds: tuple[float, float] = (0.35, 0.65)
    """Nearness thresholds splitting a given depth map into background | midground | foreground bands."""
    source: str = "scaffold"
    """"scaffold" (procedural, from the plan) or "map" (a user's depth map / an estimated one)."""

    def __post_init__(self):
        # Stored as a tuple of floats whatever sequence came in (JSON gives lists).
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds))
        if self.source not in DEPTH_SOURCES:
            raise ValueError(f"unknown depth source {self.source!r}; choose one of {', '.join(DEPTH_SOURCES)}")


MAX_FIGURES = 12
"""More figures than this do not fit side by side in one frame as separate silhouettes."""

BACKGROUND_FAR = 0.05
"""Nearness of the sky / infinitely far; the background scaffold is BACKGROUND_FAR + k / distance."""

# Layer names, back to front (the same tuple as plan.LAYER_NAMES; repeated so depth does not import the planner).
_NAMES = ("background", "midground", "foreground")


def check_thresholds(thresholds) -> tuple[float, float]:
    """Validate band thresholds: two numbers with 0 < near-far split < near split < 1.

    Args:
        thresholds: (t_mid, t_near).

    Returns:
        The thresholds as a tuple of two floats.

    Raises:
        ValueError: not two finite numbers, out of (0, 1), or not increasing.
    """
    try:
        lo, hi = (float(t) for t in thresholds)
    except (TypeError, ValueError):
        raise ValueError(f"depth thresholds must be two numbers, got {thresholds!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 < lo < 1.0 and 0.0 < hi < 1.0):
        raise ValueError(f"depth thresholds must lie strictly between 0 and 1, got {thresholds!r}")
    if not lo < hi:
        raise ValueError(f"depth thresholds must increase (midground < foreground), got {thresholds!r}")
    return lo, hi


# --------------------------------------------------------------------------------------------------------------
# Public API


def build_depth_maps(plan, *, depth_map: np.ndarray | None = None,
                     settings: DepthSettings = DepthSettings()) -> dict[str, LayerDepth]:
    """Depth-conditioning maps and priors for the three layers of a plan.

    Without `depth_map`, a procedural scaffold is built from the plan (size, seed, figure count). With one,
    the map is resized to the plan size (bilinear) and split into nearness bands by `settings.thresholds`
    (see `split_depth_map`).

    Args:
        plan: a ScenePlan (uses width, height, seed, figures).
        depth_map: optional float (H, W) in [0, 1], 1 = near, any size.
        settings: DepthSettings. source="map" requires `depth_map`.

    Returns:
        {"background", "midground", "foreground"} -> LayerDepth, in that (back to front) order.

    Raises:
        ValueError: bad plan size or figure count, a bad depth map, source="map" without a map.
    """
    width, height = _check_size(plan.width, plan.height)
    if depth_map is not None:
        depth = _check_depth_array(depth_map)
        if depth.shape != (height, width):
            depth = _resize(depth, (width, height))
        return split_depth_map(depth, settings.thresholds)
    if settings.source == "map":
        raise ValueError("depth source 'map' needs a depth map; pass depth_map= or use source='scaffold'")
    figures = plan.figures
    if isinstance(figures, bool) or not isinstance(figures, (int, np.integer)) or not 0 <= figures <= MAX_FIGURES:
        raise ValueError(f"figure count must be an integer from 0 to {MAX_FIGURES}, got {figures!r}")

    # One child stream per layer, so that e.g. changing the figure count leaves the room as it was.
    bg_rng, mid_rng, fg_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(_entropy(plan.seed)).spawn(3))
    bg = _room_scaffold(width, height, bg_rng, getattr(plan, "setting", ""))
    mid_control, mid_prior = _figure_scaffold(width, height, int(figures), mid_rng)
    fg_control, fg_prior = _debris_scaffold(width, height, fg_rng)
    ones = np.ones((height, width), np.float32)
    return {
        "background": LayerDepth("background", bg, ones, _median_inside(bg, ones, 0.1)),
        "midground": LayerDepth("midground", mid_control, mid_prior, _median_inside(mid_control, mid_prior, 0.55)),
        "foreground": LayerDepth("foreground", fg_control, fg_prior, _median_inside(fg_control, fg_prior, 0.85)),
    }


def split_depth_map(depth: np.ndarray, thresholds: tuple[float, float] = (0.35, 0.65)) -> dict[str, LayerDepth]:
    """Split one depth map into background | midground | foreground nearness bands.

    Choices: the background is complete, so its control is the whole map and its prior is all ones (what lies
    behind the nearer bands must be painted too). The midground prior is the band t_mid <= d < t_near and the
    foreground prior the band d >= t_near, each softened by a small blur (about one pixel); their controls are
    the map multiplied by their prior, so 0 (far) outside their band. The background's representative nearness
    is the median of the far band (d < t_mid); an empty band falls back to the middle of its range.

    Args:
        depth: float (H, W) in [0, 1], 1 = near.
        thresholds: (t_mid, t_near), 0 < t_mid < t_near < 1.

    Returns:
        {"background", "midground", "foreground"} -> LayerDepth.

    Raises:
        ValueError: bad thresholds, or a depth map that is not 2-D, not finite, or outside [0, 1].
    """
    lo, hi = check_thresholds(thresholds)
    d = _check_depth_array(depth)
    sigma = max(0.6, 0.0015 * max(d.shape))
    mid = _soft_band((d >= lo) & (d < hi), sigma)
    near = _soft_band(d >= hi, sigma)
    ones = np.ones_like(d)
    far_band = d < lo
    bg_near = float(np.median(d[far_band])) if far_band.any() else lo / 2
    return {
        "background": LayerDepth("background", d, ones, bg_near),
        "midground": LayerDepth("midground", (d * mid).astype(np.float32), mid,
                                _median_inside(d * mid, mid, (lo + hi) / 2)),
        "foreground": LayerDepth("foreground", (d * near).astype(np.float32), near,
                                 _median_inside(d * near, near, (hi + 1.0) / 2)),
    }


def load_depth_map(path_or_image: Union[str, Path, Image.Image], size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a depth-map image as float32 nearness in [0, 1] (white = near).

    8-bit (L, RGB, palette, with or without alpha) and 16-bit (I;16, I) images are read at their full bit depth,
    then stretched so the map spans [0, 1] (depth estimators' outputs are relative). A constant map is kept as
    its own level instead of being stretched.

    Args:
        path_or_image: a file path or a PIL image.
        size: (width, height) to resize to (bilinear); None keeps the image's size.

    Returns:
        float32 (H, W) in [0, 1].

    Raises:
        ValueError: missing file, not an image, a decompression bomb, or a bad size.
    """
    if size is not None:
        size = _check_size(*size)[0:2]
    img = open_image(path_or_image, what="depth map")
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(img, dtype=np.float64) / 65535.0
    elif mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("depth map has non-finite values")
        top = 65535.0 if mode == "I" and arr.min() >= 0 and arr.max() <= 65535 else None
        arr = arr / top if top else arr
    elif mode == "1":
        arr = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    else:
        # Colour or palette maps: luminance. Alpha is ignored (a depth map has no transparency).
        arr = np.asarray(img.convert("RGB").convert("L") if mode != "L" else img, dtype=np.float64) / 255.0
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo > 1e-9:
        arr = (arr - lo) / (hi - lo)
    else:
        arr = np.full(arr.shape, min(max(lo, 0.0), 1.0))
    out = arr.astype(np.float32)
    if size is not None and (out.shape[1], out.shape[0]) != tuple(size):
        out = _resize(out, size)
    return out


# --------------------------------------------------------------------------------------------------------------
# Checks and small helpers


def _entropy(seed) -> int:
    # SeedSequence wants a non-negative integer; negative scene seeds are still valid and distinct.
    return int(seed) % (1 << 64)


def _check_size(width, height) -> tuple[int, int]:
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 16 <= v <= 8192:
            raise ValueError(f"{name} must be an integer from 16 to 8192, got {v!r}")
    return int(width), int(height)


def _check_depth_array(depth) -> np.ndarray:
    return check_unit_map(depth, "depth map")


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float (H, W) -> float32 of PIL size (width, height), bilinear."""
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), "F")
    return np.clip(np.asarray(img.resize(tuple(size), Image.BILINEAR), dtype=np.float32), 0.0, 1.0)


def _soft_band(mask: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float32), sigma), 0.0, 1.0)


def _median_inside(control: np.ndarray, prior: np.ndarray, fallback: float) -> float:
    inside = prior > 0.5
    if not inside.any():
        return float(fallback)
    return float(np.median(control[inside]))


def _grid(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a box as broadcasting (h, 1) rows and (1, w) columns, float32."""
    return (np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5),
            np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5))


# --------------------------------------------------------------------------------------------------------------
# Background: a hall or court in one-point perspective, by ray casting per pixel (vectorised).


def _room_scaffold(width: int, height: int, rng: np.random.Generator, setting: str = "") -> np.ndarray:
    W, H = width, height
    f = rng.uniform(0.8, 1.0) * max(W, H)                   # focal length in pixels
    vx = W * (0.5 + rng.uniform(-0.12, 0.12))               # vanishing point
    vy = H * rng.uniform(0.40, 0.55)                        # horizon row
    hc = 1.0                                                # camera height above the floor
    # Walls placed where the frame's side edges meet them at 4-8 camera heights away.
    xl = -rng.uniform(4.0, 8.0) * vx / f
    xr = rng.uniform(4.0, 8.0) * (W - vx) / f
    depth_far = rng.uniform(18.0, 32.0)
    hall = rng.random() < 0.7                               # vaulted hall, else an open court under the sky
    if setting:                                             # the prompt said which (the draw above keeps the stream)
        hall = setting == "indoor"
    spring = rng.uniform(1.6, 3.2)                          # where the vault springs from the walls (hall)
    wall_top = rng.uniform(2.0, 4.0)                        # wall height above the camera (court)
    far_top = 0.0 if hall else wall_top * rng.uniform(0.3, 0.8)
    col_top = spring if hall else wall_top
    tiers = int(rng.integers(1, 3)) if hall else int(rng.integers(0, 2))
    galleries = [(col_top * (k + 1) / (tiers + 1) + 0.3, 0.14, rng.uniform(0.3, 0.55)) for k in range(tiers)]
    n_cols = int(rng.integers(4, 8))
    z0 = rng.uniform(2.5, 4.5)
    spacing = (depth_far - z0) / n_cols
    col_r = rng.uniform(0.14, 0.24)

    inf = np.float32(np.inf)
    dx = ((np.arange(W, dtype=np.float32) + 0.5 - vx) / f)[None, :]     # ray direction per column (z = 1)
    dy_all = ((vy - (np.arange(H, dtype=np.float32) + 0.5)) / f)[:, None]  # per row, y up
    with np.errstate(divide="ignore", invalid="ignore"):
        t_wall = np.where(dx < 0, xl / dx, np.where(dx > 0, xr / dx, inf)).astype(np.float32)
        # Round columns along both walls: where a ray meets one depends on its column only.
        columns = []
        for side, xw in ((-1, xl), (1, xr)):
            cx = xw - side * (col_r + 0.08)
            for k in range(n_cols):
                cz = z0 + k * spacing
                a = dx[0] * dx[0] + 1.0
                b = -2.0 * (dx[0] * cx + cz)
                disc = b * b - 4 * a * (cx * cx + cz * cz - col_r * col_r)
                hit = np.flatnonzero(disc >= 0)
                if hit.size:
                    u0, u1 = int(hit[0]), int(hit[-1]) + 1
                    tc = ((-b[u0:u1] - np.sqrt(disc[u0:u1])) / (2 * a[u0:u1]))[None, :]
                    columns.append((u0, u1, tc))
        # Gallery faces toward the hall, per column too.
        faces = []
        for top, thick, deep in galleries:
            for side, xw in ((-1, xl), (1, xr)):
                x_in = xw - side * deep
                faces.append((top, thick, side, x_in, np.where(dx * side > 0, x_in / dx, inf).astype(np.float32)))

        near = np.empty((H, W), np.float32)
        # Row bands keep the temporaries small; every step below is a per-pixel ray cast, vectorised.
        for r0 in range(0, H, 64):
            dy = dy_all[r0:r0 + 64]
            t = np.full((dy.shape[0], W), depth_far, np.float32)
            np.minimum(t, np.where(dy < 0, -hc / dy, inf), out=t)                        # floor
            if hall:
                xm, radius = (xl + xr) / 2, (xr - xl) / 2
                a = dx * dx + dy * dy
                b = -2.0 * (dx * xm + dy * spring)
                disc = b * b - 4 * a * (xm * xm + spring * spring - radius * radius)
                t_vault = (-b + np.sqrt(np.maximum(disc, 0))) / (2 * a)
                ok = (disc >= 0) & (dy > 0) & (t_vault * dy >= spring - 1e-6)
                np.minimum(t, np.where(ok, t_vault, inf), out=t)                         # barrel vault
                np.minimum(t, t_wall, out=t)                                             # side walls
            else:
                np.minimum(t, np.where(t_wall * dy <= wall_top, t_wall, inf), out=t)
                # Above the far wall and the side walls: open sky.
                t[(t >= depth_far - 1e-4) & (depth_far * dy > far_top)] = inf
                t[(t_wall < depth_far) & (t_wall * dy > wall_top) & (t >= t_wall)] = inf
            for top, thick, side, x_in, t_face in faces:                                  # galleries
                y_face = t_face * dy
                np.minimum(t, np.where((y_face >= top - thick) & (y_face <= top), t_face, inf), out=t)
                t_under = np.where(dy > 0, (top - thick) / dy, inf)
                np.minimum(t, np.where(side * (t_under * dx) >= side * x_in, t_under, inf), out=t)
            for u0, u1, tc in columns:                                                    # columns
                yc = tc * dy
                sub = t[:, u0:u1]
                np.copyto(sub, np.broadcast_to(tc, sub.shape), where=(yc >= -hc) & (yc <= col_top) & (tc < sub))
            near[r0:r0 + 64] = 1.0 / t

    # Nearness affine in inverse distance; the floor at the bottom edge of the frame reads about 0.36.
    z_ref = hc * f / max(H - 0.5 - vy, 1.0)
    near = BACKGROUND_FAR + (0.36 - BACKGROUND_FAR) * z_ref * near
    # Anti-alias the silhouettes of columns and galleries (rays were cast at pixel centres only).
    return _binomial(np.clip(near, BACKGROUND_FAR, 0.4))


def _binomial(a: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along both axes (a Gaussian of sigma 0.7 px), float32, edges repeated."""
    p = np.pad(np.asarray(a, np.float32), 1, mode="edge")
    r = p[:-2] + 2.0 * p[1:-1] + p[2:]
    return (r[:, :-2] + 2.0 * r[:, 1:-1] + r[:, 2:]) * np.float32(1.0 / 16.0)



# --------------------------------------------------------------------------------------------------------------
# Midground: standing figures built from tapered capsules; each gets a rounded depth bump.

# (ax, ay, bx, by, r0, r1[, hem]) in figure units: feet at y = 0, height 1, x to the figure's left is negative;
# hem=True cuts the part flat at the floor.
def _figure_parts(rng: np.random.Generator, spread: float) -> list[tuple[float, ...]]:
    robe = rng.random() < 0.35
    tilt = rng.uniform(-0.015, 0.015)
    parts = [
        (tilt, 0.925, tilt * 1.3, 0.955, 0.058, 0.055),            # head
        (0.0, 0.845, tilt * 0.8, 0.895, 0.027, 0.025),             # neck
        (-0.088, 0.785, 0.088, 0.785, 0.047, 0.047),                # shoulders
        (0.0, 0.77, 0.0, 0.56, 0.098, 0.074),                       # chest to waist
        (-0.035, 0.525, 0.035, 0.525, 0.06, 0.06),                  # hips
    ]
    stance = rng.uniform(0.0, 0.07)
    for side in (-1, 1):
        # Arms: angle from hanging straight down, then the elbow bend (raised forearm = offering gesture).
        up = rng.uniform(0.12, 0.75) * spread
        bend = rng.uniform(-0.1, 1.6) * spread
        sx, sy = side * 0.112, 0.79
        ex, ey = sx + side * 0.155 * np.sin(up), sy - 0.155 * np.cos(up)
        hx, hy = ex + side * 0.145 * np.sin(up + bend), ey - 0.145 * np.cos(up + bend)
        parts.append((sx, sy, ex, ey, 0.036, 0.029))
        parts.append((ex, ey, hx, hy, 0.029, 0.023))
        parts.append((hx, hy, hx + side * 0.02 * np.sin(up + bend), hy - 0.025 * np.cos(up + bend), 0.026, 0.02))
        if not robe:
            kx, ky = side * (0.058 + stance * 0.5), 0.275
            ax, ay = side * (0.062 + stance), 0.05
            parts.append((side * 0.05, 0.5, kx, ky, 0.056, 0.041))
            parts.append((kx, ky, ax, ay, 0.041, 0.027))
            parts.append((ax, ay, ax + side * 0.045, 0.02, 0.024, 0.02))
    if robe:
        parts.append((0.0, 0.56, 0.0, 0.0, 0.08, 0.15, True))      # a long robe flaring to a hem at the ground
        for side in (-1, 1):
            parts.append((side * 0.06, 0.03, side * 0.1, 0.02, 0.024, 0.02))
    return parts


def _rotate_parts(parts, angle: float):
    ca, sa = np.cos(angle), np.sin(angle)
    out = []
    for ax, ay, bx, by, r0, r1, *hem in parts:
        out.append((ca * ax - sa * ay, sa * ax + ca * ay, ca * bx - sa * by, sa * bx + ca * by, r0, r1, *hem))
    return out


def _extent(parts) -> tuple[float, float, float]:
    """(left, right, top) extents of a figure in figure units (left as a positive number)."""
    left = max(-min(p[0], p[2]) + max(p[4], p[5]) for p in parts)
    right = max(max(p[0], p[2]) + max(p[4], p[5]) for p in parts)
    top = max(max(p[1], p[3]) + max(p[4], p[5]) for p in parts)
    return left, right, top


def _capsule_field(px, py, ax, ay, bx, by, r0, r1):
    """Signed distance (px) to a tapered capsule and its half-thickness (px) where inside."""
    vx, vy = bx - ax, by - ay
    ll = vx * vx + vy * vy
    t = np.clip(((px - ax) * vx + (py - ay) * vy) / ll, 0.0, 1.0) if ll > 1e-12 else np.zeros_like(px)
    r = r0 + (r1 - r0) * t
    dist = np.hypot(px - (ax + t * vx), py - (ay + t * vy))
    thick = np.sqrt(np.maximum(r * r - dist * dist, 0.0))
    return dist - r, thick


def _figure_scaffold(width: int, height: int, count: int, rng: np.random.Generator):
    W, H = width, height
    control = np.zeros((H, W), np.float32)
    cover = np.zeros((H, W), np.float32)
    if count == 0:
        return control, cover
    slot = W / count
    gap = max(3.0, 0.04 * slot)
    for i in range(count):
        feet = H * rng.uniform(0.86, 0.94)
        target = H * rng.uniform(0.50, 0.62)
        lean = np.deg2rad(rng.uniform(-5.0, 5.0))
        seed_state = rng.bit_generator.state
        # Narrow slots: fold the arms in before shrinking the whole figure, so figures stay tall.
        for spread in (1.0, 0.6, 0.3, 0.0):
            rng.bit_generator.state = seed_state
            parts = _rotate_parts(_figure_parts(rng, spread), lean)
            left, right, top = _extent(parts)
            h = min(target, (feet - 0.03 * H) / top, (slot - 2 * gap) / (left + right))
            if h >= 0.8 * target:
                break
        lo = i * slot + gap + left * h
        hi = (i + 1) * slot - gap - right * h
        if count == 1:
            # A single figure stays near the middle, clear of the foreground debris at the edges.
            lo, hi = max(lo, 0.38 * W), min(hi, 0.62 * W)
        cx = rng.uniform(lo, hi) if hi > lo else (lo + hi) / 2
        base = float(np.clip(0.47 + 0.12 * (feet / H - 0.86) / 0.08 + rng.uniform(-0.02, 0.02), 0.45, 0.6))
        for ax, ay, bx, by, r0, r1, *hem in parts:
            # To pixels: x right, y down.
            pax, pay, pbx, pby = cx + ax * h, feet - ay * h, cx + bx * h, feet - by * h
            pr0, pr1 = max(r0 * h, 0.8), max(r1 * h, 0.8)
            rr = max(pr0, pr1) + 2
            x0, x1 = int(max(0, np.floor(min(pax, pbx) - rr))), int(min(W, np.ceil(max(pax, pbx) + rr) + 1))
            y0, y1 = int(max(0, np.floor(min(pay, pby) - rr))), int(min(H, np.ceil(max(pay, pby) + rr) + 1))
            if x0 >= x1 or y0 >= y1:
                continue
            gy, gx = _grid(y0, y1, x0, x1)
            sdf, thick = _capsule_field(gx, gy, pax, pay, pbx, pby, pr0, pr1)
            if hem:
                # Cut flat just above the floor line: a hem, not a rounded sack.
                sdf = np.maximum(sdf, gy - (feet - 0.012 * h))
            cov = np.clip(0.5 - sdf / 1.2, 0.0, 1.0)
            # Bump height in figure units: thicker parts stand out more (torso > head > limbs).
            near = (base + 0.6 * thick / h) * cov
            np.maximum(control[y0:y1, x0:x1], near, out=control[y0:y1, x0:x1])
            np.maximum(cover[y0:y1, x0:x1], cov, out=cover[y0:y1, x0:x1])
    # Smooth the creases where parts meet; nothing may leak outside the silhouettes.
    control = _binomial(control) * (cover > 0)
    return np.clip(control, 0.0, 1.0).astype(np.float32), cover


# --------------------------------------------------------------------------------------------------------------
# Foreground: debris crowding the edges and corners and the bottom of the frame.


def _edge_points(rng: np.random.Generator, n: int, inner: float) -> np.ndarray:
    """n points (x, y) in [0, 1]^2 biased to the frame edges and the lower frame; the middle stays clear."""
    pts = rng.random((max(64, n * 30), 2))
    x, y = pts[:, 0], pts[:, 1]
    ring = np.maximum(np.abs(x - 0.5) * 2.0, np.where(y > 0.5, (y - 0.5) * 2.2, (0.5 - y) * 1.9))
    keep = pts[ring > inner]
    return keep[:n]


class _Canvas:
    """Accumulates debris: nearer elements win (a z-buffer), coverage is the union."""

    def __init__(self, width: int, height: int):
        self.W, self.H = width, height
        self.control = np.zeros((height, width), np.float32)
        self.cover = np.zeros((height, width), np.float32)

    def box(self, cx, cy, rx, ry):
        x0, x1 = int(max(0, np.floor(cx - rx - 2))), int(min(self.W, np.ceil(cx + rx + 3)))
        y0, y1 = int(max(0, np.floor(cy - ry - 2))), int(min(self.H, np.ceil(cy + ry + 3)))
        if x0 >= x1 or y0 >= y1:
            return None
        gy, gx = _grid(y0, y1, x0, x1)
        return (slice(y0, y1), slice(x0, x1)), gx, gy

    def put(self, where, sdf, near):
        cov = np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)
        value = np.clip(near, 0.0, 1.0) * cov
        region = self.control[where]
        # Nearer wins where both cover the pixel.
        np.copyto(region, value, where=value > region)
        np.maximum(self.cover[where], cov, out=self.cover[where])


def _put_rock(cv: "_Canvas", rng, cx: float, cy: float, s: float, base_near) -> None:
    """A rounded, lumpy ellipsoid (a stone, a bundle, a prop)."""
    rx = s * rng.uniform(0.025, 0.065)
    ry = rx * rng.uniform(0.55, 1.0)
    ang = rng.uniform(0, np.pi)
    hit = cv.box(cx, cy, max(rx, ry), max(rx, ry))
    if hit is None:
        return
    where, gx, gy = hit
    ddx, ddy = gx - cx, gy - cy
    u = (np.cos(ang) * ddx + np.sin(ang) * ddy) / rx
    v = (-np.sin(ang) * ddx + np.cos(ang) * ddy) / ry
    q = np.hypot(u, v) * (1.0 + 0.08 * np.sin(5 * np.arctan2(v, u) + ang * 3))
    near = base_near(cy) + 0.05 + 0.05 * np.sqrt(np.clip(1 - q * q, 0, 1)) * min(ry / (s * 0.05), 1.2)
    cv.put(where, (q - 1.0) * ry, near)


def _put_shard(cv: "_Canvas", rng, cx: float, cy: float, s: float, base_near) -> None:
    """A thin glass triangle; its roof-shaped depth gives it crisp facets."""
    length = s * rng.uniform(0.05, 0.13)
    wide = length * rng.uniform(0.18, 0.35)
    ang = rng.uniform(0, 2 * np.pi)
    ca, sa = np.cos(ang), np.sin(ang)
    off = rng.uniform(-0.4, 0.4)
    lx = np.array([-0.5 * length, 0.5 * length, -0.35 * length])
    ly = np.array([-0.5 * wide, off * wide, 0.5 * wide])
    vx, vy = cx + ca * lx - sa * ly, cy + sa * lx + ca * ly
    hit = cv.box(vx.mean(), vy.mean(), np.ptp(vx) / 2 + 2, np.ptp(vy) / 2 + 2)
    if hit is None:
        return
    where, gx, gy = hit
    # Outward edge normals (away from the centroid): inside, the largest edge distance is negative.
    mx, my = vx.mean(), vy.mean()
    sdf = np.full((gy.shape[0], gx.shape[1]), -np.inf, np.float32)
    for i in range(3):
        j = (i + 1) % 3
        ex, ey = vx[j] - vx[i], vy[j] - vy[i]
        ln = max(np.hypot(ex, ey), 1e-6)
        nx, ny = ey / ln, -ex / ln
        if (mx - vx[i]) * nx + (my - vy[i]) * ny > 0:
            nx, ny = -nx, -ny
        sdf = np.maximum(sdf, (gx - vx[i]) * nx + (gy - vy[i]) * ny)
    inradius = max(wide * 0.3, 1.0)
    cv.put(where, sdf, base_near(cy) + 0.06 + 0.04 * np.clip(-sdf / inradius, 0.0, 1.0))


def _put_gear(cv: "_Canvas", rng, cx: float, cy: float, s: float, base_near) -> None:
    """A brass gear: a toothed ring around a hub hole, flat face with bevelled edges."""
    radius = s * rng.uniform(0.03, 0.06)
    teeth = int(rng.integers(8, 15))
    phase = rng.uniform(0, 2 * np.pi)
    hit = cv.box(cx, cy, radius * 1.2, radius * 1.2)
    if hit is None:
        return
    where, gx, gy = hit
    ddx, ddy = gx - cx, gy - cy
    rho = np.hypot(ddx, ddy)
    tooth = np.clip(3.0 * np.sin(teeth * np.arctan2(ddy, ddx) + phase), -1.0, 1.0) * 0.5 + 0.5
    outer = radius * (0.88 + 0.16 * tooth)
    sdf = np.maximum(rho - outer, 0.38 * radius - rho)
    bevel = np.clip(-sdf / (0.12 * radius), 0.0, 1.0)
    cv.put(where, sdf, base_near(cy) + 0.07 + 0.03 * np.sqrt(bevel))


def _put_link(cv: "_Canvas", px: float, py: float, ang: float, link: float, face_on: bool, near0: float) -> None:
    """One chain link: a ring seen face-on (with its hole) or a bar seen edge-on, with a rounded tube profile."""
    a_, b_ = link * 0.9, link * 0.55
    tube = link * 0.17
    hit = cv.box(px, py, a_ + tube, a_ + tube)
    if hit is None:
        return
    where, gx, gy = hit
    ddx, ddy = gx - px, gy - py
    u = np.cos(ang) * ddx + np.sin(ang) * ddy
    v = -np.sin(ang) * ddx + np.cos(ang) * ddy
    if face_on:
        d_ring = np.abs(np.hypot(u / a_, v / b_) - 1.0) * b_
        cv.put(where, d_ring - tube, near0 + 0.04 * np.sqrt(np.clip(1 - (d_ring / tube) ** 2, 0, 1)))
    else:
        sdf, thick = _capsule_field(u, v, -a_, 0.0, a_, 0.0, tube * 1.1, tube * 1.1)
        cv.put(where, sdf, near0 + 0.015 + 0.04 * thick / (tube * 1.1))


def _debris_scaffold(width: int, height: int, rng: np.random.Generator):
    W, H = width, height
    s = float(min(W, H))
    cv = _Canvas(W, H)

    def base_near(y):
        # Lower in the frame = closer to the lens.
        return 0.76 + 0.1 * (y / H)

    # Velvet drapes / piles hugging the corners: an organic outline, folds radiating from the corner.
    corners = [(0, H, 1, -1, 1.0), (W, H, -1, -1, 1.0), (0, 0, 1, 1, 0.7), (W, 0, -1, 1, 0.7)]
    for cx0, cy0, sx, sy, p_keep in corners:
        if rng.random() > p_keep:
            continue
        low = cy0 > 0
        r0 = s * (rng.uniform(0.24, 0.36) if low else rng.uniform(0.12, 0.24))
        ax = r0 * rng.uniform(1.0, 1.35)
        ay = r0 * rng.uniform(0.75, 1.0)
        hit = cv.box(cx0, cy0, ax * 1.35, ay * 1.35)
        if hit is None:
            continue
        where, gx, gy = hit
        ux, uy = (gx - cx0) * sx / ax, (gy - cy0) * sy / ay        # inward positive
        rho = np.hypot(ux, uy)
        th = np.arctan2(uy, ux)                                     # 0..pi/2 inside the frame
        p1, p2, p3 = rng.uniform(0, 2 * np.pi, 3)
        edge = 1.0 + 0.16 * np.sin(3 * th + p1) + 0.08 * np.sin(7 * th + p2)
        sdf = (rho - edge) * min(ax, ay)
        folds = rng.uniform(7, 12)
        fold = np.sin(folds * th + 1.3 * np.sin(2 * th + p3) + 2.0 * rho)
        inside = np.clip(1.0 - rho / edge, 0.0, 1.0)
        near = base_near(cy0) + 0.03 * inside + 0.02 * fold * np.sqrt(inside) + 0.015 * np.sqrt(inside)
        cv.put(where, sdf, near)

    # A low rubble bank along the bottom edge, rising toward the sides.
    hit = cv.box(W / 2, H - s * 0.1, W / 2 + 2, s * 0.12)
    if hit is not None:
        where, gx, gy = hit
        xn = gx / W
        p = rng.uniform(0, 2 * np.pi, 2)
        top = H - s * (0.035 + 0.09 * (2 * np.abs(xn - 0.5)) ** 2 + 0.018 * np.sin(9 * xn * np.pi + p[0])
                       + 0.012 * np.sin(23 * xn + p[1]))
        sdf = top - gy
        depth_in = np.clip((gy - top) / (s * 0.08), 0.0, 1.0)
        near = 0.84 + 0.04 * np.sqrt(depth_in) + 0.01 * np.sin(31 * xn + 5 * gy / s)
        cv.put(where, sdf, near)

    # Clusters of props near the edges: rocks, glass shards, brass gears. Plus stray shards further in.
    for x, y in _edge_points(rng, int(rng.integers(5, 8)), 0.8):
        spread = s * 0.09
        for _ in range(int(rng.integers(2, 4))):
            _put_rock(cv, rng, x * W + rng.normal(0, spread), y * H + rng.normal(0, spread), s, base_near)
        for _ in range(int(rng.integers(1, 3))):
            _put_shard(cv, rng, x * W + rng.normal(0, spread), y * H + rng.normal(0, spread), s, base_near)
        if rng.random() < 0.5:
            _put_gear(cv, rng, x * W + rng.normal(0, spread * 0.5), y * H + rng.normal(0, spread * 0.5), s, base_near)
    for x, y in _edge_points(rng, int(rng.integers(4, 8)), 0.6):
        _put_shard(cv, rng, x * W, y * H, s, base_near)

    # An anchor chain: links alternating face-on rings and edge-on bars, hanging in from one side and sagging
    # into the lower frame, right in front of everything else.
    if rng.random() < 0.85:
        side = rng.choice([-1, 1])
        start = np.array([W * (0.5 + side * 0.53), H * rng.uniform(0.35, 0.6)])
        mid = np.array([W * (0.5 + side * rng.uniform(0.2, 0.32)), H * rng.uniform(0.8, 0.95)])
        end = np.array([W * (0.5 + side * rng.uniform(0.0, 0.15)), H * 1.03])
        link = s * rng.uniform(0.04, 0.055)
        approx = np.hypot(*(mid - start)) + np.hypot(*(end - mid))
        n_links = max(3, int(approx / (link * 1.45)))
        tt = np.linspace(0.0, 1.0, n_links)
        pts = ((1 - tt) ** 2)[:, None] * start + (2 * (1 - tt) * tt)[:, None] * mid + (tt ** 2)[:, None] * end
        for i, (px, py) in enumerate(pts):
            step = pts[min(i + 1, n_links - 1)] - pts[max(i - 1, 0)]
            _put_link(cv, px, py, np.arctan2(step[1], step[0]), link, face_on=i % 2 == 0, near0=0.955)

    # Particles: dust, sand, confetti; small domes, mostly near the edges, a few floating further in.
    n_edge = int(rng.integers(30, 50))
    pts = np.concatenate([_edge_points(rng, n_edge, 0.55), rng.random((int(rng.integers(6, 12)), 2))])
    for x, y in pts:
        r = max(1.0, s * rng.uniform(0.004, 0.012))
        hit = cv.box(x * W, y * H, r, r)
        if hit is None:
            continue
        where, gx, gy = hit
        q = np.hypot(gx - x * W, gy - y * H) / r
        near = base_near(y * H) - 0.01 + 0.03 * np.sqrt(np.clip(1 - q * q, 0, 1))
        cv.put(where, (q - 1.0) * r, near)

    control = _binomial(cv.control) * (cv.cover > 0)
    return np.clip(control, 0.0, 1.0).astype(np.float32), np.clip(cv.cover, 0.0, 1.0)


__all__ = ["BACKGROUND_FAR", "DEPTH_SOURCES", "MAX_FIGURES", "DepthSettings", "LayerDepth", "build_depth_maps",
           "check_thresholds", "load_depth_map", "split_depth_map"]
