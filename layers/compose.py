"""Compose, then layer: one whole-scene plate sets the composition, and each layer is rendered from it.

Model mode's default for text (``composition="plate"``). The scaffold flow renders three separate pictures whose
only tie is shared prompt words; here the layers are cut from one picture, so they belong to it:

1. **Plate.** One render of the whole scene from the *whole* prompt (the backend's chunked long-prompt encoding),
   at the scene seed, with the plan's combined scaffold depth as a weak hint (ControlNet strength ``plate_hint``,
   ~0.3: near debris, mid figures and far architecture are encouraged, not drawn as mannequins).
2. **Depth of the plate** from a monocular estimator (``layers/estimate.py``), split into bands with soft matted
   edges and each layer's colour and depth completed behind what is nearer (``layers/decompose.py``).
3. **Each layer rendered from the plate**, in one ``backend.repaint`` call (``Repainter``): the midground and
   foreground by img2img from the plate's pixels inside the layer's band over a plain backdrop
   (``layer_denoise`` ~0.55, under their own completed band depth, prompt, seed and ControlNet strength: the
   layer's own tokens add the detail one prompt could not hold); the background by inpainting what the nearer
   layers cover, so it is complete (``fill_denoise`` below 1 starts it from the decomposition's fill: by
   default patches of the background's own texture, ``fill="texture"``; or its smooth blend). The
   ControlNet guides the first ``control_end`` of the plate's and the layers' steps.
4. **Matting** of the midground and foreground renders (``layers/matte.py``), with the layer's band as the prior.
5. **Harmonising**: one low-strength img2img pass over the composite; each layer then takes the colour change
   where it is the visible one (spread behind nearer layers from its own visible pixels only), inside its own
   alpha. The alphas are not touched.

Plain values in and out; the caller (``pipeline.build_stack``) turns a ``Composition`` into a stack result.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from .backends.base import ProgressCallback, RenderRequest, RenderSettings, RepaintRequest, span_progress
from .decompose import DecomposeSettings, Decomposition, decompose
from .depth import LayerDepth
from .fill import check_fill, push_pull
from .images import as_stored16
from .matte import matte_rgba
from .stack import LayerStack, StackLayer

__all__ = ["CLOSED_FORM", "COMPOSITIONS", "ComposeSettings", "Composition", "DEFAULT_MATTE_MODEL", "combined_scaffold",
           "compose_stack", "harmonize", "load_estimator", "matte_band", "recompose_layer"]

COMPOSITIONS: tuple[str, ...] = ("plate", "scaffold")
"""How a text scene is composed: one whole-scene plate cut into layers, or three renders on the plan's scaffold."""

DEFAULT_MATTE_MODEL = "isnet-general-use"
"""rembg model matting model-mode layers by default. IS-Net general-use is trained for any kind of object (not
people only, like u2net_human_seg, nor one salient object at portrait scale), gives sharp edges at 1024 px, weighs
~170 MB and runs in well under a second per layer on a CPU; BiRefNet-general is finer but ~900 MB and several
times slower on a CPU. It keeps one main subject, so its mask is combined with the layer's band (see matte.py)."""

CLOSED_FORM = "closed-form"
"""The matte model name that asks for no segmenter: closed-form matting of each layer's band."""

NAMES = ("background", "midground", "foreground")
PLATE = "plate"
COMPOSITE = "composite"


@dataclass(frozen=True)
class ComposeSettings:
    """How the plate is rendered and cut into layers."""

    plate_hint: float = 0.3
    """ControlNet strength of the plan's scaffold depth on the plate, 0..2 (0: the plate is free)."""
    layer_denoise: float = 0.55
    """How far the midground and foreground are re-noised from the plate's pixels, (0, 1]."""
    fill_denoise: float = 1.0
    """How far the background is re-noised where nearer layers hide it, (0, 1] (1: invented anew; below 1 it starts
    from the decomposition's fill, see ``fill``)."""
    fill: str = "texture"
    """How the plate's layers are completed where nearer ones hide them, the background inpaint's start image:
    "texture" (patches of the layer's own pixels) or "smooth"."""
    control_end: float = 1.0
    """Fraction of the plate's and the layers' steps the ControlNet guides, (0, 1] (the harmonising pass, one or two
    steps, is always guided throughout)."""
    harmonize: float = 0.25
    """Denoise of the harmonising img2img pass over the composite, 0..1 (0: no harmonising)."""
    harmonize_control: float = 0.5
    """ControlNet strength of the plate's depth during harmonising, 0..2."""
    plate_negative: str = "text, watermark, signature, blurry, lowres, deformed"
    """Negative prompt of the plate and of the harmonising pass."""
    backdrop: tuple[int, int, int] = (128, 128, 128)
    """Plain backdrop the midground and foreground are rendered on (what their prompts ask for)."""
    grow: float = 0.01
    """How far (fraction of the short side) the background's inpaint mask grows past what nearer layers cover."""

    def __post_init__(self):
        for name, lo, hi in (("plate_hint", 0.0, 2.0), ("harmonize_control", 0.0, 2.0), ("harmonize", 0.0, 1.0),
                             ("grow", 0.0, 0.2)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
        for name in ("layer_denoise", "fill_denoise", "control_end"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if len(self.backdrop) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in self.backdrop):
            raise ValueError(f"backdrop must be three integers 0..255, got {self.backdrop!r}")
        check_fill(self.fill)


@dataclass
class Composition:
    """A scene composed from a plate."""

    plate: Image.Image
    """The whole-scene render, RGB."""
    plate_depth: np.ndarray
    """float32 (H, W) in [0, 1], 1 = near: the estimator's depth of the plate."""
    stack: LayerStack
    """background / midground / foreground; each layer's depth is its completed band depth."""
    depths: dict
    """name -> LayerDepth: the control map each layer was rendered under, its band (prior) and nearness."""
    info: dict
    """Facts for the manifest: composition, plate seed, thresholds, strengths, denoise, harmonise, render info."""
    timings: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- inputs

def combined_scaffold(depths: dict) -> np.ndarray:
    """The plan's three scaffold maps as one picture's depth: each layer over the farther ones by its prior."""
    out = np.asarray(depths["background"].control, dtype=np.float32).copy()
    for name in NAMES[1:]:
        prior = np.asarray(depths[name].prior, dtype=np.float32)
        out = prior * np.asarray(depths[name].control, dtype=np.float32) + (1.0 - prior) * out
    return out


def load_estimator(model: str) -> Callable[[Image.Image], np.ndarray]:
    """A depth estimator for plates, loaded now so that a missing one is known before anything is rendered.

    Raises:
        ModelUnavailableError: the weights are not reachable (one line naming the id and how to fetch it).
    """
    from .estimate import estimate_depth

    estimate_depth(Image.new("RGB", (64, 64), (128, 128, 128)), model=model)  # loads and keeps the model

    def estimator(image: Image.Image) -> np.ndarray:
        return estimate_depth(image, model=model)

    return estimator


# ------------------------------------------------------------------------------------------------- flow

def compose_stack(plan, backend, scaffold: dict, estimator: Callable[[Image.Image], np.ndarray], *,
                  steps: int, guidance: float, strengths: Sequence[float],
                  settings: ComposeSettings = ComposeSettings(), session: Any = None,
                  progress: Optional[Callable[[float, str], None]] = None) -> Composition:
    """Render a planned scene as one plate, then each layer from it, matted and harmonised.

    Args:
        plan: the ScenePlan (prompt, seed, size, layer prompts and seeds).
        backend: a backend with ``render`` and ``repaint`` (the diffusers backend).
        scaffold: the plan's scaffold depth maps (depth.build_depth_maps), combined into the plate's hint.
        estimator: image -> float32 depth (H, W) in [0, 1], 1 = near (``load_estimator``).
        steps, guidance: sampling, as for every render of the scene.
        strengths: ControlNet strength of each layer, back to front.
        settings: plate hint, denoise, harmonising.
        session: a rembg session for matting the midground and foreground; None mattes offline.
        progress: called with (fraction in [0, 1], description).

    Returns:
        The Composition.
    """
    report = progress or (lambda fraction, text: None)
    if not callable(getattr(backend, "repaint", None)):
        raise ValueError(f"composition 'plate' needs a backend that can repaint (diffusers), not "
                         f"{getattr(backend, 'name', type(backend).__name__)!r}")
    timings: dict[str, float] = {}
    size = _render_settings(plan, steps, guidance, settings)

    t = time.perf_counter()
    report(0.02, "rendering the plate")
    hint = combined_scaffold(scaffold)
    plate_request = RenderRequest(name=PLATE, prompt=plan.prompt, negative_prompt=settings.plate_negative,
                                  control=hint, prior=np.ones_like(hint), seed=int(plan.seed),
                                  strength=float(settings.plate_hint))
    plate_result = backend.render([plate_request], size, progress=span_progress(report, 0.02, 0.3, "plate"))
    plate = plate_result.images[0].convert("RGB")
    timings["plate"] = time.perf_counter() - t

    t = time.perf_counter()
    report(0.3, "estimating the plate's depth")
    plate_depth = as_stored16(estimator(plate))
    timings["estimate"] = time.perf_counter() - t

    t = time.perf_counter()
    report(0.35, "cutting the plate into layers")
    parts = _cut(plate, plate_depth, plan, settings)
    timings["decompose"] = time.perf_counter() - t

    t = time.perf_counter()
    requests = [_layer_request(plan, parts, name, strengths[k], settings) for k, name in enumerate(NAMES)]
    rendered = backend.repaint(requests, size, progress=span_progress(report, 0.4, 0.75, "layers"))
    timings["layers"] = time.perf_counter() - t

    t = time.perf_counter()
    layers, depths = [], {}
    for k, (name, request, image) in enumerate(zip(NAMES, requests, rendered.images)):
        report(0.75 + 0.1 * k / len(NAMES), f"matting {name}")
        layers.append(_matte(name, image, parts, session))
        depths[name] = _layer_depth(name, request, parts)
    stack = LayerStack(layers)
    timings["matte"] = time.perf_counter() - t

    harmonise_info = {"strength": float(settings.harmonize)}
    if settings.harmonize > 0:
        t = time.perf_counter()
        report(0.85, "harmonising the layers")
        stack, harmonise_info = harmonize(stack, backend, plan, plate_depth, size, settings,
                                          progress=span_progress(report, 0.85, 0.9, "harmonising"))
        timings["harmonize"] = time.perf_counter() - t
    report(0.9, "stack ready")

    info = dict(rendered.info)
    info.update(
        composition="plate",
        plate={"seed": int(plan.seed), "hint_strength": float(settings.plate_hint), "prompt": plan.prompt,
               "render": {k: v for k, v in plate_result.info.items() if k in ("layers", "timings", "batching")}},
        decompose={"thresholds": [round(float(x), 6) for x in parts.thresholds], "fill": parts.info["fill"],
                   "seeds": parts.info.get("seeds", {}), "notices": list(parts.notices),
                   "timings": parts.info.get("timings", {})},
        layer_denoise=float(settings.layer_denoise), fill_denoise=float(settings.fill_denoise),
        strengths=[float(s) for s in strengths], harmonize=harmonise_info,
        compose_settings={"plate_hint": settings.plate_hint, "layer_denoise": settings.layer_denoise,
                          "fill_denoise": settings.fill_denoise, "fill": settings.fill,
                          "control_end": settings.control_end,
                          "harmonize": settings.harmonize,
                          "harmonize_control": settings.harmonize_control, "grow": settings.grow,
                          "backdrop": list(settings.backdrop)},
    )
    return Composition(plate=plate, plate_depth=plate_depth, stack=stack, depths=depths, info=info, timings=timings)


def recompose_layer(plan, backend, plate: Image.Image, plate_depth: np.ndarray, thresholds: Sequence[float],
                    stack: LayerStack, name: str, *, steps: int, guidance: float, strength: float,
                    settings: ComposeSettings = ComposeSettings(), session: Any = None,
                    progress: Optional[Callable[[float, str], None]] = None) -> tuple[StackLayer, LayerDepth, dict]:
    """Render one layer of a plate-composed stack again (its seed or prompt changed in `plan`), matte it and
    harmonise only its pixels; every other layer is left to the caller, untouched.

    Returns:
        (the new layer, its LayerDepth, facts for the manifest).
    """
    report = progress or (lambda fraction, text: None)
    if name not in NAMES:
        raise ValueError(f"unknown layer {name!r}; choose one of {', '.join(NAMES)}")
    size = _render_settings(plan, steps, guidance, settings)
    parts = _cut(plate, as_stored16(plate_depth), plan, settings)
    if not np.allclose(parts.thresholds, thresholds, atol=1e-6):
        raise ValueError(f"the plate's depth now splits at {list(parts.thresholds)}, not at the stack's "
                         f"{list(thresholds)}: depth/plate.png was changed; regenerate the whole stack")
    request = _layer_request(plan, parts, name, strength, settings)
    rendered = backend.repaint([request], size, progress=span_progress(report, 0.05, 0.75, name))
    layer = _matte(name, rendered.images[0], parts, session)
    info = {"layer": name, "seed": int(request.seed), "denoise": float(request.denoise)}
    if settings.harmonize > 0:
        report(0.8, f"harmonising {name}")
        harmonised, h_info = harmonize(stack.replace(layer), backend, plan, plate_depth, size, settings, only=(name,),
                                       progress=span_progress(report, 0.8, 0.9, f"harmonising {name}"))
        layer = harmonised[name]
        info["harmonize"] = h_info
    return layer, _layer_depth(name, request, parts), info


# ------------------------------------------------------------------------------------------------- steps

def _cut(plate: Image.Image, plate_depth: np.ndarray, plan, settings: ComposeSettings) -> Decomposition:
    """The plate in three depth layers, each completed behind the nearer ones (the scene seed seeds the fill, so
    regenerating a layer cuts the very same layers again).

    At a fill denoise of 1 the background's hidden part is inpainted from pure noise: no pixel of its fill is kept
    (its only trace is through the VAE encoding of the surroundings, whose latents see a little past the grown
    mask), so it takes the smooth fill instead of the texture fill, which on a GPU is most of a few-step stack's
    time (bench/bench_diffusers_gpu.py)."""
    discarded = (NAMES[0],) if settings.fill_denoise >= 1.0 else ()
    return decompose(plate, plate_depth, layers=len(NAMES), seed=int(plan.seed),
                     settings=DecomposeSettings(fill=settings.fill), discarded=discarded)


def _render_settings(plan, steps: int, guidance: float, settings: ComposeSettings) -> RenderSettings:
    """The plate's and the layers' render settings."""
    return RenderSettings(width=plan.width, height=plan.height, steps=steps, guidance=guidance,
                          light_direction=plan.light_direction, palette=plan.palette,
                          control_end=float(settings.control_end))


def _band(parts: Decomposition, name: str) -> np.ndarray:
    return parts.stack[name].alpha


def _layer_request(plan, parts: Decomposition, name: str, strength: float,
                   settings: ComposeSettings) -> RepaintRequest:
    """What one layer is rendered from: the plate's pixels of its band (or the background with its hidden parts
    to inpaint), under its completed band depth."""
    lp = plan.layer(name)
    layer = parts.stack[name]
    colour = np.asarray(layer.rgba.convert("RGB"), dtype=np.float32)
    depth = np.asarray(layer.depth, dtype=np.float32)
    if name == NAMES[0]:
        hidden = parts.filled[name].astype(np.float32)
        mask = _grow(hidden, settings.grow) if hidden.any() else None
        # With nothing hidden there is nothing to inpaint: the background is then re-rendered from the plate
        # like the other layers (img2img), so it still carries its own prompt's detail.
        return RepaintRequest(name=name, prompt=lp.prompt, negative_prompt=lp.negative_prompt,
                              image=Image.fromarray(colour.astype(np.uint8), "RGB"), control=depth, seed=lp.seed,
                              mask=mask, denoise=float(settings.fill_denoise if mask is not None
                                                       else settings.layer_denoise),
                              strength=float(strength))
    alpha = layer.alpha[..., None]
    backdrop = np.asarray(settings.backdrop, dtype=np.float32)
    start = np.clip(np.rint(colour * alpha + backdrop * (1.0 - alpha)), 0, 255).astype(np.uint8)
    # The band's own depth; outside it the far end, so the ControlNet sees one subject on an empty backdrop.
    control = (depth * layer.alpha).astype(np.float32)
    return RepaintRequest(name=name, prompt=lp.prompt, negative_prompt=lp.negative_prompt,
                          image=Image.fromarray(start, "RGB"), control=control, seed=lp.seed, mask=None,
                          denoise=float(settings.layer_denoise), strength=float(strength))


def _grow(mask: np.ndarray, grow: float) -> np.ndarray:
    from scipy import ndimage

    r = int(round(grow * min(mask.shape)))
    if r < 1:
        return mask.astype(np.float32)
    return ndimage.binary_dilation(mask > 0.5, iterations=r).astype(np.float32)


def _matte(name: str, image: Image.Image, parts: Decomposition, session) -> StackLayer:
    source = parts.stack[name]
    if name == NAMES[0]:
        return StackLayer(name=name, rgba=image.convert("RGBA"), depth=source.depth, nearness=source.nearness)
    return StackLayer(name=name, rgba=matte_band(image, _band(parts, name), session), depth=source.depth,
                      nearness=source.nearness)


def matte_band(image: Image.Image, band: np.ndarray, session: Any = None) -> Image.Image:
    """A layer render matted against its band: RGBA, edge colours decontaminated.

    The layer is rendered over a plain backdrop outside its band, so matte.py keys it against that backdrop,
    which keeps what the plate put in the layer, scattered debris included; a rembg session's mask decides what
    keying cannot (backdrop-coloured patches inside the subject). A salient-object segmenter alone keeps one
    subject and drops the rest.

    Args:
        image: the layer's render (subject on a plain backdrop).
        band: float32 (H, W) in [0, 1]: where the plate's depth puts the layer.
        session: a rembg session, or None for keying alone.
    """
    return matte_rgba(image, band, session=session)


def _layer_depth(name: str, request: RepaintRequest, parts: Decomposition) -> LayerDepth:
    layer = parts.stack[name]
    return LayerDepth(name=name, control=np.asarray(request.control, dtype=np.float32),
                      prior=np.ones_like(layer.alpha) if name == NAMES[0] else layer.alpha,
                      nearness=float(layer.nearness))


# ------------------------------------------------------------------------------------------------- harmonise

def harmonize(stack: LayerStack, backend, plan, plate_depth: np.ndarray, size: RenderSettings,
              settings: ComposeSettings, *, only: Optional[Sequence[str]] = None,
              progress: Optional[ProgressCallback] = None) -> tuple[LayerStack, dict]:
    """One low-strength img2img pass over the composite; each layer takes the colour change where it is seen.

    A layer's change is the pass's change where that layer is the visible one, spread behind nearer layers from
    its own visible pixels only (push-pull), so a figure's colours never leak into the wall behind it. Only the
    RGB of pixels the layer covers (alpha > 0) changes; every alpha stays byte-identical.

    Args:
        stack: the layers.
        backend: a Repainter.
        plan: for the prompt and the scene seed.
        plate_depth: the ControlNet's depth for the pass.
        size: render settings.
        settings: harmonise denoise and ControlNet strength.
        only: layer names to harmonise (regenerating one layer); None = all.
        progress: the pass's progress within its step (a step of a full-size render is seconds on a CPU).

    Returns:
        (the harmonised stack, facts for the manifest).
    """
    composite = stack.composite()
    request = RepaintRequest(name=COMPOSITE, prompt=plan.prompt, negative_prompt=settings.plate_negative,
                             image=composite, control=np.asarray(plate_depth, dtype=np.float32),
                             seed=int(plan.seed), denoise=float(settings.harmonize),
                             strength=float(settings.harmonize_control))
    result = backend.repaint([request], dataclasses.replace(size, control_end=1.0), progress=progress)
    change = np.asarray(result.images[0], dtype=np.float32) - np.asarray(composite, dtype=np.float32)
    alphas = [layer.alpha for layer in stack]
    layers = []
    for k, layer in enumerate(stack):
        if only is not None and layer.name not in only:
            layers.append(layer)
            continue
        seen = alphas[k].copy()
        for nearer in alphas[k + 1:]:
            seen *= 1.0 - nearer
        if not (seen > 0).any():
            layers.append(layer)
            continue
        own = push_pull(change, seen)
        rgba = np.asarray(layer.rgba, dtype=np.uint8).copy()
        covered = rgba[..., 3] > 0
        rgb = rgba[..., :3].astype(np.float32)
        rgba[..., :3][covered] = np.clip(np.rint(rgb + own), 0, 255).astype(np.uint8)[covered]
        layers.append(StackLayer(name=layer.name, rgba=Image.fromarray(rgba, "RGBA"), depth=layer.depth,
                                 nearness=layer.nearness))
    info = {"strength": float(settings.harmonize), "control": float(settings.harmonize_control),
            "seed": int(plan.seed), "layers": [layer.name for layer in stack if only is None or layer.name in only],
            "mean_change": round(float(np.abs(change).mean()), 4)}
    for call in result.info.get("calls", [])[:1]:  # the steps the pass ran (at least one, whatever the denoise)
        info.update(steps=call.get("steps"), steps_run=call.get("steps_run"))
    return LayerStack(layers), info
