"""The rendering interface every backend implements, and the progress callback it reports through."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

ProgressCallback = Callable[[str, int, int], None]
"""progress(layer_name_or_names, step, total_steps). layer is a layer name, or "background+midground+foreground"
when the layers are rendered in one batch. Called at least once per layer (or per batch) with step == total."""


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
class RenderSettings:
    """Settings shared by all layers of one render."""

    width: int = 512
    height: int = 768
    steps: int = 25
    guidance: float = 6.0
    light_direction: str = "top"
    palette: tuple[str, ...] = ()
    """Colour words of the scene (the draft backend paints with them)."""


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


class ModelUnavailableError(ValueError):
    """The model weights cannot be loaded (not cached and no hub access, or a bad folder).

    The message is one line naming the model id and how to fetch it ahead of time."""
