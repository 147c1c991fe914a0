"""A picture + its depth -> a LayerStack: depth bands, soft matted boundaries, hidden parts filled.

Plain values in and out: a PIL image and a float32 nearness map (1 = near) go in, a ``Decomposition`` (the
stack, the thresholds chosen, where each layer was filled, notices) comes out. Reading files is
``load_picture`` / ``load_depth``; the CLI, the studio and model mode ("compose, then layer") call these.

How a picture is split:

1. **Bands.** ``N - 1`` nearness thresholds cut the depth map into N bands, back to front. A fixed count
   (2..6) or ``"auto"`` puts the thresholds in the deepest valleys of the depth histogram (``auto`` also
   picks how many valleys are deep enough to be worth a layer).
2. **Soft boundaries.** For each threshold, the region nearer than it is matted on the picture
   (``matte.matte_layer``: closed-form matting on a trimap around the band edge, or a rembg session), giving
   nested mattes ``A_1 >= A_2 >= ...``. Layer k's alpha is what is left of its matte once the nearer ones are
   taken out, ``(A_k - A_k+1) / (1 - A_k+1)``; under a nearer layer (where that is undefined) layer k
   carries on behind the occluder wherever the nearest visible pixel beyond the occluder is its own
   (so a figure continues behind the debris in front of it, the wall does not turn into the figure).
3. **Exact colours.** Front to back, each layer's colour and what shows behind it are split so that
   ``seen = alpha * layer + (1 - alpha) * behind`` holds exactly (the side with the larger weight is solved
   for, the other side estimated from its own solid pixels): compositing the stack gives back the picture,
   up to 8-bit rounding.
4. **Hidden parts filled.** Where a layer is covered by nearer ones, its colour and its depth are filled
   from that layer's own visible pixels only (never from the occluder). The depth by a smooth push-pull fill
   (a surface continues smoothly behind what is in front of it); the colour, by default, with patches of the
   layer's own texture at the hidden part's depth (``fill.texture_fill``, ``fill="texture"``), or smoothly
   (``fill="smooth"``, push-pull). With a backend that can repaint (``Repainter``: model mode), the hidden
   parts are repainted in one batched call under the completed depth instead, and the offline fill stays as
   the start image and the fallback.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .backends.base import ModelUnavailableError, RenderSettings, RepaintRequest, span_progress
from .fill import check_fill, push_pull, texture_fill
from .images import ImageSource, check_unit_map, open_image, read_npy
from .matte import MatteSettings, matte_layer
from .stack import LayerStack, StackLayer, with_alpha

__all__ = ["DecomposeSettings", "Decomposition", "MAX_LAYERS", "MIN_LAYERS", "MIN_SIDE", "check_layer_count",
           "choose_thresholds",
           "check_picture", "decompose", "hidden_mask", "layer_names", "load_depth", "load_picture", "prepare_depth",
           "refill_layer", "repaint_layer"]

MIN_LAYERS, MAX_LAYERS = 2, 6
MIN_SIDE = 32
"""Smallest width or height accepted: below it there is no room for a soft edge between two layers."""

Progress = Callable[[float, str], None]
LayerCount = Union[int, str]


@dataclass(frozen=True)
class DecomposeSettings:
    """How a picture is split and filled."""

    band: float = 0.01
    """Half-width of the matted edge between two layers, as a fraction of the short side (matte.py's band)."""
    reach: float = 0.15
    """How far (fraction of the long side) a layer carries on behind a nearer one: beyond, the layer behind shows."""
    far_bias: float = 0.0
    """How strongly a fill prefers the farther of a layer's own pixels (0 = all alike). The fill only ever
    draws on the layer's own pixels, which already lie beyond its occluders; on the motorcycle stereo pair a
    further bias scored no better (bench/bench_stereo.py: 0 -> 16.73 dB disoccluded, 6 -> 16.66, 12 -> 16.37)."""
    min_share: float = 0.01
    """Smallest share of the picture a depth band may hold; thresholds are moved to keep every band this big."""
    fill: str = "texture"
    """How a layer's colour is completed where nearer layers hide it: "texture" (patches of its own visible
    pixels, at the hidden part's depth) or "smooth" (a push-pull blend of them)."""
    prompt: str = "seamless continuation of the surrounding background, same lighting and texture"
    """Prompt for model-mode repainting of hidden parts."""
    negative_prompt: str = "person, object, text, watermark, frame, border"

    def __post_init__(self):
        if not 0.0 < self.band <= 0.2:
            raise ValueError(f"band must be in (0, 0.2], got {self.band!r}")
        if not 0.0 < self.reach <= 1.0:
            raise ValueError(f"reach must be in (0, 1], got {self.reach!r}")
        if not 0.0 <= self.far_bias <= 50.0:
            raise ValueError(f"far_bias must be in [0, 50], got {self.far_bias!r}")
        if not 0.0 < self.min_share <= 0.2:
            raise ValueError(f"min_share must be in (0, 0.2], got {self.min_share!r}")
        check_fill(self.fill)


@dataclass(frozen=True)
class Decomposition:
    """What ``decompose`` returns."""

    stack: LayerStack
    """The layers back to front; each ``StackLayer.depth`` is that layer's completed depth (1 = near)."""
    thresholds: tuple[float, ...]
    """The N - 1 nearness thresholds between the layers, increasing."""
    visible: dict
    """name -> float32 (H, W): how much of the picture each layer is (the weights sum to 1 per pixel)."""
    filled: dict
    """name -> bool (H, W): where the layer was filled (covered by nearer layers in the picture)."""
    notices: tuple[str, ...] = ()
    """One line each: what was decided for the user (a resized depth map, a fallback from model mode)."""
    info: dict = field(default_factory=dict)
    """Facts for the manifest: layer count and how it was chosen, fill method, backend, timings."""

    @property
    def depths(self) -> dict:
        """name -> the layer's completed depth, float32 (H, W)."""
        return {layer.name: layer.depth for layer in self.stack}


# ----------------------------------------------------------------------------------------------- inputs

def load_picture(source: ImageSource) -> Image.Image:
    """Open a picture to decompose and check it (see ``check_picture``)."""
    return check_picture(open_image(source, what="image"))


def check_picture(image: Image.Image) -> Image.Image:
    """The picture as an RGB image, or a ValueError naming why it cannot be decomposed.

    8-bit RGB, greyscale and palette images without transparency are accepted; transparency (RGBA, LA, a
    palette with a transparent colour), CMYK and 16-bit or float images are refused: each needs a choice
    (flatten onto what? which profile? which tone curve?) that belongs to the user.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        raise ValueError(f"image has transparency ({mode}); flatten it onto a background and save it as RGB first")
    if mode == "CMYK":
        raise ValueError("image is CMYK; convert it to RGB (sRGB) first")
    if mode.startswith("I") or mode == "F":
        raise ValueError(f"image is {mode} (16-bit or float); save it as an 8-bit RGB image first")
    if mode not in ("RGB", "L", "P", "1"):
        raise ValueError(f"image mode {mode} is not supported; save it as an 8-bit RGB image")
    if min(image.size) < MIN_SIDE:
        raise ValueError(f"image is {image.width}x{image.height}; both sides must be at least {MIN_SIDE} px")
    return image.convert("RGB")


def load_depth(source, *, max_pixels: Optional[int] = None) -> np.ndarray:
    """Read a depth map: an image (8/16-bit; white = near) or a ``.npy`` array (large = near), as float32 (a
    float64 array stays float64: its range does not fit float32).

    The values are not rescaled here (``prepare_depth`` does that), so a disparity map keeps its units. A
    ``.npy`` file's header is checked (shape, type, pixel limit) before its data is read.

    Args:
        source: the file.
        max_pixels: the largest width x height accepted; None = images.pixel_limit().
    """
    if isinstance(source, (str, Path)) and str(source).lower().endswith(".npy"):
        arr = read_npy(source, max_pixels=max_pixels, what="depth map")
        return arr if arr.dtype == np.float64 else arr.astype(np.float32)
    img = open_image(source, max_pixels=max_pixels, what="depth map")
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return np.asarray(img, dtype=np.float32)
    return np.asarray(img.convert("L"), dtype=np.float32)


def prepare_depth(depth, size: tuple[int, int], *, unknown_zero: bool = False) -> tuple[np.ndarray, list[str]]:
    """Check a depth map against the picture: numeric, 2-D, not constant; resized to ``size`` if needed.

    Args:
        depth: array-like (H, W), large = near, any range (NaN / inf = unknown, filled from the nearest
            known value).
        size: the picture's (width, height).
        unknown_zero: 0 means unknown too (disparity maps from stereo matchers and Middlebury's PNGs store 0
            where no disparity was found); False keeps 0 as the farthest value.

    Returns:
        (float32 (H, W) map stretched to [0, 1], notices).
    """
    d = np.array(depth, dtype=np.float64, copy=True) if not isinstance(depth, np.ndarray) else depth.astype(np.float64)
    notices: list[str] = []
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2 or min(d.shape) < 2:
        raise ValueError(f"depth map must be a 2-D array (H, W), got shape {d.shape}")
    known = np.isfinite(d)
    unknown_notice = None
    if unknown_zero:
        known &= d != 0
    if not known.any():
        raise ValueError("depth map has no known value (every pixel is 0 or not finite)" if unknown_zero
                         else "depth map has no finite value")
    if not known.all():
        from scipy import ndimage

        # Unknown pixels take the nearest known value: an unknown patch on a figure becomes the figure and one
        # beside it its neighbour, where reading it as "far" would hand the figure's colours to the background.
        share = 1.0 - float(np.count_nonzero(known)) / known.size
        what = "0 or not finite" if unknown_zero else "not finite"
        unknown_notice = (f"depth map: {share:.1%} of the pixels are unknown ({what}); "
                          "filled from the nearest known depth")
        idx = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
        d = d[tuple(idx)]
    lo, hi = float(d.min()), float(d.max())
    if not np.isfinite(hi - lo):  # e.g. -1e308..1e308: the span itself overflows, so work in units of the largest
        scale = max(abs(lo), abs(hi))
        d, lo, hi = d / scale, lo / scale, hi / scale
    if hi - lo <= 1e-9 * max(1.0, abs(hi)):
        raise ValueError(f"depth map is constant ({lo:g} everywhere): nothing to separate into layers")
    d = ((d - lo) / (hi - lo)).astype(np.float32)
    width, height = size
    if d.shape != (height, width):
        notices.append(f"depth map is {d.shape[1]}x{d.shape[0]}, the image {width}x{height}: depth map resized")
        d = np.asarray(Image.fromarray(d, "F").resize((width, height), Image.BILINEAR), dtype=np.float32)
        d = np.clip(d, 0.0, 1.0)
    if unknown_notice:
        notices.append(unknown_notice)
    return d, notices


def layer_names(count: int) -> tuple[str, ...]:
    """Names back to front: background / midground / foreground for three, ``midground_1..`` between for more."""
    if count == 2:
        return ("background", "foreground")
    if count == 3:
        return ("background", "midground", "foreground")
    return ("background", *(f"midground_{i}" for i in range(1, count - 1)), "foreground")


# ----------------------------------------------------------------------------------------------- thresholds

def choose_thresholds(depth: np.ndarray, layers: LayerCount = 3, *, min_share: float = 0.01) -> tuple[float, ...]:
    """Nearness thresholds in the deepest valleys of the depth histogram.

    Args:
        depth: float (H, W) in [0, 1].
        layers: 2..6, or "auto": as many layers as the histogram has clear valleys + 1 (at least 2, at most 6).
        min_share: each band holds at least this share of the pixels.

    Returns:
        Increasing thresholds, ``layers - 1`` of them.
    """
    from scipy import ndimage

    count = check_layer_count(layers)
    d = np.asarray(depth, dtype=np.float32).ravel()
    bins = 256
    hist = np.bincount(np.clip((d * bins).astype(np.intp), 0, bins - 1), minlength=bins).astype(np.float64)
    smooth = ndimage.gaussian_filter1d(hist, 4.0, mode="nearest")
    cdf = np.cumsum(hist) / hist.sum()
    edges = (np.arange(bins) + 1) / bins  # threshold after bin i
    # Valley depth ("prominence" of the dip): how far it sits below the lower of the highest peaks either side.
    left_peak = np.maximum.accumulate(smooth)
    right_peak = np.maximum.accumulate(smooth[::-1])[::-1]
    depth_of = np.minimum(left_peak, right_peak) - smooth
    minima = np.flatnonzero((smooth[1:-1] <= smooth[:-2]) & (smooth[1:-1] <= smooth[2:])) + 1
    # Ripples of a smooth ramp are not valleys: a valley must dip well below its peaks. A flat-bottomed
    # valley holds many minima: keep one, in the middle of its bottom.
    minima = minima[depth_of[minima] >= 0.15 * smooth.max()]
    groups: list[list[int]] = []
    for i in minima:
        if groups and smooth[groups[-1][-1]:i + 1].max() - max(smooth[groups[-1][-1]], smooth[i]) < 0.05 * smooth.max():
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    minima = np.array([g[len(g) // 2] for g in groups], dtype=np.intp)
    order = minima[np.argsort(-depth_of[minima], kind="stable")]
    if count is None:
        strong = [i for i in order if depth_of[i] >= 0.2 * smooth.max()]
        count = int(np.clip(len(strong) + 1, MIN_LAYERS, MAX_LAYERS))
    chosen: list[int] = []
    for i in order:
        if len(chosen) == count - 1:
            break
        if _bands_ok(sorted(chosen + [int(i)]), cdf, min_share):
            chosen.append(int(i))
    # Not enough valleys (a smooth ramp of depth): split the rest at equal shares of the pixels.
    shares = [k / count for k in range(1, count)] + list(np.linspace(0, 1, 4 * count + 1)[1:-1])
    for q in shares:
        if len(chosen) == count - 1:
            break
        i = int(np.searchsorted(cdf, q))
        if i < bins - 1 and _bands_ok(sorted(chosen + [i]), cdf, min_share):
            chosen.append(i)
    if len(chosen) < count - 1:
        raise ValueError(f"the depth map has too few distinct values to make {count} layers; use fewer layers")
    return tuple(round(float(edges[i]), 6) for i in sorted(chosen))


def _bands_ok(cuts: list[int], cdf: np.ndarray, min_share: float) -> bool:
    shares = np.diff(np.concatenate([[0.0], cdf[cuts], [1.0]]))
    return bool((shares >= min_share).all())


def check_layer_count(layers) -> Optional[int]:
    """A layer count: 2..6 as a number or text, or "auto" (returned as None).

    Raises:
        ValueError: anything else.
    """
    if isinstance(layers, str) and layers.strip().lower() == "auto":
        return None
    if isinstance(layers, str) and layers.strip().isdigit():
        layers = int(layers)
    if isinstance(layers, bool) or not isinstance(layers, (int, np.integer)) or not MIN_LAYERS <= layers <= MAX_LAYERS:
        raise ValueError(f"layers must be {MIN_LAYERS}..{MAX_LAYERS} or 'auto', got {layers!r}")
    return int(layers)


# ----------------------------------------------------------------------------------------------- decompose

def decompose(image: Image.Image, depth, *, layers: LayerCount = 3, thresholds: Optional[Sequence[float]] = None,
              session: Any = None, backend: Any = None, seed: int = 0,
              settings: DecomposeSettings = DecomposeSettings(), progress: Optional[Progress] = None,
              discarded: Sequence[str] = ()) -> Decomposition:
    """Split a picture into depth layers whose hidden parts are filled.

    Args:
        image: the picture (RGB, or greyscale/palette without transparency).
        depth: array (H, W), large = near (a depth map in [0, 1], or a disparity map in any units); another
            size is resized (with a notice).
        layers: 2..6, or "auto" (see ``choose_thresholds``).
        thresholds: explicit nearness thresholds in (0, 1) (increasing); overrides ``layers``.
        session: a rembg session for matting the boundaries (``matte.new_matte_session``); None = closed-form.
        backend: a backend with ``repaint`` (model mode) repaints the hidden parts; others (or None) fill offline.
        seed: seed of the texture fill or of the repainting (one per layer derived from it).
        settings: edge width, fill ("texture" or "smooth"), repaint prompt.
        progress: called with (fraction, description).
        discarded: names of layers whose hidden colour the caller replaces wholesale (a plate's background that
            is inpainted from noise): the texture fill's pixels would never be seen there, so such a layer gets the
            smooth fill, a fraction of the time (the fill recorded in ``info["smooth"]``).

    Returns:
        The Decomposition.
    """
    report = progress or (lambda fraction, text: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    picture = check_picture(image)
    d, notices = prepare_depth(depth, picture.size)
    if thresholds is not None:
        cuts = tuple(float(t) for t in thresholds)
        steps = zip((0.0,) + cuts, cuts + (1.0,))
        if not cuts or len(cuts) > MAX_LAYERS - 1 or not all(0.0 <= a < b <= 1.0 for a, b in steps) \
                or not 0.0 < cuts[0] or not cuts[-1] < 1.0:
            raise ValueError(f"thresholds must be 1..{MAX_LAYERS - 1} increasing values in (0, 1), got {thresholds!r}")
    else:
        cuts = choose_thresholds(d, layers, min_share=settings.min_share)
    names = layer_names(len(cuts) + 1)
    unknown = sorted(set(discarded) - set(names))
    if unknown:
        raise ValueError(f"discarded names no layer of {', '.join(names)}: {', '.join(unknown)}")
    rgb = np.asarray(picture, dtype=np.float32) / 255.0
    band = np.searchsorted(np.asarray(cuts, np.float32), d, side="right")  # 0 = farthest band
    timings["thresholds"] = time.perf_counter() - t0

    t = time.perf_counter()
    report(0.05, "matting layer boundaries")
    alphas = _layer_alphas(picture, band, len(names), session, settings)
    timings["matte"] = time.perf_counter() - t

    t = time.perf_counter()
    report(0.4, "separating colours")
    seeds = [_layer_seed(seed, k) for k in range(len(names))]
    smooth = {k for k, name in enumerate(names) if name in discarded}
    colours, visible, filled, depths = _peel(rgb, d, band, alphas, settings, seeds, smooth)
    timings["fill"] = time.perf_counter() - t
    info: dict = {"layers": len(names), "layer_count": "auto" if thresholds is None and check_layer_count(layers) is None
                  else "given", "thresholds": list(cuts), "fill": settings.fill}
    if settings.fill == "texture":
        info["seeds"] = {names[k]: seeds[k] for k in range(len(names)) if filled[k].any() and k not in smooth}
        if smooth:
            info["smooth"] = [names[k] for k in sorted(smooth)]

    if backend is not None and callable(getattr(backend, "repaint", None)):
        t = time.perf_counter()
        report(0.6, "repainting hidden parts")
        try:
            repainted, _ = _repaint(backend, colours, depths, filled, names, seeds, settings, report)
        except ModelUnavailableError as exc:
            notices.append(f"model-mode inpainting unavailable ({exc}); hidden parts filled offline")
        else:
            for k, image_k in repainted.items():
                colours[k] = np.where(filled[k][..., None], image_k, colours[k])
            info["fill"] = "repaint"
            info["seeds"] = {names[k]: seeds[k] for k in repainted}
        timings["repaint"] = time.perf_counter() - t
    elif backend is not None:
        notices.append(f"backend {getattr(backend, 'name', type(backend).__name__)!r} cannot inpaint; "
                       "hidden parts filled offline")

    stack_layers = []
    for k, name in enumerate(names):
        colour = Image.fromarray(np.clip(colours[k] * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
        share = visible[k] > 0.5
        nearness = float(np.median(d[share])) if share.any() else float(np.median(depths[k]))
        stack_layers.append(StackLayer(name=name, rgba=with_alpha(colour, alphas[k]), depth=depths[k],
                                       nearness=nearness))
    timings["total"] = time.perf_counter() - t0
    info["timings"] = {k: round(v, 4) for k, v in timings.items()}
    report(1.0, "layers ready")
    return Decomposition(stack=LayerStack(stack_layers), thresholds=cuts,
                         visible={n: visible[k] for k, n in enumerate(names)},
                         filled={n: filled[k] for k, n in enumerate(names)}, notices=tuple(notices), info=info)


def warm_up() -> float:
    """Cut a small picture once, so that the compiled kernels every cut runs (pymatting's closed-form matting, the
    texture fill's PatchMatch) are compiled, or loaded from numba's disk cache, before a request needs them. The
    first time after installing this takes 40-90 s (bench_diffusers_gpu.py: 40.8 s on 16 cores); later ~1 s.

    Returns:
        The seconds it took.
    """
    t = time.perf_counter()
    y, x = np.mgrid[0:48, 0:48]
    picture = Image.fromarray(((x * 5 + y * 3) % 256).astype(np.uint8)).convert("RGB")
    depth = np.where((x - 24) ** 2 + (y - 24) ** 2 < 100, 0.9, np.where(y > 30, 0.5, 0.1)).astype(np.float32)
    decompose(picture, depth, layers=3, settings=DecomposeSettings(fill="texture"))
    return time.perf_counter() - t


def _layer_seed(seed: int, index: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * (index + 1)) % 2**31


def _layer_alphas(picture: Image.Image, band: np.ndarray, count: int, session, settings: DecomposeSettings):
    """Alpha per layer, quantised to 8 bits (the colours are solved for the alphas as they will be stored)."""
    from scipy import ndimage

    h, w = band.shape
    # A photo has no plain backdrop to key against: closed-form matting of the band's trimap (matte.py's
    # default keying assumes a render on a known backdrop).
    matte_settings = MatteSettings(band=settings.band, method="closed-form")
    # Nested mattes of "nearer than threshold k", made monotone: a pixel nearer than t_k+1 is nearer than t_k.
    nested = [np.ones((h, w), np.float32)]
    for k in range(1, count):
        nested.append(matte_layer(picture, (band >= k).astype(np.float32), session=session, settings=matte_settings))
    nested.append(np.zeros((h, w), np.float32))
    for k in range(count - 1, 0, -1):
        nested[k] = np.maximum(nested[k], nested[k + 1])
    reach = settings.reach * max(h, w)
    alphas = [np.ones((h, w), np.float32)]
    for k in range(1, count):
        outer, inner = nested[k], nested[k + 1]
        room = 1.0 - inner
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.where(room > 1.0 / 255.0, (outer - inner) / room, 0.0)
        if k < count - 1:
            # Behind the nearer layers: carry on where the nearest pixel beyond the occluder is this layer's.
            covered = room <= 1.0 / 255.0
            dist, idx = ndimage.distance_transform_edt(band > k, return_indices=True)
            mine = (band[tuple(idx)] == k) & (dist <= reach)
            alpha = np.where(covered, mine.astype(np.float32), alpha)
        alphas.append(np.round(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0)
    return alphas


def _peel(rgb: np.ndarray, d: np.ndarray, band: np.ndarray, alphas, settings: DecomposeSettings, seeds,
          smooth: set = frozenset()):
    """Front to back: each layer's colour and what is behind it, exact where seen, filled where hidden (the
    layers whose index is in `smooth` with the smooth fill whatever the settings say).

    Returns (colours, visible, filled, depths), lists back to front.
    """
    count = len(alphas)
    h, w = band.shape
    behind = rgb.copy()                    # what the layers from here back show, where it is seen
    seen = np.ones((h, w), np.float32)     # how much of that shows through the nearer layers
    colours, visible, filled, depths = [None] * count, [None] * count, [None] * count, [None] * count
    textures = []
    eps = 1.0 / 255.0
    for k in range(count - 1, -1, -1):
        a = alphas[k]
        shown = seen > eps
        solid = (a >= 1.0 - eps) & shown
        # Fill weights: this layer's own solid pixels, more the farther they are within the layer.
        own = solid & (band == k) if (solid & (band == k)).any() else solid
        if not own.any():
            own = (a > 0) & shown
        weight = own * seen * _farness(d, own, settings.far_bias)
        if not weight.any():  # a layer nothing of which shows: fill it from whatever is seen
            weight = seen * shown
        # The smooth fill also estimates the layer's colour on its soft edge, where the split below needs one.
        colour = push_pull(behind, weight)
        hidden = (a > 0) & ~shown
        # Completed depth: the band's own depth where seen, filled from its farther pixels elsewhere.
        depth_weight = (band == k) & shown
        if not depth_weight.any():
            depth_weight = own
        fill_depth = push_pull(d, depth_weight * _farness(d, depth_weight, settings.far_bias))
        depths[k] = np.where(depth_weight, d, fill_depth).astype(np.float32)
        if settings.fill == "texture" and hidden.any() and k not in smooth:
            # Only hidden pixels change, which the split below never reads: the fills can run afterwards.
            textures.append((k, behind, own, seen, a, hidden, depths[k]))
        if k > 0:
            clear = (a <= eps) & shown
            back = push_pull(behind, clear * seen) if clear.any() else colour
            soft = shown & ~solid & ~clear
            # Only the soft edge needs solving (a thin band): work on its pixels alone.
            a3, seen_px, back_px, colour_px = a[soft][:, None], behind[soft], back[soft], colour[soft]
            # Solve for the side with the larger weight, the other side estimated from its own solid pixels;
            # then re-solve the estimated side from the (clipped) solution: exact unless both saturate.
            layer_side = a3 >= 0.5
            inv_a, inv_rest = 1.0 / np.maximum(a3, eps), 1.0 / np.maximum(1.0 - a3, eps)
            f = np.clip((seen_px - (1.0 - a3) * back_px) * inv_a, 0.0, 1.0)
            b = np.clip((seen_px - a3 * colour_px) * inv_rest, 0.0, 1.0)
            b = np.where(layer_side, np.where(a3 > 1.0 - eps, back_px,
                                              np.clip((seen_px - a3 * f) * inv_rest, 0.0, 1.0)), b)
            f = np.where(layer_side, f, np.clip((seen_px - (1.0 - a3) * b) * inv_a, 0.0, 1.0))
            layer_colour = np.where(solid[..., None], behind, colour)
            layer_colour[soft] = f
            new_behind = behind.copy()
            new_behind[soft] = b
        else:
            layer_colour = np.where(shown[..., None], behind, colour)
            new_behind = behind
        colours[k] = layer_colour.astype(np.float32)
        visible[k] = (a * seen).astype(np.float32)
        filled[k] = hidden
        behind = new_behind
        seen = seen * (1.0 - a)
    for k, textured in _run_textures(textures, seeds):
        colours[k] = np.where(filled[k][..., None], textured, colours[k])
    return colours, visible, filled, depths


def _run_textures(jobs, seeds):
    """(layer index, texture-filled colour) for each job, the layers side by side on the machine's cores (the
    fill's kernels release the GIL; each layer has its own seed, so the result does not depend on the order)."""
    if len(jobs) <= 1:
        return [(job[0], _texture(*job[1:], seeds[job[0]])) for job in jobs]
    import os
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        done = [pool.submit(_texture, *job[1:], seeds[job[0]]) for job in jobs]
        return [(job[0], f.result()) for job, f in zip(jobs, done)]


def _texture(behind, own, seen, alpha, hidden, depth, seed: int) -> np.ndarray:
    """The layer's colour with its hidden part filled by patches of its wholly seen pixels, at their depth.

    Only pixels of the layer's own that nothing nearer covers at all are copied (a soft edge mixes in the
    occluder's colour); its soft edge still counts when a patch is compared, so the fill meets it."""
    eps = 1.0 / 255.0
    source = own & (seen >= 1.0 - eps)
    if not source.any():
        source = own
    known = (alpha > 0) & (seen > eps) & ~source & ~hidden
    return texture_fill(behind, source, hidden, depth=depth, known=known, seed=seed)


def _farness(d: np.ndarray, where: np.ndarray, bias: float) -> np.ndarray:
    """Weight in (0, 1]: 1 at the farthest pixel of ``where``, falling with nearness at rate ``bias``."""
    if bias <= 0 or not where.any():
        return np.ones_like(d)
    lo = float(d[where].min())
    hi = float(d[where].max())
    span = max(hi - lo, 1e-3)
    return np.exp(-bias * np.clip(d - lo, 0.0, None) / span).astype(np.float32)


def _repaint(backend, colours, depths, filled, names, seeds, settings: DecomposeSettings, report):
    """One batched repaint call for every layer with hidden parts -> ({index: float RGB (H, W, 3)}, info).

    ``colours`` and ``seeds`` are indexable by layer index (the start pixels, each layer's seed)."""
    from scipy import ndimage

    order = [k for k in range(len(names) - 1) if filled[k].any()]
    if not order:
        return {}, {}
    h, w = filled[0].shape
    requests = []
    for k in order:
        # Grown by a few pixels so the repaint blends into the visible edge it continues.
        mask = ndimage.binary_dilation(filled[k], iterations=2).astype(np.float32)
        start = Image.fromarray(np.clip(colours[k] * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
        requests.append(RepaintRequest(name=names[k], prompt=settings.prompt, negative_prompt=settings.negative_prompt,
                                       image=start, control=check_unit_map(depths[k], f"{names[k]} depth"),
                                       seed=int(seeds[k]), mask=mask))

    # The model's own steps and guidance (a few-step model's 1-4 steps, not RenderSettings' 25 for SD).
    own = {k: v for k, v in (getattr(backend, "defaults", None) or {}).items() if k in ("steps", "guidance")}
    result = backend.repaint(requests, RenderSettings(width=w, height=h, **own),
                             span_progress(report, 0.6, 0.9, "repainting {layer}"))
    if len(result.images) != len(requests):
        raise ValueError(f"backend returned {len(result.images)} images for {len(requests)} repaint requests")
    out = {}
    for k, img in zip(order, result.images):
        out[k] = np.asarray(img.convert("RGB").resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
    return out, dict(result.info)


def hidden_mask(stack: LayerStack, name: str) -> np.ndarray:
    """Where a layer holds content that the nearer layers cover completely: bool (H, W)."""
    index = stack.names.index(name)
    seen = np.ones(stack.layers[0].alpha.shape, np.float32)
    for layer in stack.layers[index + 1:]:
        seen *= 1.0 - layer.alpha
    return (stack.layers[index].alpha > 0) & (seen <= 1.0 / 255.0)


def refill_layer(stack: LayerStack, name: str, *, fill: str = "texture", seed: int = 0,
                 progress: Optional[Progress] = None) -> StackLayer:
    """Fill the hidden part of one layer again offline; what shows of it stays as it is.

    The layer's own wholly visible pixels are the sources, as when the picture was decomposed; its stored depth
    is the hidden part's depth.

    Args:
        stack: a decomposed stack.
        name: the layer to fill.
        fill: "texture" (patches of the layer's own pixels, for this seed) or "smooth".
        seed: the texture fill's seed.
        progress: called with (fraction, description).

    Returns:
        The new StackLayer (same alpha, depth and nearness).

    Raises:
        ValueError: unknown layer or fill, a layer that hides nothing, or one nothing of which shows.
    """
    check_fill(fill)
    if name not in stack.names:
        raise ValueError(f"no layer named {name!r}; this stack has {', '.join(stack.names)}")
    hidden = hidden_mask(stack, name)
    if not hidden.any():
        raise ValueError(f"nothing hides any part of the {name} layer: there is nothing to fill")
    report = progress or (lambda fraction, text: None)
    report(0.1, f"filling {name}")
    layer = stack[name]
    index = stack.names.index(name)
    eps = 1.0 / 255.0
    seen = np.ones(hidden.shape, np.float32)
    for nearer in stack.layers[index + 1:]:
        seen *= 1.0 - nearer.alpha
    alpha = layer.alpha
    own = (alpha >= 1.0 - eps) & (seen > eps)
    if not own.any():
        own = (alpha > 0) & (seen > eps)
    if not own.any():
        raise ValueError(f"nothing of the {name} layer shows: there is nothing to fill it from")
    colours = np.asarray(layer.rgba.convert("RGB"), dtype=np.float32) / 255.0
    if fill == "texture":
        filled = _texture(colours, own, seen, alpha, hidden, layer.depth, int(seed))
    else:
        filled = push_pull(colours, own * seen)
    new = np.where(hidden[..., None], filled, colours)
    rgba = Image.fromarray(np.clip(new * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    rgba.putalpha(layer.rgba.getchannel("A"))
    report(1.0, f"{name} filled")
    return StackLayer(name=name, rgba=rgba, depth=layer.depth, nearness=layer.nearness)


def repaint_layer(stack: LayerStack, name: str, backend: Any, *, seed: int,
                  settings: DecomposeSettings = DecomposeSettings(), progress: Optional[Progress] = None):
    """Repaint the hidden part of one layer with a new seed (model mode); what shows of it stays as it is.

    Args:
        stack: a decomposed stack.
        name: the layer to repaint.
        backend: a backend with ``repaint`` (``Repainter``).
        seed: the new seed.
        settings: the repaint prompt.
        progress: called with (fraction, description).

    Returns:
        (the new StackLayer, the backend's info dict).

    Raises:
        ValueError: unknown layer, a layer that hides nothing, or a backend that cannot repaint.
        ModelUnavailableError: the inpainting weights cannot be loaded.
    """
    if name not in stack.names:
        raise ValueError(f"no layer named {name!r}; this stack has {', '.join(stack.names)}")
    if not callable(getattr(backend, "repaint", None)):
        raise ValueError(f"backend {getattr(backend, 'name', type(backend).__name__)!r} cannot inpaint; repainting "
                         "a layer of a decomposed picture needs model mode (--backend diffusers)")
    hidden = hidden_mask(stack, name)
    if not hidden.any():
        raise ValueError(f"nothing hides any part of the {name} layer: there is nothing to repaint")
    report = progress or (lambda fraction, text: None)
    layer = stack[name]
    index = stack.names.index(name)
    colours = np.asarray(layer.rgba.convert("RGB"), dtype=np.float32) / 255.0
    filled = [np.zeros_like(hidden)] * len(stack)
    filled[index] = hidden
    depths = [lay.depth for lay in stack]
    seeds = {index: int(seed)}
    repainted, info = _repaint(backend, {index: colours}, depths, filled, stack.names, seeds, settings, report)
    new = np.where(hidden[..., None], repainted[index], colours)
    rgb = Image.fromarray(np.clip(new * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    rgba = rgb.copy()
    rgba.putalpha(layer.rgba.getchannel("A"))
    report(1.0, f"{name} repainted")
    return StackLayer(name=name, rgba=rgba, depth=layer.depth, nearness=layer.nearness), info
