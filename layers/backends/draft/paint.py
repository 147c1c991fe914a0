"""What the draft's painters share: bands and tiles of rows, blurs, gradients, normals and shading, sparkles, the
plain backdrop, the exact coverage of a layer and the seeded random generator of each layer.

Colour images are float32 (3, H, W). Neighbourhood fields (blurs, gradients, labels) are computed once over the whole
frame; the per-pixel shading then runs in bands of rows, so its many temporaries stay small and in cache: this is
what keeps a whole stack well under half a second on two cores.
"""
from __future__ import annotations

import zlib
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from ..base import RenderRequest


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
