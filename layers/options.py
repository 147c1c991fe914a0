"""What a stack is made with (`GenerateOptions`) and what it is (`StackResult`): the values that flow through
`layers.pipeline`, from `generate` to `write_outputs` and back from `load_result`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from PIL import Image

from .compose import COMPOSITIONS, ComposeSettings
from .depth import LayerDepth
from .parallax import CAMERA_PATHS
from .plan import LAYER_NAMES, ScenePlan
from .stack import LayerStack

Progress = Callable[[float, str], None]
"""progress(fraction in [0, 1], description such as "midground: step 3/25")."""

DEPTH_SOURCES = ("scaffold", "reference", "map")
"""Where depth conditioning comes from: the plan's procedural scaffold, a reference image (depth estimated from
it), or a depth map given by the user (white = near)."""

EXPORT_FORMATS = ("psd", "ora", "zip", "mp4", "glb", "html")
"""Exports a stack can be written as (CLI --formats); all by default."""

@dataclass(frozen=True)
class GenerateOptions:
    """How a stack is rendered and exported."""

    steps: int = 25
    """Denoising steps per layer, 1..150 (the draft backend paints in one pass and ignores it)."""
    guidance: float = 6.0
    """Classifier-free guidance scale, 0..30."""
    strengths: tuple[float, float, float] = (0.6, 1.0, 1.0)
    """ControlNet strength per layer, back to front, each 0..2: softer for the background so the model can invent."""
    parallax: str = "sway"
    """Camera path of the preview video: sway, circle or zoom."""
    frames: int = 60
    """Frames in the parallax video, 2..600."""
    fps: int = 30
    """Frames per second of the parallax video, 1..60."""
    thresholds: tuple[float, float] = (0.35, 0.65)
    """Nearness thresholds splitting a given depth map into background | midground | foreground."""
    matte_model: Optional[str] = None
    """rembg model name, an .onnx file under U2NET_HOME, or "closed-form" (offline, from the layer's prior);
    None: closed-form in the scaffold composition, DEFAULT_MATTE_MODEL (downloaded on first use) with a plate."""
    video: bool = True
    """Write parallax.mp4."""
    formats: tuple[str, ...] = EXPORT_FORMATS
    """Which exports to write, any of EXPORT_FORMATS (the PNGs, composite and manifest are always written)."""
    glb_relief: bool = False
    """stack.glb cards are grids displaced by each layer's depth map instead of flat quads."""
    displacement: float = 0.0
    """Parallax video: 0 = each layer a flat card, 1 = each pixel moves by its own depth (default for a stack
    decomposed from a picture, whose layers carry their completed depth)."""
    composition: Optional[str] = None
    """"plate" (one whole-scene render cut into layers) or "scaffold" (three renders on the plan's scaffold);
    None: plate with a model backend, scaffold in draft mode or with a given depth map."""
    plate_hint: float = 0.3
    """Plate composition: ControlNet strength of the plan's scaffold depth on the plate, 0..2."""
    layer_denoise: float = 0.55
    """Plate composition: how far the midground and foreground are re-noised from the plate, (0, 1]."""
    harmonize: float = 0.25
    """Plate composition: denoise of the harmonising pass over the composite, 0..1 (0 = off)."""
    fill_denoise: float = 1.0
    """Plate composition: how far the background is re-noised where nearer layers hide it, (0, 1] (1 = invented
    anew; below 1 it starts from the colours of the surroundings). The few-step preset's default is 0.75."""
    control_end: float = 1.0
    """Plate composition: fraction of the plate's and the layers' steps the ControlNet guides, (0, 1], in whole steps
    and at least the first. The few-step preset's default is 0.5."""
    depth_model: Optional[str] = None
    """Plate composition: depth estimator of the plate (hub id or folder); None = the default Depth Anything."""
    fill: str = "texture"
    """How a layer's colour is completed where nearer layers hide it (a decomposed picture's layers, a plate's
    background inpaint start): "texture" (patches of the layer's own pixels) or "smooth" (a blend of them)."""

    def __post_init__(self):
        object.__setattr__(self, "strengths", tuple(float(s) for s in self.strengths))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "formats", tuple(self.formats))
        unknown = [f for f in self.formats if f not in EXPORT_FORMATS]
        if unknown:
            raise ValueError(f"unknown export format(s) {', '.join(map(repr, unknown))}; choose from "
                             f"{', '.join(EXPORT_FORMATS)}")
        if not 1 <= self.steps <= 150:
            raise ValueError(f"steps must be 1..150, got {self.steps}")
        if not 0.0 <= self.guidance <= 30.0:
            raise ValueError(f"guidance must be 0..30, got {self.guidance}")
        if len(self.strengths) != len(LAYER_NAMES) or not all(0.0 <= s <= 2.0 for s in self.strengths):
            raise ValueError(f"strengths must be three values in 0..2 (background, midground, foreground), "
                             f"got {self.strengths}")
        if self.parallax not in CAMERA_PATHS:
            raise ValueError(f"unknown parallax path {self.parallax!r}; choose one of {', '.join(CAMERA_PATHS)}")
        if not 2 <= self.frames <= 600:
            raise ValueError(f"frames must be 2..600, got {self.frames}")
        if isinstance(self.displacement, bool) or not 0.0 <= self.displacement <= 1.0:
            raise ValueError(f"displacement must be 0..1, got {self.displacement!r}")
        if not 1 <= self.fps <= 60:
            raise ValueError(f"fps must be 1..60, got {self.fps}")
        lo, hi = (self.thresholds + (0.0, 0.0))[:2] if len(self.thresholds) == 2 else (-1.0, -1.0)
        if not 0.0 < lo < hi < 1.0:
            raise ValueError(f"thresholds must be two values with 0 < near-far split < 1 in increasing order, "
                             f"got {self.thresholds}")
        if self.composition is not None and self.composition not in COMPOSITIONS:
            raise ValueError(f"unknown composition {self.composition!r}; choose one of {', '.join(COMPOSITIONS)}")
        self.compose_settings()  # range checks of the plate composition's settings

    def compose_settings(self) -> ComposeSettings:
        """The plate composition's settings."""
        return ComposeSettings(plate_hint=float(self.plate_hint), layer_denoise=float(self.layer_denoise),
                               harmonize=float(self.harmonize), fill_denoise=float(self.fill_denoise),
                               control_end=float(self.control_end), fill=self.fill)

    @classmethod
    def for_backend(cls, backend, **given) -> "GenerateOptions":
        """Options with the backend's own defaults where `given` says nothing.

        A model's preset knows what suits it (a few-step model: 4 steps, guidance 8, and a plate composition that
        spends its ControlNet and its background fill where they count); the draft backend has none, and these
        dataclass defaults hold.

        Args:
            backend: a loaded backend, or None.
            given: GenerateOptions keyword arguments (ValueError for a bad value).
        """
        defaults = {k: v for k, v in (getattr(backend, "defaults", None) or {}).items()
                    if k in {f.name for f in dataclasses.fields(cls)}}
        return cls(**{**defaults, **given})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["strengths"] = list(self.strengths)
        d["thresholds"] = list(self.thresholds)
        d["formats"] = list(self.formats)
        return d


@dataclass
class StackResult:
    """A rendered scene: its plan, the maps it was conditioned on, the layers, and how it was made.

    A stack decomposed from a picture has no plan (None): its layers come from the picture's depth bands,
    ``depths`` holds each layer's completed depth (control) and visible share (prior), and
    ``render_info["decompose"]`` how it was split (thresholds, fill, seeds)."""

    plan: Optional[ScenePlan]
    depths: dict[str, LayerDepth]
    stack: LayerStack
    render_info: dict
    options: GenerateOptions
    depth_source: str = "scaffold"
    timings: dict[str, float] = field(default_factory=dict)
    plate: Optional[Image.Image] = None
    """Plate composition: the whole-scene render the layers were cut from (plate.png)."""
    plate_depth: Optional[np.ndarray] = None
    """Plate composition: the estimator's depth of the plate, float32 (H, W), 1 = near (depth/plate.png)."""
