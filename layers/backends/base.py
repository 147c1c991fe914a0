"""The rendering interface every backend implements, and the progress callback it reports through."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np

from ..models import ModelUnavailableError  # a backend's loading failure; where weights come from says it

ProgressCallback = Callable[[str, float, int], None]
"""progress(layer_name_or_names, step, total_steps). layer is a layer name, or "background+midground+foreground"
when the layers are rendered in one batch. Called exactly once per denoising step with the whole number of steps
done (1 .. total), the last one (step == total) once the pictures are ready. A backend whose steps take seconds
(a model on a CPU) also reports in between, with a fractional step: k - 1 < step < k while step k runs; within
the last step the first DENOISE_SHARE is its denoising and the rest the decoding of the latents into pictures
(which costs about two steps of a batch on a CPU). `step_text` says which in words."""

DENOISE_SHARE = 1 / 3
"""Of the last step's span in a progress report, the part its denoising takes; the decoding takes the rest."""


def step_text(step: float, total: int) -> str:
    """A progress report in words: "step 3/4" while (or once) step 3 of 4 runs, "decoding" while the latents are
    turned into pictures (see ProgressCallback)."""
    whole = int(step)
    if step != whole and step > total - 1 + DENOISE_SHARE:
        return "decoding"
    return f"step {whole if step == whole else whole + 1}/{total}"


def span_progress(report: Callable[[float, str], None], lo: float, hi: float,
                  what: str) -> ProgressCallback:
    """A ProgressCallback that reports a backend call as (fraction, text) between `lo` and `hi` of a whole run.

    Args:
        report: progress(fraction in [0, 1], description).
        lo, hi: the share of the run the call takes.
        what: the text before the step ("plate"); "{layer}" in it becomes the label the backend reports.
    """
    def on_step(layer: str, step: float, total: int) -> None:
        report(lo + (hi - lo) * step / max(total, 1), f"{what.format(layer=layer)}: {step_text(step, total)}")

    return on_step


@dataclass(frozen=True)
class RenderRequest:
    """One layer to render."""

    name: str
    """Layer name (background, midground, foreground)."""
    prompt: str
    negative_prompt: str
    control: np.ndarray
    """float32 (H, W) in [0, 1], 1 = near: the depth-conditioning map."""
    prior: np.ndarray
    """float32 (H, W) in [0, 1]: where the layer's content goes (the draft backend paints there)."""
    seed: int
    strength: float = 1.0
    """ControlNet conditioning scale for this layer."""


@dataclass(frozen=True)
class RepaintRequest:
    """One picture to repaint from pixels that already exist: inpainting (where `mask` is 1) or, with no mask,
    img2img over the whole picture. Decomposing a picture fills what nearer layers hide with it; model mode
    renders each layer from the whole-scene plate and harmonises the composite with it."""

    name: str
    """Layer name (background, midground, foreground), or "composite" for a harmonising pass."""
    prompt: str
    negative_prompt: str
    image: Any
    """PIL.Image.Image, mode RGB, the render size: the pixels to start from (and to keep outside the mask)."""
    control: np.ndarray
    """float32 (H, W) in [0, 1], 1 = near: the depth-conditioning map (a layer's completed depth)."""
    seed: int
    mask: Optional[np.ndarray] = None
    """float32 (H, W) in [0, 1], 1 = repaint, 0 = keep; None repaints the whole picture (img2img)."""
    denoise: float = 1.0
    """How far the start pixels are re-noised, (0, 1]: 1 invents the masked part anew, ~0.5 keeps the layout."""
    strength: float = 1.0
    """ControlNet conditioning scale."""


@dataclass(frozen=True)
class RenderSettings:
    """Settings shared by all layers of one render."""

    width: int = 512
    height: int = 768
    steps: int = 25
    guidance: float = 6.0
    light_direction: str = "top"
    palette: tuple[str, ...] = ()
    """Colour words of the scene (the draft backend paints with them)."""
    control_end: float = 1.0
    """Fraction of the steps the ControlNet guides, from the first, in (0, 1]: the layout is decided in the
    noisiest steps, and a step past the end runs the UNet alone. Whole steps, at least the first one of each call
    (a 2-step repaint at 0.3 is guided in its first step). The draft backend has no ControlNet."""


@dataclass
class RenderResult:
    """What a backend returns: one RGB image per request, in request order, plus facts for the manifest."""

    images: list
    """list[PIL.Image.Image], mode RGB, size (width, height)."""
    info: dict = field(default_factory=dict)
    """Facts for the manifest: backend, model ids, batching ("batched" | "one_by_one"), dtype, device,
    what each layer's text encoder saw, ..."""


class Backend(Protocol):
    """A renderer of layers."""

    name: str

    def render(self, requests: Sequence[RenderRequest], settings: RenderSettings,
               progress: Optional[ProgressCallback] = None) -> RenderResult:
        ...


class Repainter(Protocol):
    """A backend that can also repaint existing pixels (inpaint / img2img); the draft backend cannot.

    A repaint of `denoise` runs int(steps * denoise) of `steps` denoising steps, and at least one: see
    `scheduler_steps`. `max_steps`, where a backend has it, is the longest schedule it runs."""

    def repaint(self, requests: Sequence[RepaintRequest], settings: RenderSettings,
                progress: Optional[ProgressCallback] = None) -> RenderResult:
        """One RGB image per request, in request order; outside each mask the result keeps the input pixels."""
        ...


def scheduler_steps(steps: int, denoise: float) -> int:
    """The scheduler's step count for an img2img / inpaint call of `steps` at `denoise`.

    diffusers runs int(steps * denoise) steps of a `steps`-long schedule (its get_timesteps); where that rounds to
    none (2 steps at 0.25, 1 step at 0.55), the schedule is lengthened to the fewest steps that run one, as a
    diffusers user raises num_inference_steps: the strength, the noise level the pass starts from, is kept."""
    n = max(int(steps), int(1.0 / denoise))
    while int(n * denoise) < 1:
        n += 1
    return n
