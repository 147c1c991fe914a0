"""LayerStack: named RGBA layers back to front, each with its depth map, and compositing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class StackLayer:
    """One layer of the stack."""

    name: str
    rgba: Image.Image
    """RGBA, straight (non-premultiplied) alpha, as stored in PNG/PSD/ORA."""
    depth: np.ndarray
    """float32 (H, W) in [0, 1], 1 = near: the map this layer was conditioned on."""
    nearness: float
    """Representative nearness in [0, 1]; the parallax shift of the layer is proportional to it."""

    @property
    def alpha(self) -> np.ndarray:
        """Alpha as float32 (H, W) in [0, 1]."""
        return np.asarray(self.rgba.getchannel("A"), dtype=np.float32) / 255.0


class LayerStack:
    """Ordered layers, back to front. The first (background) layer is opaque and complete."""

    def __init__(self, layers: Sequence[StackLayer]):
        if not layers:
            raise ValueError("a LayerStack needs at least one layer")
        size = layers[0].rgba.size
        for layer in layers:
            if layer.rgba.mode != "RGBA":
                raise ValueError(f"layer {layer.name!r} is {layer.rgba.mode}, expected RGBA")
            if layer.rgba.size != size:
                raise ValueError(f"layer {layer.name!r} is {layer.rgba.size}, expected {size}")
            if layer.depth.shape != (size[1], size[0]):
                raise ValueError(f"layer {layer.name!r} depth is {layer.depth.shape}, expected {(size[1], size[0])}")
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")
        self.layers: tuple[StackLayer, ...] = tuple(layers)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.layers[0].rgba.size

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def __iter__(self) -> Iterator[StackLayer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> StackLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def replace(self, layer: StackLayer) -> "LayerStack":
        """A new stack with the layer of the same name swapped for `layer`; the others are the same objects."""
        if layer.name not in self.names:
            raise ValueError(f"no layer named {layer.name!r} in {self.names}")
        return LayerStack([layer if old.name == layer.name else old for old in self.layers])

    def composite(self) -> Image.Image:
        """Flatten the stack with premultiplied-alpha "over", back to front. Returns an RGB image."""
        return Image.fromarray(composite_arrays([premultiply(layer.rgba) for layer in self.layers]), "RGB")


def premultiply(rgba: Image.Image) -> np.ndarray:
    """RGBA image -> float32 (H, W, 4) premultiplied, in [0, 1]."""
    a = np.asarray(rgba.convert("RGBA"), dtype=np.float32)
    a *= np.float32(1.0 / 255.0)
    # One channel at a time: numpy broadcasting a (H, W, 1) alpha over 3 channels runs a 3-long inner loop
    # per pixel, about 20 times slower than these plain strided loops.
    alpha = a[..., 3]
    for c in range(3):
        a[..., c] *= alpha
    return a


def composite_arrays(premultiplied: Sequence[np.ndarray]) -> np.ndarray:
    """Premultiplied float (H, W, 4) layers back to front -> uint8 (H, W, 3) composite over black."""
    out = np.zeros(premultiplied[0].shape[:2] + (3,), np.float32)
    for layer in premultiplied:
        keep = 1.0 - layer[..., 3]
        for c in range(3):  # per channel, for the same reason as in premultiply
            channel = out[..., c]
            channel *= keep
            channel += layer[..., c]
    out *= 255.0
    out += 0.5
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def with_alpha(rgb: Image.Image, alpha: np.ndarray) -> Image.Image:
    """RGB image + float alpha (H, W) in [0, 1] -> RGBA image."""
    a = Image.fromarray(np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    out = rgb.convert("RGB").copy()
    out.putalpha(a)
    return out


__all__ = ["LayerStack", "StackLayer", "composite_arrays", "premultiply", "with_alpha"]
