"""Parallax: camera paths over a LayerStack -> video frames, and the frames -> MP4 / GIF / WebP.

The camera model is 2.5D: each layer is a card at its own nearness (``StackLayer.nearness``, 1 = near).

- ``sway``: the camera slides left and right; a layer moves sideways by ``amount * width * nearness``
  at the extremes, so the background moves least and the foreground most.
- ``circle``: the camera moves on a circle; a layer traces a circle of that radius around its place.
- ``zoom``: a dolly zoom about the frame centre: the median nearness of the layers (``middle``, the subject)
  keeps its size while nearer layers grow and farther ones shrink,
  ``scale = 1 + 4 * amount * (nearness - middle) * g(t)`` with ``g`` going 0 -> 1 -> 0.

Every path is a loop (the frame after the last is the first). With ``displacement > 0`` a layer is not a
flat card any more: each pixel moves with its own nearness ``n + displacement * (depth - n)`` taken from the
layer's depth map.

No black borders: the whole view is zoomed in just enough (overscan) that the opaque background, and any
layer whose content touches the frame edge, never shows its own edge, whatever the path does.

Speed: the regions of each layer that hold content are upsampled 2x once (Pillow premultiplies while
resampling, so edges do not darken); a frame then samples them with nearest-neighbour lookups into the 2x
image (half-pixel precision, Pillow's affine transform) and stacks them with Pillow's "paste with alpha
mask", which is exactly "over" onto the opaque background, all in C. The per-pixel displacement path looks
pixels up with numpy index arrays instead (vectorised, no Python loop over pixels). ``iter_parallax_frames``
yields frames as they are drawn, so ``write_video`` can encode an MP4 while the next frames are rendered.
"""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, Union

import numpy as np
from PIL import Image

from .export import atomic_path
from .stack import LayerStack, premultiply

__all__ = ["CAMERA_PATHS", "VIDEO_SUFFIXES", "camera_motion", "iter_parallax_frames", "render_parallax_frames",
           "render_view",
           "write_video"]

CAMERA_PATHS: tuple[str, ...] = ("sway", "circle", "zoom")
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".gif", ".webp")
MAX_FRAMES = 2000
SUPERSAMPLE = 2
ZOOM_STRENGTH = 4.0
"""Relative scale per unit of nearness difference per unit of ``amount`` on the zoom path."""


def camera_motion(path: str, frames: int, amount: float, nearness, middle: float, width: int):
    """Scale and shift of a layer (or of each pixel) at every frame of a camera path.

    Args:
        path: one of CAMERA_PATHS.
        frames: number of frames N.
        amount: motion strength (fraction of the width a nearness-1 layer moves on sway/circle).
        nearness: scalar or array of nearness values in [0, 1].
        middle: nearness that keeps its size on the zoom path.
        width: frame width in pixels.

    Returns:
        (scale, dx, dy): arrays of shape (N,) + shape of ``nearness``; dx, dy in output pixels.
    """
    n = np.asarray(nearness, dtype=np.float64)
    phase = 2.0 * math.pi * np.arange(frames, dtype=np.float64).reshape((frames,) + (1,) * n.ndim) / frames
    return _motion(path, phase, amount, n, middle, width)


def _motion(path: str, phase, amount: float, n: np.ndarray, middle: float, width: int):
    """(scale, dx, dy) at camera phase(s) ``phase`` (radians) for nearness ``n``, broadcast together."""
    shape = np.broadcast_shapes(np.shape(phase), n.shape)
    radius = amount * width * n
    if path == "sway":
        return np.ones(shape), np.broadcast_to(radius * np.sin(phase), shape), np.zeros(shape)
    if path == "circle":
        return (np.ones(shape), np.broadcast_to(radius * np.sin(phase), shape),
                np.broadcast_to(-radius * np.cos(phase), shape))
    if path == "zoom":
        g = 0.5 * (1.0 - np.cos(phase))
        return (np.broadcast_to(1.0 + ZOOM_STRENGTH * amount * (n - middle) * g, shape),
                np.zeros(shape), np.zeros(shape))
    raise ValueError(f"unknown camera path {path!r}; choose one of {', '.join(CAMERA_PATHS)}")


def render_parallax_frames(stack: LayerStack, path: str = "sway", *, frames: int = 60, amount: float = 0.04,
                           displacement: float = 0.0) -> np.ndarray:
    """Render a looping parallax clip of the stack.

    Args:
        stack: the layers, back to front; the first is opaque.
        path: camera path, one of CAMERA_PATHS.
        frames: number of frames (1..MAX_FRAMES).
        amount: motion strength in (0, 0.25]: how far (fraction of the width) a nearness-1 layer moves.
        displacement: 0 (flat cards) .. 1 (each pixel moves by its own depth).

    Returns:
        uint8 array (frames, H, W, 3).
    """
    width, height = _check_render(stack, path, frames, amount, displacement)
    out = np.empty((frames, height, width, 3), np.uint8)
    for k, frame in enumerate(iter_parallax_frames(stack, path, frames=frames, amount=amount,
                                                    displacement=displacement)):
        out[k] = frame
    return out


def iter_parallax_frames(stack: LayerStack, path: str = "sway", *, frames: int = 60, amount: float = 0.04,
                         displacement: float = 0.0) -> Iterator[np.ndarray]:
    """The frames of ``render_parallax_frames`` one at a time, as they are rendered.

    Handing this to ``write_video`` lets the MP4 encoder work on earlier frames while later ones are drawn.

    Args:
        stack, path, frames, amount, displacement: as for ``render_parallax_frames``.

    Returns:
        An iterator of uint8 (H, W, 3) frames. Arguments are checked before the first frame is asked for.
    """
    width, height = _check_render(stack, path, frames, amount, displacement)
    return _frames(stack, path, frames, amount, displacement, width, height)


def _check_render(stack, path, frames, amount, displacement) -> tuple[int, int]:
    if not isinstance(stack, LayerStack):
        raise ValueError(f"stack must be a LayerStack, got {type(stack).__name__}")
    if path not in CAMERA_PATHS:
        raise ValueError(f"unknown camera path {path!r}; choose one of {', '.join(CAMERA_PATHS)}")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not 1 <= frames <= MAX_FRAMES:
        raise ValueError(f"frames must be an integer in [1, {MAX_FRAMES}], got {frames!r}")
    if isinstance(amount, bool) or not (isinstance(amount, (int, float)) and 0.0 < amount <= 0.25):
        raise ValueError(f"amount must be in (0, 0.25], got {amount!r}")
    if isinstance(displacement, bool) or not (isinstance(displacement, (int, float))
                                              and 0.0 <= displacement <= 1.0):
        raise ValueError(f"displacement must be in [0, 1], got {displacement!r}")
    return stack.size


def _frames(stack, path, frames, amount, displacement, width, height) -> Iterator[np.ndarray]:
    nearness = [float(np.clip(layer.nearness, 0.0, 1.0)) for layer in stack]
    middle = float(np.median(nearness))
    # Per layer the nearness extremes its pixels can take (only the layer's own value for flat cards).
    extremes = []
    for layer, n in zip(stack, nearness):
        if displacement > 0.0:
            d = layer.depth
            extremes.append((n + displacement * (float(d.min()) - n), n + displacement * (float(d.max()) - n)))
        else:
            extremes.append((n, n))
    overscan = _overscan(stack, path, frames, amount, middle, extremes)
    pieces = [_pieces(layer, index == 0, single=displacement > 0.0) for index, layer in enumerate(stack)]
    depths = [_smooth_depth(layer.depth, width, height) for layer in stack] if displacement > 0.0 else []

    for k in range(frames):
        phase = 2.0 * math.pi * k / frames
        canvas = None
        for index in range(len(stack)):
            n, (lo, hi) = nearness[index], extremes[index]
            motion = [tuple(float(m) for m in _motion(path, phase, amount, np.float64(v), middle, width))
                      for v in (n, lo, hi)]
            for piece in pieces[index]:
                rect = _output_rect(piece.box, motion[1:], overscan, width, height)
                if rect is None:
                    continue
                if displacement > 0.0:
                    moved = _gather(piece, rect, depths[index], n, displacement, phase, path, amount, middle,
                                    overscan, (width, height))
                else:
                    scale, dx, dy = motion[0]
                    coeffs = _affine(width, height, overscan * scale, dx, dy, rect[:2], piece.box[:2])
                    moved = piece.image.transform((rect[2] - rect[0], rect[3] - rect[1]), Image.AFFINE, coeffs,
                                                  Image.NEAREST)
                if canvas is None:
                    canvas = moved.convert("RGB")
                else:
                    canvas.paste(moved, rect[:2], moved)
        yield np.asarray(canvas)


class _Piece:
    """A region of a layer holding content, upsampled SUPERSAMPLE times; ``box`` = (x0, y0, x1, y1) in layer px."""

    __slots__ = ("box", "image", "flat")

    def __init__(self, box: tuple[int, int, int, int], image: Image.Image):
        self.box = box
        self.image = image
        self.flat = None


def _pieces(layer, opaque: bool, single: bool) -> list:
    """Upsampled regions of a layer that hold all its non-transparent pixels (the whole frame if opaque).

    Sampling and pasting only those regions makes a frame cost what the content covers, not the frame.
    """
    width, height = layer.rgba.size
    if opaque:
        big = layer.rgba.convert("RGB").resize((width * SUPERSAMPLE, height * SUPERSAMPLE), Image.BILINEAR)
        return [_Piece((0, 0, width, height), big)]
    pieces = []
    for box in _content_boxes(layer.alpha, single=single):
        crop = layer.rgba.crop(box)
        # Pillow premultiplies RGBA while resampling, so transparent pixels' colours do not bleed in.
        pieces.append(_Piece(box, crop.resize((crop.width * SUPERSAMPLE, crop.height * SUPERSAMPLE),
                                              Image.BILINEAR)))
    return pieces


def _content_boxes(alpha: np.ndarray, *, single: bool, block: int = 16, pad: int = 3, most: int = 24) -> list:
    """Boxes (x0, y0, x1, y1) covering every pixel with alpha > 0, grown by ``pad`` pixels, not overlapping.

    Boxes come from the connected groups of ``block``-sized tiles holding content; past ``most`` boxes the
    pairs whose union wastes the least area are merged (each box costs a little per frame). Boxes that
    overlap once grown are merged too: two boxes must never sample the same content, or it would be
    composited twice.
    """
    from scipy import ndimage

    h, w = alpha.shape
    hb, wb = -(-h // block), -(-w // block)
    tiles = np.zeros((hb * block, wb * block), bool)
    tiles[:h, :w] = alpha > 0.0
    tiles = tiles.reshape(hb, block, wb, block).any(axis=(1, 3))
    if not tiles.any():
        return []
    labels, _ = ndimage.label(tiles, structure=np.ones((3, 3), bool))
    boxes = np.array([(sl[1].start * block - pad, sl[0].start * block - pad, sl[1].stop * block + pad,
                       sl[0].stop * block + pad) for sl in ndimage.find_objects(labels)], np.int64)
    if single:
        boxes = np.array([[boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]])
    while len(boxes) > 1:
        lo = np.minimum(boxes[:, None, :2], boxes[None, :, :2])
        hi = np.maximum(boxes[:, None, 2:], boxes[None, :, 2:])
        overlap = ((np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
                    - np.maximum(boxes[:, None, :2], boxes[None, :, :2])) > 0).all(axis=-1)
        np.fill_diagonal(overlap, False)
        if overlap.any():
            i, j = np.argwhere(overlap)[0]
        elif len(boxes) > most:
            area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1)
            waste = np.prod(hi - lo, axis=-1) - area[:, None] - area[None, :]
            np.fill_diagonal(waste, np.iinfo(np.int64).max)
            i, j = np.unravel_index(np.argmin(waste), waste.shape)
        else:
            break
        merged = np.concatenate([lo[i, j], hi[i, j]])
        boxes = np.vstack([np.delete(boxes, [i, j], axis=0), merged[None]])
    return [(max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1))) for x0, y0, x1, y1 in boxes]


def _output_rect(box, motions, overscan: float, width: int, height: int):
    """Frame pixels a layer box can land on under the given motions (scale, dx, dy), grown by 1 px."""
    cx, cy = width / 2.0, height / 2.0
    xs, ys = [], []
    for scale, dx, dy in motions:
        z = overscan * scale
        xs += [cx + z * (box[0] - cx) + dx, cx + z * (box[2] - cx) + dx]
        ys += [cy + z * (box[1] - cy) + dy, cy + z * (box[3] - cy) + dy]
    x0, x1 = max(0, math.floor(min(xs)) - 1), min(width, math.ceil(max(xs)) + 1)
    y0, y1 = max(0, math.floor(min(ys)) - 1), min(height, math.ceil(max(ys)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def _affine(width: int, height: int, scale: float, dx: float, dy: float, offset=(0, 0), origin=(0, 0)) -> tuple:
    """Pillow AFFINE coefficients for a layer scaled about the frame centre by ``scale`` and moved by (dx, dy):
    output pixel (x + offset) -> pixel of the upsampled piece that starts at ``origin`` of the layer."""
    cx, cy = width / 2.0, height / 2.0
    k = SUPERSAMPLE / scale
    return (k, 0.0, SUPERSAMPLE * (cx - origin[0]) + k * (offset[0] - cx - dx),
            0.0, k, SUPERSAMPLE * (cy - origin[1]) + k * (offset[1] - cy - dy))


def _gather(piece, rect, depth, n, displacement, phase, path, amount, middle, overscan, size) -> Image.Image:
    """One piece of a layer where each pixel moves with its own nearness: vectorised lookups (float32)."""
    width, height = size
    cx, cy = width / 2.0, height / 2.0
    x0, y0, x1, y1 = rect
    u = np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - cx)   # output x relative to the centre
    v = np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - cy)
    scale, dx, dy = (float(m) for m in _motion(path, phase, amount, np.float64(n), middle, width))
    # Where the flat card would sample; the depth there says how much nearer or farther this pixel is.
    z = overscan * scale
    xi = np.clip(((u - dx) / z + cx).astype(np.intp), 0, width - 1)
    yi = np.clip(((v - dy) / z + cy).astype(np.intp), 0, height - 1)
    n_pix = np.take(np.take(depth, yi, axis=0), xi, axis=1)
    n_pix *= np.float32(displacement)
    n_pix += np.float32(n * (1.0 - displacement))
    if piece.flat is None:
        piece.flat = _padded_flat(piece.image)
    bx0, by0 = piece.box[:2]
    big_w, big_h = piece.image.size
    # Coordinates in the upsampled piece, +1 for the one-pixel border _padded_flat adds.
    kx, ky = SUPERSAMPLE * (cx - bx0) + 1.0, SUPERSAMPLE * (cy - by0) + 1.0
    if path == "zoom":
        g = 0.5 * (1.0 - math.cos(phase))
        inv = n_pix - np.float32(middle)
        inv *= np.float32(ZOOM_STRENGTH * amount * g)
        inv += np.float32(1.0)
        np.reciprocal(inv, out=inv)
        inv *= np.float32(SUPERSAMPLE / overscan)
        sx = inv * u[None, :]
        sx += np.float32(kx)
        sy = inv * v[:, None]
        sy += np.float32(ky)
    else:
        a = SUPERSAMPLE / overscan
        shift = np.float32(amount * width * a)
        sx = n_pix * (-shift * np.float32(math.sin(phase)))
        sx += (u * np.float32(a) + np.float32(kx))[None, :]
        if path == "circle":
            sy = n_pix * (shift * np.float32(math.cos(phase)))
            sy += (v * np.float32(a) + np.float32(ky))[:, None]
        else:
            sy = (v * np.float32(a) + np.float32(ky))[:, None]
    stride = big_w + 2
    np.clip(sx, 0, big_w + 1, out=sx)
    sy = np.clip(sy, 0, big_h + 1).astype(np.int32)
    index = sx.astype(np.int32)
    index += sy * np.int32(stride)
    gathered = piece.flat[index]
    return Image.fromarray(gathered.view(np.uint8).reshape(y1 - y0, x1 - x0, 4), "RGBA")


def _smooth_depth(depth: np.ndarray, width: int, height: int) -> np.ndarray:
    """The layer's depth, blurred: a per-pixel warp from a sharp map tears and doubles small objects at
    depth edges (backward lookups); a smooth one bends the card instead."""
    from scipy import ndimage

    return ndimage.gaussian_filter(np.asarray(depth, dtype=np.float32), 0.02 * min(width, height))


def _padded_flat(image: Image.Image) -> np.ndarray:
    """The upsampled piece as flat uint32 RGBA pixels with a one-pixel border: clear around a transparent
    piece (outside it shows nothing), the edge repeated around the opaque background (clamped lookups)."""
    rgba = np.asarray(image.convert("RGBA"))
    if image.mode == "RGBA":
        padded = np.pad(rgba, ((1, 1), (1, 1), (0, 0)))
    else:
        padded = np.pad(rgba, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded).view(np.uint32).reshape(-1)


def _touches_edge(alpha: np.ndarray) -> bool:
    edge = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
    return bool((edge > 1.0 / 255.0).any())


def _overscan(stack: LayerStack, path: str, frames: int, amount: float, middle: float, extremes) -> float:
    """Smallest zoom of the whole view that keeps every edge-touching layer's border out of the frame.

    A layer at scale s moved by d shows source x in [c - (c + |d|)/(Z s), c + (c + |d|)/(Z s)]; that stays
    inside [0, 2c] when Z >= (c + |d|) / (c s). One extra pixel covers nearest-neighbour rounding.
    """
    width, height = stack.size
    cx, cy = width / 2.0, height / 2.0
    zoom = 1.0
    for index, (layer, (lo, hi)) in enumerate(zip(stack, extremes)):
        if index > 0 and not _touches_edge(layer.alpha):
            continue
        scale, dx, dy = camera_motion(path, frames, amount, np.array([lo, hi]), middle, width)
        need_x = (cx + np.abs(dx) + 1.0) / (cx * scale)
        need_y = (cy + np.abs(dy) + 1.0) / (cy * scale)
        zoom = max(zoom, float(need_x.max()), float(need_y.max()))
    return zoom


# --------------------------------------------------------------------------------------------- one view

def render_view(stack: LayerStack, shift: tuple[float, float], vertical: tuple[float, float] = (0.0, 0.0), *,
                iterations: int = 4) -> np.ndarray:
    """The stack seen from a moved camera, every pixel displaced by its own layer's depth.

    A pixel of nearness ``n`` (``StackLayer.depth``) moves by ``shift[0] * n + shift[1]`` pixels to the right
    and ``vertical[0] * n + vertical[1]`` pixels down: an affine map from nearness to pixel shift, so a camera
    move of known size is rendered exactly. For a rectified stereo pair whose depth map is the disparity
    stretched to [0, 1] from [lo, hi] pixels, the right camera's view is ``shift = (-(hi - lo), -lo)``.

    Each layer is warped forwards: every source pixel lands on the output pixels around its new place, the
    nearest one winning where several land (a layer folds over itself at a depth edge), and each output pixel
    keeps the exact sub-pixel source position that lands there; output pixels nothing lands on (a layer
    stretching) take the source found by a backward fixed-point search on the layer's depth. The layer is
    then sampled there bilinearly in premultiplied alpha, and the layers composited back to front. Lookups
    past the frame edge repeat the edge pixel, so the frame has no border; what a nearer layer uncovers is the
    farther layers' filled content.

    Args:
        stack: the layers, back to front, each with its completed depth.
        shift: (pixels per unit of nearness, pixels at nearness 0), horizontal.
        vertical: the same, vertical.
        iterations: fixed-point steps of the backward warp, 1..16.

    Returns:
        uint8 (H, W, 3).
    """
    if not isinstance(stack, LayerStack):
        raise ValueError(f"stack must be a LayerStack, got {type(stack).__name__}")
    coeffs = []
    for name, pair in (("shift", shift), ("vertical", vertical)):
        try:
            a, b = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be two numbers (pixels per unit of nearness, offset), "
                             f"got {pair!r}") from None
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"{name} must be finite, got {pair!r}")
        coeffs.append((a, b))
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 1 <= iterations <= 16:
        raise ValueError(f"iterations must be an integer in [1, 16], got {iterations!r}")
    (ax, bx), (ay, by) = coeffs
    width, height = stack.size
    out = np.zeros((height, width, 3), np.float32)
    for layer in stack:
        depth = np.asarray(layer.depth, dtype=np.float32)
        sx = np.full((height, width), np.nan, np.float32)
        sy = np.full((height, width), np.nan, np.float32)
        _splat_sources(sx, sy, depth, layer.alpha > 0.0, (ax, bx), (ay, by))
        hole_y, hole_x = np.nonzero(np.isnan(sx))
        if hole_y.size:
            hx, hy = hole_x.astype(np.float32), hole_y.astype(np.float32)
            px, py = hx.copy(), hy.copy()
            for _ in range(iterations):
                n = _bilinear(depth[..., None], px, py)[..., 0]
                px = hx - (ax * n + bx)
                py = hy - (ay * n + by)
            sx[hole_y, hole_x] = px
            sy[hole_y, hole_x] = py
        pre = premultiply(layer.rgba)
        if (layer.alpha > 0.0).all():
            sample = _bilinear(pre, sx, sy)
            out *= 1.0 - sample[..., 3:4]
            out += sample[..., :3]
            continue
        # A layer with clear parts: its colour is looked up only where its sampled alpha is not 0 (a nearer
        # layer is mostly clear, so this skips most of the frame).
        alpha = _bilinear(pre[..., 3:4], sx, sy)[..., 0]
        ys, xs = np.nonzero(alpha > 0.0)
        colour = _bilinear(pre[..., :3], sx[ys, xs], sy[ys, xs])
        out[ys, xs] = out[ys, xs] * (1.0 - alpha[ys, xs])[:, None] + colour
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _splat_sources(sx: np.ndarray, sy: np.ndarray, depth: np.ndarray, content: np.ndarray, horizontal, vertical):
    """Overwrite (in place) the source position of every output pixel a source pixel lands on.

    Each source pixel lands on the 2 (or 4) output pixels around its displaced position; where several land,
    content beats transparency and then the nearer wins (written last after a sort by that key).
    """
    (ax, bx), (ay, by) = horizontal, vertical
    height, width = depth.shape
    # A 16-bit key (content first, then nearness in 2^15 steps): numpy sorts it by radix, several times faster
    # than a float sort; depths closer than 1/32767 apart are a tie either way.
    near = np.rint(np.clip(depth.ravel(), 0.0, 1.0) * np.float32(32767)).astype(np.uint16)
    key = near + content.ravel().astype(np.uint16) * np.uint16(32768)
    order = np.argsort(key, kind="stable")
    src_y, src_x = np.divmod(order, width)
    n = depth.ravel()[order]
    # float32 throughout (an intp + float32 sum would be float64) and one flat index per write.
    dx = np.float32(ax) * n + np.float32(bx)
    dy = np.float32(ay) * n + np.float32(by)
    tx = src_x.astype(np.float32) + dx
    ty = src_y.astype(np.float32) + dy
    xs_options = (np.floor(tx), np.ceil(tx))
    ys_options = (np.floor(ty), np.ceil(ty)) if (ay or by) else (ty,)
    flat_sx, flat_sy = sx.reshape(-1), sy.reshape(-1)
    for target_y in ys_options:
        iy = np.rint(target_y).astype(np.intp)
        inside_y = (iy >= 0) & (iy < height)
        row = iy * width
        for target_x in xs_options:
            ix = target_x.astype(np.intp)
            ok = inside_y & (ix >= 0) & (ix < width)
            at = (row + ix)[ok]
            # numpy writes repeated indices in order, so the last (nearest) source wins.
            flat_sx[at] = (target_x - dx)[ok]
            flat_sy[at] = (target_y - dy)[ok]


def _bilinear(image: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a (H, W, C) float array at (sx, sy) (pixel centres at integers), edges repeated."""
    h, w = image.shape[:2]
    sx = np.clip(sx, 0.0, w - 1.0)
    sy = np.clip(sy, 0.0, h - 1.0)
    x0 = np.minimum(sx.astype(np.intp), w - 2) if w > 1 else np.zeros(sx.shape, np.intp)
    y0 = np.minimum(sy.astype(np.intp), h - 2) if h > 1 else np.zeros(sy.shape, np.intp)
    # float32 weights: ``sx - x0`` with an integer array would promote every product below to float64.
    fx = (sx - x0).astype(np.float32)[..., None]
    fy = (sy - y0).astype(np.float32)[..., None]
    flat = image.reshape(h * w, -1)
    base = y0 * w + x0
    dx = 1 if w > 1 else 0
    dy = w if h > 1 else 0
    top = flat[base]
    top += (flat[base + dx] - top) * fx
    bottom = flat[base + dy]
    bottom += (flat[base + dy + dx] - bottom) * fx
    top += (bottom - top) * fy
    return top.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------- video

def write_video(frames: Union[np.ndarray, Iterable[np.ndarray]], path: Union[str, os.PathLike], *,
                fps: float = 30) -> Path:
    """Write frames as a looping video, atomically (a temp file renamed into place).

    Args:
        frames: uint8 (N, H, W, 3) array, or an iterable of (H, W, 3) uint8 frames of one size (for example
            ``iter_parallax_frames``: an MP4 is then encoded while the frames are still being drawn).
        path: ``.mp4`` (H.264, yuv420p, via imageio-ffmpeg; odd sizes are padded to even), ``.gif`` or
            ``.webp`` (animated, via Pillow).
        fps: frames per second, in (0, 120].

    Returns:
        The path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"unknown video type {path.suffix or path.name!r}; use one of {', '.join(VIDEO_SUFFIXES)}")
    if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and 0 < fps <= 120):
        raise ValueError(f"fps must be in (0, 120], got {fps!r}")
    if isinstance(frames, np.ndarray) and (frames.ndim != 4 or frames.shape[0] < 1):
        raise ValueError(f"frames must be uint8 (N, H, W, 3) with N >= 1, got {frames.dtype} {frames.shape}")
    stream = _checked_frames(frames)
    first = next(stream, None)
    if first is None:
        raise ValueError("frames must hold at least one frame, got none")
    with atomic_path(path) as tmp:
        if suffix == ".mp4":
            _write_mp4(first, stream, tmp, fps)
        else:
            array = np.stack([first, *stream])
            images = [Image.fromarray(frame, "RGB") for frame in array]
            duration = max(1, int(round(1000.0 / fps)))
            if suffix == ".gif":
                # One shared palette keeps the loop from flickering and is much faster than per-frame palettes.
                palette = _gif_palette(array)
                paletted = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
                paletted[0].save(tmp, format="GIF", save_all=True, append_images=paletted[1:],
                                 duration=duration, loop=0, optimize=False, disposal=1)
            else:
                images[0].save(tmp, format="WEBP", save_all=True, append_images=images[1:], duration=duration,
                               loop=0, quality=80, method=0)
    return path


def _checked_frames(frames) -> Iterator[np.ndarray]:
    """The frames one by one, each checked to be uint8 (H, W, 3) of the first frame's size."""
    shape = None
    for index, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3 or min(frame.shape[:2]) < 1:
            raise ValueError(f"frames must be uint8 (H, W, 3); frame {index} is {frame.dtype} {frame.shape}")
        if shape is None:
            shape = frame.shape
        elif frame.shape != shape:
            raise ValueError(f"frame {index} is {frame.shape[:2]}, the first frame is {shape[:2]}")
        yield frame


def _gif_palette(frames: np.ndarray) -> Image.Image:
    """A 256-colour palette from a strip of a few frames (the clip's colours barely change over a loop)."""
    picks = frames[np.linspace(0, len(frames) - 1, num=min(4, len(frames))).astype(int)]
    strip = Image.fromarray(np.concatenate(list(picks[:, ::2, ::2]), axis=0), "RGB")
    return strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT)


def _write_mp4(first: np.ndarray, rest: Iterator[np.ndarray], path: Path, fps: float) -> None:
    import imageio_ffmpeg  # only when an MP4 is written

    height, width = first.shape[:2]
    # yuv420p needs even sizes: pad by repeating the last row/column rather than resampling.
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    size = (width + width % 2, height + height % 2)
    writer = imageio_ffmpeg.write_frames(
        str(path), size, fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
        ffmpeg_log_level="error",
        # superfast: about half the encoding time of veryfast at 512x768 for a larger file; the clip is a preview.
        output_params=["-crf", "22", "-preset", "superfast", "-movflags", "+faststart", "-f", "mp4"])
    writer.send(None)
    try:
        for frame in itertools.chain([first], rest):
            if pad[0][1] or pad[1][1]:
                frame = np.pad(frame, pad, mode="edge")
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()  # stops ffmpeg whether or not every frame arrived
    if not path.exists() or path.stat().st_size == 0:
        raise OSError(f"ffmpeg did not write {path}")
