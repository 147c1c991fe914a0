"""Matting: a layer's RGB render + its prior mask -> alpha, and edge colours free of the backdrop.

The midground and foreground are rendered as content on a plain backdrop, where the layer's prior says
the content goes. Matting separates the content from the backdrop.

Two ways, one result (float32 alpha in [0, 1]):

- **Offline** (default ``method="key+cf"``): known-backdrop keying, its edge refined by closed-form matting.
  The prior eroded by the band radius ``r`` is surely the layer (alpha exactly 1; parts thinner than the band
  keep their core as sure, so arms, chains and specks survive), outside the prior grown by ``r`` is surely
  backdrop (exactly 0). The backdrop's colour, or a smooth field where it varies, is estimated from that
  sure-backdrop region. In the band between, a pixel within the backdrop's noise of it is clear; one that
  differs and lies more than ``edge_px`` from clear backdrop is solid; the rest are the true edge, whose keyed
  alpha is the colour's distance from the backdrop relative to the nearest solid pixel's. That guess of the
  subject's colour is off where the colour changes across the rim (rim light, shading), so the edge pixels
  keying left fractional, and their neighbours, are solved again by closed-form matting built on their own
  windows, every other pixel held at its keyed alpha (SAD about half of keying's on most layers, at about
  twice its time; the cost follows the edge's length). ``method="key"`` is keying alone; ``method="closed-form"`` solves
  closed-form matting (pymatting) on the prior's whole trimap, the matte before keying, kept for comparison.
- **With a rembg session** (``new_matte_session``): the same offline matte, united with the segmenter's mask
  where keying cannot tell -- patches of the backdrop's colour cut off from the backdrop by the subject, of
  ``decide_px`` pixels or more. Keying keeps the thin parts and the scattered debris a salient-object
  segmenter drops, and its edges are finer than a mask made at 320 px. The segmenter runs only on a layer
  that has such a patch: it costs seconds per layer on a CPU (IS-Net at 1024 px), and most layers have none.
  Its mask is trusted only near the prior (1 inside the prior grown by ``r``, falling to 0 over the next ``r``
  pixels), so a stray object far from where the layer was planned is dropped. With ``method="closed-form"``
  the segmenter's mask alone is used (the rule before keying).

Either way the colours of the edge pixels are re-estimated so that a semi-transparent edge carries the
subject's colour, not the backdrop's (keyed mattes unmix the known backdrop exactly, ``F = B + (I - B) / a``;
closed-form ones use pymatting's multi-level foreground estimation): ``matte_rgba`` returns that
decontaminated RGBA, which is what a layer of the stack stores (no halo once composited elsewhere).

rembg and pymatting are imported inside the functions: their first import is slow.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from .images import check_unit_map
from .models import announce

__all__ = ["CUSTOM_SESSIONS", "METHODS", "MatteSettings", "download_line", "matte_layer", "matte_rgba",
           "new_matte_session"]


METHODS = ("key+cf", "key", "closed-form")
"""Offline matting methods: known-backdrop keying refined by closed-form matting at its edge (default),
keying alone, and closed-form matting of the prior's trimap (the method before keying, kept for comparison)."""


@dataclass(frozen=True)
class MatteSettings:
    """How a layer is matted."""

    band: float = 0.015
    """Half-width of the uncertain edge band around the prior, as a fraction of the image's short side."""
    solve_pixels: int = 12_000
    """Most unknown pixels solved at full scale; a larger band is solved at a reduced scale (speed)."""
    decontaminate: bool = True
    """Re-estimate edge colours so semi-transparent pixels do not carry the backdrop colour."""
    method: str = "key+cf"
    """Offline method, one of METHODS (also the part the segmenter's mask is combined with)."""
    edge_px: int = 2
    """Keying: content pixels this close (px) to clear backdrop are edge pixels, with alpha from colour; farther
    ones are solid. 2 suits anti-aliased edges (wider zones cost the draft seeds SAD and lost coverage); raise
    it for renders whose edges are blurred over more pixels."""
    decide_px: int = 9
    """With a segmenter: the fewest pixels a backdrop-coloured patch enclosed by content needs for the segmenter to
    decide it. Smaller ones are gaps between specks, at the scale of anti-aliasing, and stay clear as keyed (real
    segmenters, made at 320 or 1024 px, gave such gaps 0 to 0.99 where the truth is 0)."""

    def __post_init__(self):
        if not (0.0 < self.band <= 0.2):
            raise ValueError(f"band must be in (0, 0.2], got {self.band!r}")
        if not (1_000 <= self.solve_pixels <= 4_000_000):
            raise ValueError(f"solve_pixels must be in [1000, 4000000], got {self.solve_pixels!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if isinstance(self.edge_px, bool) or not isinstance(self.edge_px, int) or not 1 <= self.edge_px <= 16:
            raise ValueError(f"edge_px must be a whole number of pixels from 1 to 16, got {self.edge_px!r}")
        if isinstance(self.decide_px, bool) or not isinstance(self.decide_px, int) \
                or not 1 <= self.decide_px <= 100_000:
            raise ValueError(f"decide_px must be a whole number of pixels from 1 to 100000, got {self.decide_px!r}")


DEFAULT_SETTINGS = MatteSettings()


# --------------------------------------------------------------------------------------------- sessions

def new_matte_session(model: Union[str, os.PathLike], *, allow_download: bool = False) -> Any:
    """Open a rembg session for matting.

    Args:
        model: a rembg model name ("u2net", "isnet-general-use", "birefnet-general", ...) whose weights
            are already in rembg's model folder, or the path of an ``.onnx`` file placed under ``U2NET_HOME``
            (rembg refuses any other place) that takes 320 px images (U^2-Net's shape, run by rembg's
            ``u2net_custom`` session) or 1024 px ones (IS-Net's, run by ``dis_custom``): its input decides.
        allow_download: let rembg fetch a named model that is not there yet. Off by default, so nothing
            is downloaded behind the user's back. Before such a download one line goes to the load listeners
            (``models.add_load_listener``), as for the diffusers weights; rembg shows its own progress bar.

    Returns:
        A rembg session (CPU) to pass as ``session=`` to ``matte_layer`` / ``matte_rgba``.
    """
    text = os.fspath(model) if isinstance(model, os.PathLike) else model
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"matte model must be a rembg model name or an .onnx path, got {model!r}")
    from rembg import new_session  # slow first import (numba), so only when a session is wanted
    from rembg.sessions import sessions as rembg_sessions
    from rembg.sessions.base import BaseSession

    providers = ["CPUExecutionProvider"]
    if text.lower().endswith(".onnx") or os.sep in text or isinstance(model, os.PathLike):
        path = Path(text).expanduser().resolve()
        home = os.environ.get("U2NET_HOME")
        roots = [Path(BaseSession.rembg_home()).expanduser().resolve(),
                 Path(BaseSession.legacy_home()).expanduser().resolve()]
        if not any(path == root or root in path.parents for root in roots):
            raise ValueError(
                f"matte model {str(path)!r} is outside U2NET_HOME ({home or roots[0]}); "
                "rembg only loads custom models from there: move the file under it or set U2NET_HOME")
        if not path.is_file():
            raise ValueError(f"matte model file not found: {str(path)!r}")
        return new_session(_custom_session_name(path), model_path=str(path), providers=providers)

    session_class = rembg_sessions.get(text)
    custom = {"u2net_custom", "dis_custom", "ben_custom", "sam", "atlascloud", "withoutbg"}
    if session_class is None or text in custom:
        choices = ", ".join(sorted(name for name in rembg_sessions if name not in custom))
        raise ValueError(f"unknown matte model {text!r}; choose an .onnx path or one of: {choices}")
    line = download_line(text)
    if line is not None:
        if not allow_download:
            raise ValueError(
                f"matte model {text!r} is not in {session_class.model_dir()}; put {text}.onnx there "
                "(downloads are off), or pass the path of an .onnx file under U2NET_HOME")
        announce(line)
    return new_session(text, providers=providers)


CUSTOM_SESSIONS = {320: "u2net_custom", 1024: "dis_custom"}
"""rembg's session for an .onnx matte model, by the side of the square image it takes: U^2-Net's 320 px (ImageNet
normalisation), IS-Net's 1024 px (DIS normalisation)."""


def _custom_session_name(path: Path) -> str:
    """The rembg session that feeds the model at `path` images of the size its input asks for."""
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state as errors

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # only its input is read
    try:
        inputs = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).get_inputs()
    except (errors.Fail, errors.InvalidProtobuf, errors.InvalidGraph, errors.InvalidArgument) as exc:
        raise ValueError(f"matte model {str(path)!r} is not an ONNX model onnxruntime can load "
                         f"({str(exc).splitlines()[0][:160]})") from exc
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"matte model {str(path)!r} must take one RGB image (N x 3 x H x W), takes "
                         + ", ".join(f"{i.name} {i.shape}" for i in inputs))
    height, width = shape[2:]
    if not isinstance(height, int) or not isinstance(width, int):
        return CUSTOM_SESSIONS[320]  # a model of any size: rembg's default session for one
    if height != width or height not in CUSTOM_SESSIONS:
        raise ValueError(f"matte model {str(path)!r} takes {width}x{height} images; rembg runs custom models "
                         "of 320x320 (U^2-Net) or 1024x1024 (IS-Net)")
    return CUSTOM_SESSIONS[height]


def download_line(model: str) -> Optional[str]:
    """The line said before rembg fetches the named matte `model` (its weights are not in rembg's folder yet);
    None when nothing is to be fetched (the weights are there, or `model` is not a rembg name)."""
    from rembg.sessions import sessions as rembg_sessions

    session_class = rembg_sessions.get(model)
    if session_class is None or session_class.resolve_existing(f"{model}.onnx") is not None:
        return None
    return f"downloading matte model {model} into {session_class.model_dir()} (once)"


# --------------------------------------------------------------------------------------------- matting

def matte_layer(rgb: Image.Image, prior: np.ndarray, *, session: Any = None,
                settings: MatteSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """Alpha of one layer's render.

    Args:
        rgb: the layer's render (content on a plain backdrop), any PIL mode convertible to RGB.
        prior: float (H, W) in [0, 1], where the layer's content was planned (1 = surely this layer).
        session: a rembg session from ``new_matte_session``, united with keying; None mattes offline.
        settings: band width and speed limits.

    Returns:
        float32 (H, W) alpha in [0, 1].
    """
    image, prior = _check_inputs(rgb, prior)
    return _matte(image, prior, session, settings)[0]


def matte_rgba(rgb: Image.Image, prior: np.ndarray, *, session: Any = None,
               settings: MatteSettings = DEFAULT_SETTINGS) -> Image.Image:
    """The layer as straight-alpha RGBA with its edge colours decontaminated from the backdrop.

    Args:
        rgb: the layer's render.
        prior: float (H, W) in [0, 1], where the layer's content was planned.
        session: a rembg session, or None for the offline fallback.
        settings: band width, speed limits, and whether to re-estimate edge colours.

    Returns:
        PIL RGBA image of the same size as ``rgb``.
    """
    image, prior = _check_inputs(rgb, prior)
    alpha, box, unmixed = _matte(image, prior, session, settings)
    colours = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if settings.decontaminate and box is not None:
        y0, y1, x0, x1 = box
        colours[y0:y1, x0:x1] = (unmixed if unmixed is not None
                                 else _foreground_colours(colours[y0:y1, x0:x1], alpha[y0:y1, x0:x1]))
    out = np.empty(alpha.shape + (4,), np.uint8)
    out[..., :3] = colours
    out[..., 3] = np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGBA")


def _check_inputs(rgb, prior) -> tuple[Image.Image, np.ndarray]:
    if not isinstance(rgb, Image.Image):
        raise ValueError(f"rgb must be a PIL image, got {type(rgb).__name__}")
    if rgb.width < 2 or rgb.height < 2:
        raise ValueError(f"image too small to matte: {rgb.size}")
    return rgb.convert("RGB"), check_unit_map(prior, "prior", shape=(rgb.height, rgb.width))


def _band_radius(shape: tuple[int, int], settings: MatteSettings) -> int:
    return max(2, int(round(settings.band * min(shape))))


def _matte(image: Image.Image, prior: np.ndarray, session, settings: MatteSettings):
    """-> (alpha float32 (H, W), crop box (y0, y1, x0, x1) holding every non-zero alpha or None,
    uint8 colours of that crop with the backdrop unmixed from the edges, or None where they are still to do)."""
    from scipy import ndimage

    h, w = prior.shape
    inside = prior >= 0.5
    if not inside.any():
        return np.zeros((h, w), np.float32), None, None
    r = _band_radius((h, w), settings)
    box = _bbox(inside, 2 * r + 2, (h, w))
    y0, y1, x0, x1 = box
    crop_inside = inside[y0:y1, x0:x1]
    # Distance (in px) from the prior's edge, outside and inside, on the crop only. The chessboard metric is
    # an order of magnitude cheaper than the Euclidean one and the band width is a heuristic anyway.
    dist_out = ndimage.distance_transform_cdt(~crop_inside, metric="chessboard")
    dist_in = ndimage.distance_transform_cdt(crop_inside, metric="chessboard")
    sure_fg, sure_bg = _sure(dist_in, r), _sure(dist_out, r)
    alpha = np.zeros((h, w), np.float32)
    crop_u8 = np.asarray(image, dtype=np.uint8)[y0:y1, x0:x1]
    if session is not None and settings.method == "closed-form":
        # The segmenter alone: the rule before keying, for comparison.
        alpha[y0:y1, x0:x1] = _segmenter_mask(image, session, box, dist_out, r)
        return alpha, box, None
    if not sure_bg.any() or not sure_fg.any():
        # Nothing surely outside (the layer fills the frame) or nothing surely inside (a sliver thinner than
        # the band): neither a backdrop to key against nor anything for a solver to propagate, so keep the
        # prior (the segmenter's mask where there is one).
        alpha[y0:y1, x0:x1] = (prior[y0:y1, x0:x1] if session is None
                               else _segmenter_mask(image, session, box, dist_out, r))
        return alpha, box, None
    crop_rgb = crop_u8.astype(np.float32) / np.float32(255.0)
    if settings.method == "closed-form":
        trimap = np.full(crop_inside.shape, 0.5, np.float64)
        trimap[sure_fg] = 1.0
        trimap[sure_bg] = 0.0
        alpha[y0:y1, x0:x1] = _solve_trimap(crop_rgb.astype(np.float64), trimap, settings)
        # The solver leaves a faint haze (alpha ~ 0.001 or ~ 0.999) across the band; at 8 bits it is within a
        # level of clear or solid, so make it exactly that: edges stay crisp and only real edges get recoloured.
        alpha[alpha < 1.5 / 255.0] = 0.0
        alpha[alpha > 253.5 / 255.0] = 1.0
        return alpha, box, None
    crop_alpha, back, clear = _key(crop_rgb, sure_fg, sure_bg, settings)
    if session is not None:
        # Keying keeps the thin parts and scattered debris a segmenter drops, and its edges are finer than a
        # mask made at 320 px. What keying cannot tell is a patch of the backdrop's colour cut off from the
        # backdrop by content (a grey sash on a figure, or a real hole): there the segmenter decides, and only
        # there is it run (seconds per layer on a CPU).
        patches = _enclosed_patches(clear, sure_bg, settings.decide_px)
        if patches.any():
            seg = _segmenter_mask(image, session, box, dist_out, r)
            np.maximum(crop_alpha, np.where(patches, seg, 0.0), out=crop_alpha)
    crop_alpha[crop_alpha < 1.5 / 255.0] = 0.0
    crop_alpha[crop_alpha > 253.5 / 255.0] = 1.0
    alpha[y0:y1, x0:x1] = crop_alpha
    return alpha, box, _unmix(crop_u8, crop_rgb, crop_alpha, back)


def _segmenter_mask(image: Image.Image, session, box: tuple[int, int, int, int], dist_out: np.ndarray,
                    r: int) -> np.ndarray:
    """The rembg session's mask of the whole image, on the crop ``box``, trusted only near the prior: 1 inside it
    grown by ``r``, falling to 0 over the next ``r`` pixels (``dist_out``: each crop pixel's distance to it)."""
    from rembg import remove  # slow first import, only when a session is used

    y0, y1, x0, x1 = box
    mask = remove(image, session=session, only_mask=True)
    seg = np.asarray(mask.convert("L"), dtype=np.float32)[y0:y1, x0:x1] / 255.0
    return seg * np.clip(2.0 - dist_out / r, 0.0, 1.0)


def _enclosed_patches(clear: np.ndarray, sure_bg: np.ndarray, min_px: int) -> np.ndarray:
    """Clear pixels the backdrop does not reach, in patches of ``min_px`` pixels or more.

    Clear pixels connect through corners too: a diagonal gap between two content pixels is still backdrop.
    """
    from scipy import ndimage

    labels, count = ndimage.label(clear, structure=np.ones((3, 3), bool))
    decided = np.bincount(labels.ravel(), minlength=count + 1) >= min_px
    decided[0] = False
    decided[labels[sure_bg]] = False
    return decided[labels]


def _key(rgb: np.ndarray, sure_fg: np.ndarray, sure_bg: np.ndarray, settings: MatteSettings):
    """Known-backdrop keying of one crop -> (alpha float32, backdrop field (h, w, 3), clear-backdrop mask).

    The backdrop's colour (a smooth field where it is not flat) comes from the sure-backdrop region. In the band
    between the sure regions a pixel is clear backdrop when its colour is within the backdrop's noise of it,
    solid when it differs and lies more than ``edge_px`` from any clear pixel, and an edge pixel otherwise: its
    alpha is its colour's distance from the backdrop along the line to the nearest solid pixel's colour
    (``I = a F + (1 - a) B``). The sure interior stays exactly 1 and the sure backdrop exactly 0.
    """
    from scipy import ndimage

    back, noise = _backdrop_field(rgb, sure_bg)
    diff = rgb - back
    dist = np.sqrt(_dot3(diff, diff))
    clear = (dist <= max(2.5 / 255.0, 4.0 * noise)) & ~sure_fg
    clear |= sure_bg
    near_clear = _grow(clear, settings.edge_px)
    edge = near_clear & ~clear & ~sure_fg
    solid = ~clear & ~edge
    alpha = solid.astype(np.float32)
    ys, xs = np.nonzero(edge)
    if ys.size:
        d = diff[ys, xs]
        reach = 2 * settings.edge_px + 2
        if solid.any():
            far, (iy, ix) = ndimage.distance_transform_cdt(~solid, metric="chessboard", return_indices=True)
            fb = rgb[iy[ys, xs], ix[ys, xs]] - back[ys, xs]
            near = far[ys, xs] <= reach
        else:
            fb, near = d, np.zeros(ys.size, bool)
        den = _dot3(fb, fb)
        ok = near & (den > (4.0 / 255.0) ** 2)
        a = np.empty(ys.size, np.float32)
        # How far from the backdrop, relative to how far the solid neighbour is. Not the projection onto the
        # neighbour's colour: rim light and glints give an edge a colour of its own, and the projection then
        # loses half of it (measured: lost coverage 1.1 % against 0.7 %, SAD a third higher).
        a[ok] = np.sqrt(_dot3(d[ok], d[ok]) / den[ok])
        # No solid pixel close by (a speck or a hair thinner than the edge zone): the most distinct pixel
        # around stands for full coverage.
        if not ok.all():
            peak = ndimage.maximum_filter(dist, size=2 * reach + 1)[ys[~ok], xs[~ok]]
            a[~ok] = dist[ys[~ok], xs[~ok]] / np.maximum(peak, 1e-6)
        alpha[ys, xs] = np.clip(a, 0.0, 1.0)
        if settings.method == "key+cf":
            # Refine where keying left a fractional alpha, and the edge pixels next to them (keyed solid, but
            # often a little less than that: without them SAD rises by up to 80 % on the draft seeds).
            doubt = (alpha > 0.0) & (alpha < 1.0) & edge
            unknown = _grow(doubt, 1) & edge
            alpha[unknown] = _edge_closed_form(rgb, alpha, unknown)
    return alpha, back, clear


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    """A mask grown by ``px`` pixels in the chessboard metric: a (2 px + 1)-square maximum filter, separable, so
    several times faster than ``binary_dilation`` with a 3 x 3 element repeated ``px`` times (the same result)."""
    from scipy import ndimage

    return ndimage.maximum_filter(mask.view(np.uint8), size=2 * px + 1, mode="constant", cval=0).view(bool)


def _edge_closed_form(rgb: np.ndarray, alpha: np.ndarray, edge: np.ndarray, eps: float = 1e-5,
                      keep: float = 1e-3) -> np.ndarray:
    """Closed-form matting (Levin et al. 2008) of the edge pixels alone -> their refined alpha.

    The matting Laplacian is built only from the 3 x 3 windows that touch an edge pixel, and only its rows for
    edge pixels, so the cost follows the number of edge pixels, not the size of the crop (pymatting builds it
    for every pixel). Every other pixel keeps its keyed alpha as a boundary condition, and a weak pull
    (``keep``) toward the keyed alpha keeps the system well posed where a window is flat.
    """
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    h, w = edge.shape
    ey, ex = np.nonzero(edge)
    refined = alpha[ey, ex].copy()
    inner = (ey > 0) & (ey < h - 1) & (ex > 0) & (ex < w - 1)    # a window needs all 9 pixels in the crop
    pix = ey[inner] * w + ex[inner]                              # sorted (np.nonzero is row-major)
    m = pix.size
    if m == 0:
        return refined
    offsets = ((np.arange(3)[:, None] - 1) * w + (np.arange(3)[None, :] - 1)).ravel()
    touched = np.zeros(h * w, bool)
    touched[(pix[:, None] + offsets[None, :]).ravel()] = True
    centres = np.flatnonzero(touched)
    cy, cx = np.divmod(centres, w)
    centres = centres[(cy > 0) & (cy < h - 1) & (cx > 0) & (cx < w - 1)]
    members = centres[:, None] + offsets[None, :]                                # (n, 9) flat indices
    colours = rgb.reshape(-1, 3)[members].astype(np.float64)                      # (n, 9, 3)
    dev = colours - colours.mean(axis=1, keepdims=True)
    r, g, b = dev[..., 0], dev[..., 1], dev[..., 2]
    cov = np.stack([(r * r).mean(1), (r * g).mean(1), (r * b).mean(1),
                    (g * g).mean(1), (g * b).mean(1), (b * b).mean(1)], axis=1)
    cov[:, [0, 3, 5]] += eps / 9.0
    inv = _inverse_sym3(cov)
    # Rows of the windows' affinities (1 + dev_i' inv dev_j) / 9, only for members i that are edge pixels.
    index = np.full(h * w, -1, np.int64)
    index[pix] = np.arange(m)
    ids = index[members]                                                          # (n, 9): edge index, -1 = known
    wi, ii = np.nonzero(ids >= 0)
    rows = ids[wi, ii]
    di = dev[wi, ii]                                                              # (k, 3)
    # The (k, 9) products in float32: half the memory traffic, and alpha is stored in 8 bits anyway.
    yi = np.stack([di[:, 0] * inv[wi, 0] + di[:, 1] * inv[wi, 1] + di[:, 2] * inv[wi, 2],
                   di[:, 0] * inv[wi, 1] + di[:, 1] * inv[wi, 3] + di[:, 2] * inv[wi, 4],
                   di[:, 0] * inv[wi, 2] + di[:, 1] * inv[wi, 4] + di[:, 2] * inv[wi, 5]], axis=1) / 9.0
    yi = yi.astype(np.float32)
    dev32 = dev.astype(np.float32)
    affinity = (np.float32(1.0 / 9.0) + yi[:, 0:1] * dev32[wi, :, 0] + yi[:, 1:2] * dev32[wi, :, 1]
                + yi[:, 2:3] * dev32[wi, :, 2])                                  # (k, 9)
    # L = D - A, D the number of windows holding each pixel (each affinity row sums to 1). Known pixels enter
    # the right-hand side: sum_j A_ij alpha_j over a window's known members is (S0 / 9 + y_i . S1), with S0 and
    # S1 the window's sums of known alpha and of known alpha times colour deviation (no (k, 9) gather).
    known_alpha = np.where(ids < 0, alpha.ravel()[members], 0.0)                  # (n, 9)
    s0 = known_alpha.sum(axis=1)
    s1 = np.einsum("nj,njc->nc", known_alpha, dev)
    towards_known = s0[wi] / 9.0 + (yi[:, 0] * s1[wi, 0] + yi[:, 1] * s1[wi, 1] + yi[:, 2] * s1[wi, 2])
    keyed = refined[inner].astype(np.float64)
    rhs = keep * keyed + np.bincount(rows, weights=towards_known, minlength=m)
    windows = np.bincount(rows, minlength=m).astype(np.float64)
    # Pairs are summed by key into a 5 x 5 stencil per row (no sort of a COO matrix); the slots of known
    # columns are dropped afterwards. L is symmetric, so its row-major arrays serve as the column-major ones.
    slot = rows[:, None] * 25 + _STENCIL[ii]
    summed = -np.bincount(slot.ravel(), weights=affinity.ravel(), minlength=m * 25).reshape(m, 25)
    summed[:, 12] += windows + keep
    neighbour = index[np.clip(pix[:, None] + _stencil_offsets(w)[None, :], 0, h * w - 1)]   # (m, 25)
    used = (neighbour >= 0) & (summed != 0.0)
    lhs = sparse.csc_matrix((summed[used], neighbour[used], np.concatenate([[0], np.cumsum(used.sum(axis=1))])),
                            shape=(m, m))
    with np.errstate(all="ignore"):
        solved = spsolve(lhs, rhs, permc_spec="NATURAL")  # row-major pixels: already a narrow band
    if np.isfinite(solved).all():
        refined[inner] = np.clip(solved, 0.0, 1.0)
    return refined.astype(np.float32)


_STENCIL = np.array([[(j // 3 - i // 3 + 2) * 5 + (j % 3 - i % 3 + 2) for j in range(9)] for i in range(9)])
"""Where pixel j of a 3 x 3 window lies relative to pixel i of it, as an index into the 5 x 5 square around i."""


def _stencil_offsets(w: int) -> np.ndarray:
    """Flat-index offsets of the 5 x 5 square around a pixel in rows of ``w`` pixels, in ``_STENCIL``'s order."""
    return ((np.arange(5)[:, None] - 2) * w + (np.arange(5)[None, :] - 2)).ravel()


def _inverse_sym3(c: np.ndarray) -> np.ndarray:
    """Inverses of symmetric 3 x 3 matrices stored as (n, 6) rows (xx, xy, xz, yy, yz, zz), same layout, by
    cofactors (several times faster than ``np.linalg.inv`` on many small matrices)."""
    a, b, cc, d, e, f = (c[:, i] for i in range(6))
    cof = np.stack([d * f - e * e, cc * e - b * f, b * e - cc * d, a * f - cc * cc, b * cc - a * e, a * d - b * b], 1)
    det = a * cof[:, 0] + b * cof[:, 1] + cc * cof[:, 2]
    return cof / det[:, None]


def _backdrop_field(rgb: np.ndarray, sure_bg: np.ndarray, factor: int = 8):
    """The backdrop under a crop, from its sure-backdrop pixels -> (float32 (h, w, 3), noise level).

    A flat backdrop is its median colour. One that varies (a vignette, a soft gradient) is a smooth field:
    its pixels averaged over boxes of ``factor`` px, spread into the gaps by normalised convolution.
    """
    from scipy import ndimage

    samples = rgb[sure_bg]
    if samples.shape[0] > 40_000:
        samples = samples[:: samples.shape[0] // 20_000]
    flat = np.median(samples, axis=0).astype(np.float32)
    res = samples - flat
    spread = float(np.median(np.sqrt(_dot3(res, res))))
    h, w = sure_bg.shape
    if spread <= 2.0 / 255.0 or min(h, w) < 4 * factor:
        return np.broadcast_to(flat, rgb.shape), spread
    size = (max(2, w // factor), max(2, h // factor))
    weight = _resize(sure_bg.astype(np.float32), size, Image.BOX)
    sigma = 2.0
    wsum = ndimage.gaussian_filter(weight, sigma)
    field = np.empty(weight.shape + (3,))
    for c in range(3):
        avg = _resize(np.where(sure_bg, rgb[..., c], 0.0), size, Image.BOX)
        field[..., c] = np.where(wsum > 1e-3, ndimage.gaussian_filter(avg, sigma) / np.maximum(wsum, 1e-3), flat[c])
    back = _resize(field, (w, h)).astype(np.float32)
    res = rgb[sure_bg] - back[sure_bg]
    return back, float(np.median(np.sqrt(_dot3(res, res))))


def _unmix(crop_u8: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, back: np.ndarray) -> np.ndarray:
    """uint8 colours of a crop with the backdrop taken out of its semi-transparent pixels: ``F = B + (I - B) / a``
    (exact for a render composited over a known backdrop). Opaque and clear pixels keep their colour."""
    out = crop_u8.copy()
    ys, xs = np.nonzero((alpha > 0.0) & (alpha < 1.0))
    if ys.size:
        a = np.maximum(alpha[ys, xs], 1.0 / 255.0)[:, None]
        fg = back[ys, xs] + (rgb[ys, xs] - back[ys, xs]) / a
        out[ys, xs] = np.clip(fg * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def _sure(dist: np.ndarray, r: int) -> np.ndarray:
    """Pixels surely on their side of the prior's edge, from their distance to it.

    Deeper than the band radius ``r``; or, where the shape is thinner than the band (an arm, a chain link,
    a speck of dust, a gap between two figures), the inner half of its local thickness -- eroding by ``r``
    alone would erase thin parts and leave the solver nothing to anchor them.
    """
    from scipy import ndimage

    local = ndimage.maximum_filter(dist, size=2 * r + 1)
    return (dist > r) | ((dist > 0) & (dist >= 0.5 * local))


def _bbox(mask: np.ndarray, pad: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (max(0, rows[0] - pad), min(shape[0], rows[-1] + 1 + pad),
            max(0, cols[0] - pad), min(shape[1], cols[-1] + 1 + pad))


def _solve_trimap(rgb: np.ndarray, trimap: np.ndarray, settings: MatteSettings) -> np.ndarray:
    """Closed-form matting of one crop; at a reduced scale when the unknown band is large."""
    from pymatting import estimate_alpha_cf

    unknown = trimap == 0.5
    factor = max(1, math.ceil(math.sqrt(np.count_nonzero(unknown) / settings.solve_pixels)))
    h, w = trimap.shape
    if factor == 1:
        return _cf(estimate_alpha_cf, rgb, trimap).astype(np.float32)
    size = (max(2, round(w / factor)), max(2, round(h / factor)))
    small_rgb = _resize(rgb, size)
    # A low-res pixel is known only if every full-res pixel under it is: box-filtered 0/1 masks stay exact.
    small_fg = _resize((trimap == 1.0).astype(np.float32), size, Image.BOX) > 0.999
    small_bg = _resize((trimap == 0.0).astype(np.float32), size, Image.BOX) > 0.999
    if not small_fg.any() or not small_bg.any():
        return _cf(estimate_alpha_cf, rgb, trimap).astype(np.float32)
    small_trimap = np.full(small_fg.shape, 0.5)
    small_trimap[small_fg] = 1.0
    small_trimap[small_bg] = 0.0
    small_alpha = _cf(estimate_alpha_cf, small_rgb, small_trimap)
    out = (trimap == 1.0).astype(np.float32)
    ys, xs = np.nonzero(unknown)
    out[ys, xs] = _guided_upsample(small_alpha, small_rgb, small_trimap == 0.5, rgb[ys, xs], ys, xs, (h, w))
    return np.clip(out, 0.0, 1.0)


def _cf(estimate_alpha_cf, rgb: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    from pymatting.preconditioner.ichol import ichol

    def preconditioner(matrix):
        # Flat backdrops make the matting Laplacian nearly singular; pymatting then retries with a diagonal
        # shift, printing a warning on stdout each time. Starting from a small shift skips both.
        return ichol(matrix, shifts=[1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0])

    # A looser tolerance than pymatting's default: alpha is stored in 8 bits anyway.
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # a stalled solve divides by zero before it gives up
            return estimate_alpha_cf(rgb, trimap, preconditioner=preconditioner,
                                     cg_kwargs={"rtol": 1e-5, "maxiter": 2000})
    except ValueError as exc:
        if "did not converge" not in str(exc):
            raise
        # Pure noise in the unknown band can stall the solver; a feathered trimap is a usable matte, and a
        # render must never fail because its edges were hard to refine.
        return _feathered(trimap)


def _feathered(trimap: np.ndarray) -> np.ndarray:
    """The trimap with its unknown band filled by a smooth ramp between the sure regions."""
    from scipy import ndimage

    inside = ndimage.distance_transform_edt(trimap < 1.0)
    outside = ndimage.distance_transform_edt(trimap > 0.0)
    return np.where(trimap == 0.5, outside / np.maximum(inside + outside, 1e-6), trimap)


def _resize(array: np.ndarray, size: tuple[int, int], resample=Image.BILINEAR) -> np.ndarray:
    """Resize float (H, W) or (H, W, C) arrays channel by channel through Pillow's float mode."""
    if array.ndim == 2:
        return np.asarray(Image.fromarray(array.astype(np.float32), "F").resize(size, resample), np.float64)
    return np.stack([_resize(array[..., c], size, resample) for c in range(array.shape[2])], axis=-1)


def _box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return uniform_filter(x, size=2 * radius + 1, mode="nearest")


def _guided_upsample(small_alpha, small_rgb, small_unknown, rgb_at, ys, xs, shape, radius: int = 2):
    """Alpha at full-res pixels (ys, xs) from a low-res solve, by the fast guided filter (He & Sun 2015).

    Locally alpha ~ a . rgb + b; the coefficients are fitted at low res and applied to the full-res colours
    ``rgb_at``. Bilinear upsampling alone would blur the edge by the reduction factor; the colour guide puts
    it back where the full-resolution image has it. Only pixels near the unknown band are fitted.
    """
    from scipy import ndimage

    eps = 1e-4
    near = ndimage.binary_dilation(small_unknown, iterations=2 * radius + 1)
    mean_i = np.stack([_box_mean(small_rgb[..., c], radius) for c in range(3)], axis=-1)
    mean_p = _box_mean(small_alpha, radius)
    cov_ip = np.stack([_box_mean(small_rgb[..., c] * small_alpha, radius) for c in range(3)], axis=-1)
    cov_ip -= mean_i * mean_p[..., None]
    var = np.empty((int(np.count_nonzero(near)), 3, 3))
    for i in range(3):
        for j in range(i, 3):
            v = _box_mean(small_rgb[..., i] * small_rgb[..., j], radius)[near] - mean_i[near, i] * mean_i[near, j]
            var[:, i, j] = var[:, j, i] = v
    var += eps * np.eye(3)
    a = np.zeros(small_alpha.shape + (3,))
    a[near] = np.linalg.solve(var, cov_ip[near][..., None])[..., 0]
    b = mean_p - _dot3(a, mean_i)
    a = np.stack([_box_mean(a[..., c], radius) for c in range(3)], axis=-1)
    b = _box_mean(b, radius)
    return _dot3(_sample(a, ys, xs, shape), rgb_at) + _sample(b, ys, xs, shape)


def _sample(small: np.ndarray, ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear lookup of a low-res map (h, w[, c]) at the full-res pixel centres (ys, xs) of a map of ``shape``."""
    sh, sw = small.shape[:2]
    v = np.clip((ys + 0.5) * (sh / shape[0]) - 0.5, 0, sh - 1)
    u = np.clip((xs + 0.5) * (sw / shape[1]) - 0.5, 0, sw - 1)
    y0, x0 = v.astype(np.intp), u.astype(np.intp)
    y1, x1 = np.minimum(y0 + 1, sh - 1), np.minimum(x0 + 1, sw - 1)
    wy, wx = v - y0, u - x0
    if small.ndim == 3:
        wy, wx = wy[:, None], wx[:, None]
    top = small[y0, x0] * (1 - wx) + small[y0, x1] * wx
    bottom = small[y1, x0] * (1 - wx) + small[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def _dot3(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-pixel dot product of two (..., 3) arrays (several times faster than einsum here)."""
    return x[..., 0] * y[..., 0] + x[..., 1] * y[..., 1] + x[..., 2] * y[..., 2]


def _foreground_colours(rgb: np.ndarray, alpha: np.ndarray, most_pixels: int = 60_000) -> np.ndarray:
    """uint8 (H, W, 3) colours with the backdrop removed from semi-transparent pixels.

    pymatting's multi-level estimate costs in proportion to the whole crop, not to the edge, and the
    foreground colour is smooth across an edge: so it runs at a reduced scale when the crop is large and is
    looked up at the edge pixels only. Opaque pixels keep their exact colour.
    """
    from pymatting import estimate_foreground_ml

    ys, xs = np.nonzero((alpha > 0.0) & (alpha < 1.0))
    if ys.size == 0:
        return rgb
    h, w = alpha.shape
    factor = max(1, math.ceil(math.sqrt(h * w / most_pixels)))
    image = rgb.astype(np.float64) / 255.0
    if factor == 1:
        small_image, small_alpha = image, alpha.astype(np.float64)
    else:
        size = (max(2, round(w / factor)), max(2, round(h / factor)))
        small_image, small_alpha = _resize(image, size), _resize(alpha, size)
    fg = estimate_foreground_ml(small_image, small_alpha, n_big_iterations=1)
    out = rgb.copy()
    out[ys, xs] = np.clip(_sample(fg, ys, xs, (h, w)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out
