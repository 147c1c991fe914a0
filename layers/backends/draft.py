"""The draft backend: a procedural, offline, deterministic layout painter.

It paints each layer from its depth-conditioning map (control), its prior and the colour words of its prompt,
in a few tenths of a second and with no model weights, so a whole layered stack can be previewed anywhere:

* background: a complete, opaque painting of the architecture the control map describes: surfaces shaded by
  their depth (far = hazy, lighter and cooler; near = darker and more saturated), perspective floor tiles,
  ribs and arches along lines of equal depth, glowing windows, a portal on the far wall, lantern-stars;
* midground: figures where the prior is high, shaded from the control map's relief, with skin and cloth
  tones from the palette and a rim light on the side facing the light; a flat plain backdrop elsewhere;
* foreground: debris where the prior is high (velvet folds, glass shards, chain links, rocks, glinting
  particles); a flat plain backdrop elsewhere.

The flat backdrop plays the part of the "isolated subject on a plain backdrop" a model would render, so the
matting step separates the layer the same way for both backends. It is a layout draft, not a finished image.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from ..images import check_unit_map
from .base import ProgressCallback, RenderRequest, RenderResult, RenderSettings

# --------------------------------------------------------------------------------------------------------------
# Colours

COLOURS: dict[str, tuple[int, int, int]] = {
    # Warm metals and lights.
    "sunrise-gold": (255, 186, 84), "warm-gold": (240, 182, 76), "gold": (226, 176, 58), "amber": (250, 166, 40),
    "honey": (226, 164, 70), "brass": (192, 160, 72), "bronze": (168, 112, 52), "copper": (192, 108, 62),
    "orange": (238, 128, 40), "yellow": (238, 208, 64), "ochre": (200, 140, 50), "saffron": (244, 180, 40),
    # Reds.
    "carmine": (166, 14, 44), "crimson": (194, 22, 58), "scarlet": (226, 44, 30), "red": (200, 36, 36),
    "ruby": (160, 16, 52), "burgundy": (112, 18, 42), "wine": (116, 22, 46), "maroon": (112, 28, 32),
    "rose": (214, 92, 120), "pink": (236, 150, 180), "magenta": (198, 40, 150), "coral": (240, 120, 96),
    "rust": (170, 72, 34), "vermilion": (227, 66, 52),
    # Greens and cyans.
    "teal": (18, 128, 132), "turquoise": (44, 188, 178), "cyan": (40, 186, 218), "aqua": (70, 200, 210),
    "jade": (44, 150, 110), "emerald": (22, 140, 82), "green": (52, 140, 62), "olive": (120, 120, 50),
    # Blues and violets.
    "velvet blue": (46, 52, 132), "midnight blue": (24, 30, 84), "midnight": (26, 28, 72),
    "electric blue": (52, 122, 255), "cool blue": (72, 112, 182), "sapphire": (22, 52, 152),
    "cobalt": (10, 72, 170), "ultramarine": (30, 50, 170), "navy": (22, 32, 92), "azure": (52, 130, 220),
    "indigo": (52, 32, 122), "blue": (42, 82, 190), "violet": (132, 62, 200), "purple": (112, 42, 152),
    "lavender": (172, 152, 212), "plum": (120, 50, 100),
    # Neutrals.
    "ivory": (240, 234, 214), "cream": (242, 230, 200), "pearl": (234, 230, 220), "marble": (226, 222, 214),
    "white": (242, 242, 240), "silver": (190, 196, 206), "chrome": (204, 208, 218), "grey": (128, 128, 128),
    "gray": (128, 128, 128), "charcoal": (56, 56, 62), "black ink": (24, 24, 34), "ink": (26, 26, 38),
    "ebony": (36, 30, 30), "black": (20, 20, 26), "sepia": (112, 70, 30), "brown": (120, 80, 50),
    "umber": (100, 66, 40),
}
"""Colour words the draft understands -> sRGB."""

_ALIASES = {"golden": "gold", "sunrise gold": "sunrise-gold", "warm gold": "warm-gold", "cool-blue": "cool blue",
            "velvet-blue": "velvet blue", "midnight-blue": "midnight blue", "electric-blue": "electric blue",
            "black-ink": "black ink", "inky": "ink"}
_WORDS = sorted(set(COLOURS) | set(_ALIASES), key=len, reverse=True)
_COLOUR_RE = re.compile(
    r"(?<![a-z])(" + "|".join(re.escape(w).replace(r"\ ", r"[\s-]+").replace(r"\-", r"[\s-]+") for w in _WORDS)
    + r")(?![a-z])")

_DEFAULT_ACCENT = (236, 184, 92)      # candle gold
_DEFAULT_DEEP = (48, 58, 98)          # slate blue
_DEFAULT_CLOTH = (168, 74, 58)        # terracotta
_DEFAULT_CLOTH2 = (62, 74, 118)
_SKIN = (222, 170, 138)
_SKINS = np.array([_SKIN, (200, 144, 108), (156, 104, 76), (236, 214, 196), (118, 80, 58)], np.float32) / 255
_HAIRS = np.array([(52, 36, 30), (22, 20, 24), (118, 58, 30), (196, 164, 104), (150, 148, 146)], np.float32) / 255


def colour_words(text: str) -> list[str]:
    """Colour words of a text, in order of appearance, each once (canonical names of COLOURS).

    Args:
        text: any text; case does not matter, "sunrise-gold" and "sunrise gold" are the same word.

    Returns:
        Canonical colour names.
    """
    found: list[str] = []
    for m in _COLOUR_RE.finditer(text.lower()):
        word = re.sub(r"[\s-]+", " ", m.group(1))
        word = _ALIASES.get(word, _ALIASES.get(word.replace(" ", "-"), word))
        if word not in COLOURS:
            word = word.replace(" ", "-")
        if word in COLOURS and word not in found:
            found.append(word)
    return found


def _hsv(rgb: np.ndarray) -> tuple[float, float, float]:
    r, g, b = (float(c) for c in rgb)
    mx, mn = max(r, g, b), min(r, g, b)
    if mx - mn < 1e-6:
        return 0.0, 0.0, mx
    if mx == r:
        h = ((g - b) / (mx - mn)) % 6
    elif mx == g:
        h = (b - r) / (mx - mn) + 2
    else:
        h = (r - g) / (mx - mn) + 4
    return h * 60.0, (mx - mn) / mx, mx


@dataclass(frozen=True)
class _Palette:
    """The colours one layer is painted with (float RGB in [0, 1])."""

    names: tuple[str, ...]
    accent: np.ndarray      # warm light: rim light, glows, gilding
    deep: np.ndarray        # architecture, velvet
    cloth: np.ndarray       # main cloth of the figures
    cloth2: np.ndarray      # second cloth
    haze: np.ndarray        # atmospheric perspective


def _palette(prompt: str, palette: Sequence[str]) -> _Palette:
    names = colour_words(prompt)
    for word in palette:
        for name in colour_words(str(word)):
            if name not in names:
                names.append(name)
    cols = [np.array(COLOURS[n], np.float32) / 255.0 for n in names]
    hsv = [_hsv(c) for c in cols]
    chromatic = [c for c, (h, s, v) in zip(cols, hsv) if s > 0.25]
    warm = [c for c, (h, s, v) in zip(cols, hsv) if 15 <= h <= 65 and s > 0.35 and v > 0.55]
    # Deep, saturated colours (velvet, midnight, carmine) dress the architecture and the drapes; inks and
    # blacks are too dark, and golds and brass are metals and lights, not fabrics.
    deep = [c for c, (h, s, v) in zip(cols, hsv) if s > 0.4 and 0.2 < v < 0.76 and not 32 <= h <= 66]
    cool = [c for c, (h, s, v) in zip(cols, hsv) if 150 <= h <= 290 and s > 0.3]
    accent = warm[0] if warm else np.array(_DEFAULT_ACCENT, np.float32) / 255.0
    deep_c = deep[0] if deep else (cool[0] * 0.7 if cool else np.array(_DEFAULT_DEEP, np.float32) / 255.0)
    cloth = cols[0] if cols else np.array(_DEFAULT_CLOTH, np.float32) / 255.0
    others = [c for c in chromatic if float(np.abs(c - cloth).sum()) > 0.35]
    if others:
        cloth2 = others[0]
    elif cols:
        # One colour only: a darker shade of it, so the figure still reads as one costume.
        cloth2 = cloth * 0.55
    else:
        cloth2 = np.array(_DEFAULT_CLOTH2, np.float32) / 255.0
    cool_c = cool[0] if cool else np.array((0.55, 0.62, 0.78), np.float32)
    haze = np.clip(0.55 * np.array((0.70, 0.76, 0.88), np.float32) + 0.25 * cool_c + 0.2 * accent, 0, 1)
    return _Palette(tuple(names), accent.astype(np.float32), deep_c.astype(np.float32), cloth.astype(np.float32),
                    cloth2.astype(np.float32), haze.astype(np.float32))


# --------------------------------------------------------------------------------------------------------------
# Light

LIGHT_DIRECTIONS: tuple[str, ...] = ("top", "left", "right", "back", "front", "bottom")
"""Light directions the draft understands; combinations such as "top-left" or "upper right" work too."""

_LIGHT_WORDS = {"top": (0, -1, 0), "upper": (0, -1, 0), "above": (0, -1, 0), "overhead": (0, -1, 0),
                "bottom": (0, 1, 0), "lower": (0, 1, 0), "below": (0, 1, 0), "left": (-1, 0, 0),
                "right": (1, 0, 0), "back": (0, 0, -1), "behind": (0, 0, -1), "rim": (0, 0, -1),
                "front": (0, 0, 1), "frontal": (0, 0, 1)}


def light_vector(direction: str) -> np.ndarray:
    """A light direction word -> unit vector (x right, y down, z toward the viewer).

    Args:
        direction: "top", "left", "right", "back", "front", "bottom", or a combination ("top-left").

    Returns:
        float32 (3,) unit vector pointing from the scene toward the light.

    Raises:
        ValueError: no known direction word in `direction`.
    """
    words = re.findall(r"[a-z]+", str(direction).lower())
    vec = np.zeros(3, np.float32)
    known = False
    for w in words:
        if w in _LIGHT_WORDS:
            vec += np.array(_LIGHT_WORDS[w], np.float32)
            known = True
    if not known:
        raise ValueError(f"unknown light direction {direction!r}; use one of {', '.join(LIGHT_DIRECTIONS)}")
    if vec[2] == 0:
        vec[2] = 0.55                  # key lights sit a little in front of the scene
    if abs(vec[0]) + abs(vec[1]) == 0:
        vec[1] = -0.35                 # front and back lights still come slightly from above
    return (vec / np.linalg.norm(vec)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Image helpers. Colour images are float32 (3, H, W). Neighbourhood fields (blurs, gradients, labels) are computed
# once over the whole frame; the per-pixel shading then runs in bands of rows, so its many temporaries stay small
# and in cache: this is what keeps a whole stack well under half a second on two cores.

_BAND_ROWS = 48


def _bands(height: int):
    for r0 in range(0, height, _BAND_ROWS):
        yield slice(r0, min(height, r0 + _BAND_ROWS))


def _tiles(prior: np.ndarray):
    """(rows, cols) slices covering every pixel where the prior is non-zero: bands of rows, each split in a left
    and a right half, trimmed to the columns in use. Layers on a flat backdrop are mostly empty; this skips it."""
    H, W = prior.shape
    used = prior > 0
    halves = ((0, W // 2), (W // 2, W)) if W >= 64 else ((0, W),)
    for rs in _bands(H):
        band = used[rs].any(axis=0)
        for c0, c1 in halves:
            cols = np.flatnonzero(band[c0:c1])
            if cols.size:
                yield rs, slice(c0 + int(cols[0]), c0 + int(cols[-1]) + 1)


def _smoothstep(e0: float, e1: float, x):
    t = np.clip((x - e0) * (1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mix(a, b, t):
    return a + (b - a) * t


def _c(rgb) -> np.ndarray:
    """A colour as a (3, 1, 1) array that broadcasts over (h, W) fields."""
    return np.asarray(rgb, np.float32).reshape(3, 1, 1)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-like blur. Small radii: binomial passes; large radii: blur a reduced copy and scale it back."""
    a = np.asarray(a, np.float32)
    if sigma <= 0:
        return a
    if sigma <= 1.6:
        out = a
        # Each [1, 2, 1] / 4 pass adds a variance of 0.5 per axis.
        for _ in range(max(1, int(round(2 * sigma * sigma)))):
            p = np.pad(out, 1, mode="edge")
            r = p[:-2] + 2.0 * p[1:-1] + p[2:]
            out = (r[:, :-2] + 2.0 * r[:, 1:-1] + r[:, 2:]) * (1.0 / 16.0)
        return out
    H, W = a.shape
    k = max(2, int(sigma / 1.2))
    small = Image.fromarray(a, "F").resize((max(1, W // k), max(1, H // k)), Image.BOX)
    small = ndimage.gaussian_filter(np.asarray(small, np.float32), sigma / k, mode="nearest")
    return np.asarray(Image.fromarray(small, "F").resize((W, H), Image.BILINEAR), np.float32)


def _grad(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences (gx, gy), one-sided at the borders."""
    gx = np.empty_like(a)
    gy = np.empty_like(a)
    gx[:, 1:-1] = (a[:, 2:] - a[:, :-2]) * 0.5
    gx[:, 0] = a[:, 1] - a[:, 0]
    gx[:, -1] = a[:, -1] - a[:, -2]
    gy[1:-1] = (a[2:] - a[:-2]) * 0.5
    gy[0] = a[1] - a[0]
    gy[-1] = a[-1] - a[-2]
    return gx, gy


def _laplace(a: np.ndarray) -> np.ndarray:
    p = np.pad(a, 1, mode="edge")
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * a


def _normals(gx: np.ndarray, gy: np.ndarray, strength: float):
    """Normals (x right, y down, z toward the viewer) of a height field with gradient (gx, gy)."""
    nx, ny = gx * -strength, gy * -strength
    nz = 1.0 / np.sqrt(nx * nx + ny * ny + 1.0)
    return nx * nz, ny * nz, nz


def _lambert(normals, light: np.ndarray) -> np.ndarray:
    nx, ny, nz = normals
    return np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, 1.0)


def _rim(normals, light: np.ndarray, sharp: bool = True) -> np.ndarray:
    """Light grazing the edges that face the light (every edge for a back light)."""
    nx, ny, nz = normals
    edge = np.clip(1.0 - nz, 0.0, 1.0)
    edge = edge * edge if sharp else edge
    side = float(np.hypot(light[0], light[1]))
    if side < 1e-3:
        return edge
    facing = np.clip((nx * light[0] + ny * light[1]) / (side * np.sqrt(np.maximum(1.0 - nz * nz, 1e-8))), 0.0, 1.0)
    back = float(np.clip(-light[2], 0.0, 1.0))
    return edge * (facing * (1.0 - back) + back)


def _stamp_glows(img: np.ndarray, points, radii, colours, mask: Optional[np.ndarray] = None):
    """Add soft four-pointed sparkles to img (3, H, W) in place (a loop over a few dozen points, each a patch)."""
    H, W = img.shape[1:]
    for (x, y), r, col in zip(points, radii, colours):
        reach = r * 5.0
        x0, x1 = int(max(0, x - reach)), int(min(W, x + reach + 1))
        y0, y1 = int(max(0, y - reach)), int(min(H, y + reach + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        gy = np.arange(y0, y1, dtype=np.float32)[:, None] + (0.5 - y)
        gx = np.arange(x0, x1, dtype=np.float32)[None, :] + (0.5 - x)
        dx2, dy2 = (gx / r) ** 2, (gy / r) ** 2
        glow = np.exp(-(dx2 + dy2)) + 0.25 * np.exp(-(dx2 + dy2) / 6.0)
        glow += 0.45 * (np.exp(-dy2 * 6.0 - np.abs(gx / r) * 0.7) + np.exp(-dx2 * 6.0 - np.abs(gy / r) * 0.7))
        if mask is not None:
            glow *= mask[y0:y1, x0:x1]
        img[:, y0:y1, x0:x1] += glow[None] * _c(col)


def _backdrop(colours: Sequence[np.ndarray]) -> np.ndarray:
    """A flat neutral grey that stays clearly apart from the layer's own colours."""
    candidates = [np.full(3, v, np.float32) for v in (0.5, 0.78, 0.24)]
    scores = [min(float(np.abs(c - k).sum()) for k in colours) for c in candidates]
    return candidates[0] if scores[0] >= 0.35 else candidates[int(np.argmax(scores))]


def coverage(req: RenderRequest) -> np.ndarray:
    """The exact coverage the draft paints a layer with: float32 (H, W) in [0, 1], anti-aliased.

    Every midground and foreground pixel is painted as ``colour * c + backdrop * (1 - c)`` with ``c`` this map
    (the clipped prior), so it is the true alpha of the render: the ground truth a matte is scored against.
    The background is opaque everywhere. For benchmarks and tests; the pipeline mattes the RGB as it would a
    model's render and never reads this.
    """
    if req.name == "background":
        return np.ones(np.shape(req.prior), np.float32)
    return np.clip(np.asarray(req.prior, np.float32), 0.0, 1.0)


def _rng(seed: int, name: str) -> np.random.Generator:
    # The layer name is mixed in so that equal seeds on two layers still give two different paintings.
    return np.random.default_rng([int(seed) % (1 << 63), zlib.crc32(name.encode("utf-8"))])


WHITE = np.ones(3, np.float32)
IVORY = np.array((0.93, 0.9, 0.84), np.float32)


# --------------------------------------------------------------------------------------------------------------
# Background


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


# --------------------------------------------------------------------------------------------------------------
# Midground


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


# --------------------------------------------------------------------------------------------------------------
# Foreground

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


# --------------------------------------------------------------------------------------------------------------
# The backend


def _to_image(col: np.ndarray) -> Image.Image:
    u8 = np.clip(col * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.merge("RGB", [Image.fromarray(u8[i], "L") for i in range(3)])


def _check_size(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 16 <= v <= 8192:
        raise ValueError(f"{name} must be an integer from 16 to 8192, got {v!r}")


class DraftBackend:
    """Procedural layout painter: offline, deterministic for a seed, a fraction of a second per stack."""

    name = "draft"
    model_info = {"model": "procedural draft", "weights": None}

    def check_inputs(self, requests: Sequence[RenderRequest], settings: RenderSettings) -> np.ndarray:
        """Validate a batch once, before painting anything.

        Args:
            requests: the layers to paint.
            settings: the shared render settings.

        Returns:
            The light vector for settings.light_direction.

        Raises:
            ValueError: no requests, an unknown layer name, a control or prior of the wrong shape or outside
                [0, 1], a bad size, or an unknown light direction.
        """
        if not requests:
            raise ValueError("nothing to render: no layer requests")
        _check_size("width", settings.width)
        _check_size("height", settings.height)
        shape = (settings.height, settings.width)
        for req in requests:
            if req.name not in _PAINTERS:
                raise ValueError(f"unknown layer {req.name!r}; choose one of {', '.join(_PAINTERS)}")
            for what in ("control", "prior"):
                check_unit_map(getattr(req, what), f"{req.name} {what}", shape=shape)
        return light_vector(settings.light_direction)

    def render(self, requests: Sequence[RenderRequest], settings: RenderSettings,
               progress: Optional[ProgressCallback] = None) -> RenderResult:
        """Paint each requested layer.

        Args:
            requests: layers to paint (background, midground, foreground), with controls and priors of shape
                (settings.height, settings.width).
            settings: size, light direction and palette (steps and guidance do not apply to a draft).
            progress: called as progress(layer name, step, total) while painting; step == total when a layer
                is done.

        Returns:
            RenderResult: one RGB image per request, in request order, and facts for the manifest.

        Raises:
            ValueError: see check_inputs.
        """
        light = self.check_inputs(requests, settings)
        images, palettes = [], {}
        total = 3
        for req in requests:
            pal = _palette(req.prompt, settings.palette)
            palettes[req.name] = list(pal.names)
            rng = _rng(req.seed, req.name)
            if progress is not None:
                progress(req.name, 1, total)
            if req.name == "background":
                col = _paint_background(req, pal, light, rng)
            else:
                own = [pal.cloth, pal.cloth2, pal.accent, pal.deep, np.array(_SKIN, np.float32) / 255]
                col = _PAINTERS[req.name](req, pal, light, rng, _backdrop(own))
            if progress is not None:
                progress(req.name, 2, total)
            images.append(_to_image(col))
            if progress is not None:
                progress(req.name, total, total)
        info = {
            "backend": self.name,
            "batching": "batched",
            "model": "procedural draft",
            "light_direction": settings.light_direction,
            "palette": palettes,
            "seeds": {req.name: int(req.seed) for req in requests},
        }
        return RenderResult(images=images, info=info)

    def render_with_coverage(self, requests: Sequence[RenderRequest], settings: RenderSettings,
                             progress: Optional[ProgressCallback] = None) -> tuple[RenderResult, list[np.ndarray]]:
        """``render``, plus the exact coverage of each layer beside its RGB (see ``coverage``).

        Returns:
            (the RenderResult, one float32 (H, W) coverage map per request, in request order).
        """
        result = self.render(requests, settings, progress)
        return result, [coverage(req) for req in requests]


_PAINTERS = {"background": _paint_background, "midground": _paint_midground, "foreground": _paint_foreground}

__all__ = ["COLOURS", "LIGHT_DIRECTIONS", "DraftBackend", "colour_words", "coverage", "light_vector"]
