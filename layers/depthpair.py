"""Depth in the formats other tools read: an image + depth pair and the whole scene's depth.

- ``composite.jpg`` + ``composite_depth.jpg``: the pair Facebook 3D photos and depth-based parallax tools
  (DepthFlow, three.js depth viewers) take: the composite and, at the same size, its depth as an 8-bit grey
  JPEG, near = white.
- ``scene_depth.png``: the same depth as a 16-bit grey PNG (65535 = near).

The scene depth is, per pixel, the depth of what the viewer sees there: the layers' depth maps composited
back to front with each layer's alpha, exactly as the colours are. Where an opaque layer covers a pixel its depth
wins; where a layer is half transparent its depth and the depth behind mix by its alpha.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np
from PIL import Image

from .export import _check_composite, _check_stack, _depth_image16, png_bytes
from .stack import LayerStack

__all__ = ["DEPTH_PAIR_NAMES", "JPEG_QUALITY", "depth_pair_files", "scene_depth"]

DEPTH_PAIR_NAMES = ("composite.jpg", "composite_depth.jpg", "scene_depth.png")
JPEG_QUALITY = 92
"""JPEG quality of the pair: high enough that depth steps do not show blocks."""


def scene_depth(stack: LayerStack) -> np.ndarray:
    """The depth the viewer sees at each pixel: layer depth maps composited back to front by alpha.

    Args:
        stack: layers back to front (the first one opaque).

    Returns:
        float32 (H, W) in [0, 1], 1 = near.
    """
    stack = _check_stack(stack)
    out = np.zeros(stack.layers[0].depth.shape, np.float32)
    for layer in stack:
        alpha = layer.alpha
        out *= 1.0 - alpha
        out += alpha * np.asarray(layer.depth, np.float32)
    return np.clip(out, 0.0, 1.0)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def depth_pair_files(stack: LayerStack, composite: Optional[Image.Image] = None) -> dict[str, bytes]:
    """The encoded files of the image + depth pair and the 16-bit scene depth.

    Args:
        stack: layers back to front.
        composite: the flattened image, if already computed (else ``stack.composite()``).

    Returns:
        {"composite.jpg": ..., "composite_depth.jpg": ..., "scene_depth.png": ...} (file bytes).
    """
    stack = _check_stack(stack)
    merged = _check_composite(composite, stack)
    depth = scene_depth(stack)
    grey = Image.fromarray(np.clip(depth * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return {"composite.jpg": _jpeg(merged), "composite_depth.jpg": _jpeg(grey),
            "scene_depth.png": png_bytes(_depth_image16(depth))}
