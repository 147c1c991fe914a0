"""Test fixtures built in code: figure priors, renders on a plain backdrop, a 3-layer stack, tiny ONNX matting models.

Each layer of ``make_test_stack`` has a colour no other layer uses, so a test can find a layer's pixels in a
composite or a parallax frame by colour:
background = warm-to-cool gradient with a dark red pillar at the centre, midground = green figure,
foreground = blue debris at the frame edges.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from layers.stack import LayerStack, StackLayer, with_alpha

FIGURE_RGB = (40, 200, 60)
DEBRIS_RGB = (30, 60, 220)
PILLAR_RGB = (150, 30, 30)
BACKDROP_RGB = (235, 235, 235)
NEARNESS = (0.2, 0.5, 0.85)


def figure_prior(width: int, height: int, cx: float = 0.5, blur: float = 2.0) -> np.ndarray:
    """A standing figure (head + body ellipses) centred at cx * width, soft-edged, float32 in [0, 1]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    head = ((x - cx * width) / (0.07 * width)) ** 2 + ((y - 0.3 * height) / (0.05 * height)) ** 2 < 1
    body = ((x - cx * width) / (0.15 * width)) ** 2 + ((y - 0.62 * height) / (0.25 * height)) ** 2 < 1
    return ndimage.gaussian_filter((head | body).astype(np.float32), blur)


def debris_prior(width: int, height: int, blur: float = 1.5) -> np.ndarray:
    """Debris crowding the left, right and bottom edges, soft-edged, float32 in [0, 1]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    blobs = [(0.0, 0.45, 0.12, 0.10), (1.0, 0.7, 0.14, 0.08), (0.25, 1.0, 0.12, 0.05), (0.85, 0.98, 0.10, 0.06)]
    mask = np.zeros((height, width), bool)
    for bx, by, rx, ry in blobs:
        mask |= ((x - bx * width) / (rx * width)) ** 2 + ((y - by * height) / (ry * height)) ** 2 < 1
    return ndimage.gaussian_filter(mask.astype(np.float32), blur)


def render_on_backdrop(prior: np.ndarray, colour=FIGURE_RGB, backdrop=BACKDROP_RGB, texture: bool = True):
    """Content painted where the prior is high on a flat backdrop, with anti-aliased edges.

    Returns:
        (PIL RGB image, true coverage float32 (H, W)): the coverage is the alpha a perfect matte finds.
    """
    h, w = prior.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    fg = np.empty((h, w, 3), np.float32)
    fg[:] = colour
    if texture:
        fg += (12.0 * np.sin(x / 5.0) * np.cos(y / 7.0))[..., None]
    coverage = np.clip((prior - 0.3) / 0.4, 0.0, 1.0).astype(np.float32)
    img = fg * coverage[..., None] + np.asarray(backdrop, np.float32) * (1.0 - coverage[..., None])
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB"), coverage


def gradient_background(width: int, height: int) -> Image.Image:
    """Opaque warm-to-cool gradient with a dark red pillar down the centre (never black)."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = np.array([215, 180, 120], np.float32), np.array([100, 130, 170], np.float32)
    img = np.broadcast_to(top * (1 - t) + bottom * t, (height, width, 3)).copy()
    half = max(1, width // 64)
    img[:, width // 2 - half: width // 2 + half] = PILLAR_RGB
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB").convert("RGBA")


def make_test_stack(width: int = 96, height: int = 144, names=("background", "midground", "foreground"),
                    nearness=NEARNESS) -> LayerStack:
    """A synthetic 3-layer stack: opaque gradient background, a figure with soft alpha, debris at the edges."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    figure = figure_prior(width, height)
    debris = debris_prior(width, height)
    fig_rgb = Image.new("RGB", (width, height), FIGURE_RGB)
    deb_rgb = Image.new("RGB", (width, height), DEBRIS_RGB)
    fig_alpha = np.clip((figure - 0.3) / 0.4, 0, 1)
    deb_alpha = np.clip((debris - 0.3) / 0.4, 0, 1)
    depths = [
        np.broadcast_to(0.05 + 0.3 * y, (height, width)).astype(np.float32),
        (0.35 + 0.3 * figure).astype(np.float32),
        (0.7 + 0.25 * debris).astype(np.float32),
    ]
    images = [gradient_background(width, height), with_alpha(fig_rgb, fig_alpha), with_alpha(deb_rgb, deb_alpha)]
    return LayerStack([StackLayer(name, image, depth, float(n))
                       for name, image, depth, n in zip(names, images, depths, nearness)])


def colour_mask(rgb: np.ndarray, colour, tol: float = 40.0) -> np.ndarray:
    """Pixels of an (H, W, 3) uint8 image within `tol` (max channel difference) of `colour`."""
    return (np.abs(rgb.astype(np.int16) - np.asarray(colour, np.int16)).max(axis=-1) <= tol)


def build_tiny_u2net(path: os.PathLike) -> Path:
    """A tiny ONNX model with U^2-Net I/O (1x3x320x320 -> 1x1x320x320): Conv 3->1 (3x3) + Sigmoid.

    Weights make the mask follow brightness: bright pixels -> foreground.
    """
    from onnx import helper

    rng = np.random.RandomState(0)
    w = np.ones((1, 3, 3, 3), np.float32) / 9.0 + rng.randn(1, 3, 3, 3).astype(np.float32) * 0.01
    nodes = [
        helper.make_node("Conv", ["input.1", "W", "B"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["mask"]),
    ]
    return _save_u2net(path, nodes, {"W": w, "B": np.zeros((1,), np.float32)})


def build_tiny_isnet(path: os.PathLike) -> Path:
    """A tiny ONNX model with IS-Net I/O (1x3x1024x1024 -> 1x1x1024x1024, what rembg's isnet models take):
    the same brightness-following Conv 3->1 (3x3) + Sigmoid as ``build_tiny_u2net``."""
    from onnx import helper

    rng = np.random.RandomState(0)
    w = np.ones((1, 3, 3, 3), np.float32) / 9.0 + rng.randn(1, 3, 3, 3).astype(np.float32) * 0.01
    nodes = [
        helper.make_node("Conv", ["input_image", "W", "B"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["mask"]),
    ]
    return _save_u2net(path, nodes, {"W": w, "B": np.zeros((1,), np.float32)}, side=1024, input_name="input_image")


def build_blob_u2net(path: os.PathLike, centre=(0.5, 0.45), radius=(0.16, 0.3)) -> Path:
    """A tiny ONNX model with U^2-Net I/O whose mask is one soft elliptical blob, whatever the image.

    It stands in for a salient-object segmenter: it keeps one central subject and drops everything scattered
    around it. ``centre`` and ``radius`` are (x, y) fractions of the frame.
    """
    from onnx import helper

    v, u = np.mgrid[0:320, 0:320].astype(np.float32) / 320.0
    r = np.sqrt(((u - centre[0]) / radius[0]) ** 2 + ((v - centre[1]) / radius[1]) ** 2)
    blob = np.clip((1.0 - r) * 20.0, 0.0, 1.0).astype(np.float32)[None, None]
    nodes = [
        # The image only passes through zero weights: the graph reads its input, as a real model's does.
        helper.make_node("Conv", ["input.1", "W", "B"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["c", "BLOB"], ["mask"]),
    ]
    return _save_u2net(path, nodes, {"W": np.zeros((1, 3, 1, 1), np.float32), "B": np.zeros((1,), np.float32),
                                     "BLOB": blob})


def _save_u2net(path: os.PathLike, nodes, weights: dict, side: int = 320, input_name: str = "input.1") -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, side, side])
    out = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, side, side])
    graph = helper.make_graph(nodes, "tiny_u2net", [inp], [out],
                              initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
