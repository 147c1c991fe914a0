"""The interactive parallax viewer as markup, and ``parallax.html``: the same viewer in one self-contained file.

The viewer's code is one file, ``assets/parallax.js``, used by the studio (gr.HTML's js_on_load) and embedded
here. parallax.html holds everything it needs: the layer PNGs and their depth maps as data URIs, the CSS and
the script inline. It makes no request (no server, no network, no CDN), so it works from ``file://``, pasted into
a page or shown in an iframe. Each layer is displaced per pixel by its own depth map with WebGL; without WebGL
the layers move as flat cards; with ``prefers-reduced-motion`` the page shows the still composite.
"""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from .export import _check_stack, _check_suffix, atomic_path, png_bytes
from .stack import LayerStack

__all__ = ["VIEWER_AMOUNT", "VIEWER_SCRIPT", "export_html", "viewer_layers", "viewer_markup"]

VIEWER_SCRIPT = Path(__file__).resolve().parents[1] / "assets" / "parallax.js"
"""The viewer's code, shared by the studio and parallax.html."""
VIEWER_AMOUNT = 0.05
"""How far the nearest layer moves, as a fraction of the image width."""
DEPTH_MAP_SIDE = 512
"""Longest side of the depth maps the viewer samples: they are smooth, and the shader interpolates them."""

PathLike = Union[str, os.PathLike]


def _data_uri(image: Image.Image, fmt: str) -> str:
    if fmt == "png":
        data = png_bytes(image)
    else:
        buffer = io.BytesIO()
        image.save(buffer, "WEBP", quality=85, method=3)
        data = buffer.getvalue()
    return f"data:image/{fmt};base64," + base64.b64encode(data).decode("ascii")


def viewer_layers(stack: LayerStack, *, max_side: Optional[int] = None, fmt: str = "png") -> list[dict]:
    """The layers of a stack as data URIs for the viewer: each layer's RGBA and its own depth map.

    Args:
        stack: layers back to front.
        max_side: longest side of the embedded layer images; None keeps the stack's size.
        fmt: "png" (lossless, what parallax.html embeds) or "webp" (smaller, what the studio sends).

    Returns:
        Back to front: {"name", "nearness", "uri", "depth_uri", "width", "height"} per layer. The depth map is an
        8-bit grey PNG (white = near), at most DEPTH_MAP_SIDE on its longest side.
    """
    stack = _check_stack(stack)
    if fmt not in ("png", "webp"):
        raise ValueError(f"fmt must be 'png' or 'webp', got {fmt!r}")
    if max_side is not None and not 1 <= max_side:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    out = []
    for layer in stack:
        img = layer.rgba
        scale = min(1.0, max_side / max(img.size)) if max_side else 1.0
        if scale < 1.0:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS)
        depth = Image.fromarray(np.clip(_viewer_depth(layer) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        out.append({"name": layer.name, "nearness": float(layer.nearness), "width": img.width, "height": img.height,
                    "uri": _data_uri(img, fmt), "depth_uri": _data_uri(depth, "png")})
    return out


def _viewer_depth(layer) -> np.ndarray:
    """A layer's depth map as the viewer samples it: at most DEPTH_MAP_SIDE, and around the layer's content
    (alpha > 0.5) the content's own depth, spread further than any shift.

    The shader finds which source pixel lands on each screen pixel from the depth found at the source. Around a
    figure the conditioning map holds the depth of what was behind it; with that, the pixels next to the figure
    would move less than the figure and show it a second time. Spreading the figure's depth over its
    surroundings makes them move with it.
    """
    from scipy.ndimage import maximum_filter

    height, width = layer.depth.shape
    scale = min(1.0, DEPTH_MAP_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    depth = np.asarray(Image.fromarray(np.asarray(layer.depth, np.float32), "F").resize(size, Image.Resampling.BOX))
    alpha = np.asarray(layer.rgba.getchannel("A").resize(size, Image.Resampling.BOX), np.float32) / 255.0
    content = alpha > 0.5
    if content.all() or not content.any():
        return np.clip(depth, 0.0, 1.0)
    # The largest shift is 2 * VIEWER_AMOUNT of the frame (shift plus enlargement); spread a little further.
    reach = 2 * round(3 * VIEWER_AMOUNT * max(size)) + 1
    spread = maximum_filter(np.where(content, depth, 0.0), size=reach)
    return np.clip(np.where(content, depth, spread), 0.0, 1.0)


def viewer_markup(layers: Sequence[dict], amount: float = VIEWER_AMOUNT) -> str:
    """The viewer's HTML: a stage with one image per layer (moved by assets/parallax.js) and the layer names.

    Args:
        layers: back to front, as viewer_layers returns them.
        amount: how far the nearest layer moves, as a fraction of the width.

    Returns:
        HTML (a .lc-stage and a .lc-names line); empty for no layers.
    """
    if not layers:
        return ""
    near = [layer["nearness"] for layer in layers]
    lo, hi = min(near), max(near)
    width, height = layers[0]["width"], layers[0]["height"]
    planes = []
    for i, layer in enumerate(layers):
        # Nearer layers move more; the spread is normalised so a flat scene still shows depth.
        depth = 0.15 + 0.85 * ((layer["nearness"] - lo) / (hi - lo) if hi > lo else i / max(len(layers) - 1, 1))
        name = html.escape(layer["name"])
        depth_map = f' data-depth-map="{layer["depth_uri"]}"' if layer.get("depth_uri") else ""
        planes.append(f'<img class="lc-plane" src="{layer["uri"]}" data-name="{name}" data-depth="{depth:.3f}" '
                      f'data-nearness="{layer["nearness"]:.6f}"{depth_map} alt="{name} layer" draggable="false">')
    names = " · ".join(f'<span class="lc-name">{html.escape(layer["name"])}</span>' for layer in layers)
    return (f'<div class="lc-stage" data-amount="{amount}" role="img" '
            f'aria-label="Interactive parallax preview: move the pointer over it" '
            f'style="aspect-ratio: {width} / {height}; --lc-ratio: {width / height:.5f};">'
            + "".join(planes)
            + '<div class="lc-hint">move the pointer or drag a finger across the scene</div></div>'
            + f'<div class="lc-names">Layers, back to front: {names}</div>')


_PAGE_CSS = """
body { margin: 0; background: #15131a; }
.lc-viewer { margin: 0 auto; padding: 8px; box-sizing: border-box; background: #15131a; color: #eee;
  font: 15px/1.4 system-ui, sans-serif; }
.lc-viewer .lc-stage { position: relative; overflow: hidden; margin: 0 auto; border-radius: 10px;
  width: min(100%, calc((100vh - 56px) * var(--lc-ratio, 0.6667))); background: #000;
  touch-action: none; user-select: none; -webkit-user-select: none; cursor: crosshair; }
.lc-viewer .lc-plane { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: cover;
  transform: scale(1.01); transform-origin: 50% 50%; will-change: transform; pointer-events: none; }
.lc-viewer .lc-hint { position: absolute; left: 50%; bottom: 10px; transform: translateX(-50%);
  padding: 4px 12px; border-radius: 999px; font-size: 0.8rem; white-space: nowrap;
  background: rgba(0, 0, 0, 0.55); color: #fff; pointer-events: none; transition: opacity 0.4s; }
.lc-viewer .lc-stage.lc-active .lc-hint { opacity: 0; }
.lc-viewer .lc-names { text-align: center; font-size: 0.85rem; opacity: 0.8; margin-top: 6px; }
@media (prefers-reduced-motion: reduce) { .lc-viewer .lc-hint { display: none; } }
"""


def export_html(stack: LayerStack, path: PathLike, *, title: str = "Layercake parallax",
                amount: float = VIEWER_AMOUNT) -> Path:
    """Write parallax.html: the interactive viewer with every image, style and script inside the one file.

    Args:
        stack: layers back to front.
        path: an ``.html`` file (written atomically).
        title: the page title.
        amount: how far the nearest layer moves, as a fraction of the width (0..0.5).

    Returns:
        The path written.
    """
    stack = _check_stack(stack)
    path = _check_suffix(path, ".html")
    if not 0.0 <= amount <= 0.5:
        raise ValueError(f"amount must be 0..0.5, got {amount}")
    script = VIEWER_SCRIPT.read_text(encoding="utf-8")
    if "</script" in script.lower():
        raise ValueError(f"{VIEWER_SCRIPT} contains '</script', which would end the inline script early")
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_PAGE_CSS}</style>\n</head>\n<body>\n"
        f'<div class="lc-viewer">{viewer_markup(viewer_layers(stack), amount)}</div>\n'
        # The shared viewer code expects its root as `element`, as gr.HTML's js_on_load provides it: the element
        # just before the script, so the viewer can be pasted into a page more than once.
        f'<script>\n(function (element) {{\n"use strict";\n{script}\n}})'
        "(document.currentScript.previousElementSibling);\n</script>\n</body>\n</html>\n")
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
