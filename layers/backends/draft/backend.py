"""DraftBackend: checks a batch, then paints each layer with its painter (architecture, figures or debris)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ...images import check_unit_map
from ..base import ProgressCallback, RenderRequest, RenderResult, RenderSettings
from .architecture import _paint_background
from .debris import _paint_foreground
from .figures import _paint_midground
from .paint import _backdrop, _rng, coverage
from .palette import _SKIN, _palette, light_vector


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
