"""render_view: a camera move of known size, each pixel displaced by its own layer's depth."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from layers.decompose import decompose
from layers.parallax import render_parallax_frames, render_view
from layers.stack import LayerStack, StackLayer


def _textured(h=60, w=90, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) * 180 + 50).astype(np.uint8)


def test_no_move_gives_the_composite_back():
    img = _textured()
    depth = np.tile(np.linspace(0, 1, 90, dtype=np.float32), (60, 1))
    result = decompose(Image.fromarray(img), depth)
    view = render_view(result.stack, shift=(0.0, 0.0))
    assert np.abs(view.astype(int) - np.asarray(result.stack.composite(), int)).max() <= 1


def test_affine_shift_moves_each_pixel_by_its_nearness():
    img = _textured(40, 80)
    depth = np.zeros((40, 80), np.float32)
    stack = LayerStack([StackLayer("background", Image.fromarray(img).convert("RGBA"), depth, 0.0)])
    # nearness 0 everywhere: the offset alone, 5 px to the right (the left edge repeats, no border).
    view = render_view(stack, shift=(10.0, 5.0))
    assert np.array_equal(view[:, 5:], img[:, :-5])
    assert np.array_equal(view[:, :5], np.repeat(img[:, :1], 5, axis=1))
    # nearness 1 on the right half: that half moves 10 + 5 px, the left half 5 px (the right half folds over).
    near = np.zeros((40, 80), np.float32)
    near[:, 40:] = 1.0
    stack = LayerStack([StackLayer("background", Image.fromarray(img).convert("RGBA"), near, 0.5)])
    view = render_view(stack, shift=(10.0, 5.0))
    assert np.array_equal(view[:, 55:], img[:, 40:65])
    assert np.array_equal(view[:, 5:45], img[:, :40])
    down = render_view(stack, shift=(0.0, 0.0), vertical=(0.0, 3.0))
    assert np.array_equal(down[3:], img[:-3])


def test_a_nearer_layer_uncovers_the_filled_layer_behind_without_holes():
    img = _textured(80, 120).astype(np.int32)
    img[..., 0] = np.minimum(img[..., 0], img[..., 1])  # a wall with no red in it: any red in its fill is the box's
    img[20:60, 40:80] = (250, 20, 20)  # a red box in front
    depth = np.full((80, 120), 0.1, np.float32)
    depth[20:60, 40:80] = 0.9
    result = decompose(Image.fromarray(img.astype(np.uint8)), depth, layers=2)
    view = render_view(result.stack, shift=(20.0, 0.0))
    # The box moved 18 px right; where it was, the wall's fill shows: no red, no black.
    uncovered = view[25:55, 42:56].astype(int)
    assert (uncovered[..., 0] - uncovered[..., 1:].max(-1) < 60).all()
    assert view.max(-1).min() >= 40  # no black hole anywhere
    assert (view[25:55, 62:95, 0] > 200).all()  # the box itself, moved


def test_per_pixel_parallax_frames_have_no_holes_or_borders():
    img = _textured(64, 96)
    depth = np.tile(np.linspace(0, 1, 96, dtype=np.float32), (64, 1))
    result = decompose(Image.fromarray(img), depth)
    for path in ("sway", "circle", "zoom"):
        frames = render_parallax_frames(result.stack, path, frames=8, amount=0.08, displacement=1.0)
        assert frames.min() >= 40, path  # the picture's darkest value is 50: nothing black came in


@pytest.mark.parametrize("kwargs, message", [
    (dict(shift=(1.0,)), "shift"), (dict(shift=(np.nan, 0)), "finite"),
    (dict(shift=(1, 0), iterations=0), "iterations"),
])
def test_bad_view_arguments(kwargs, message):
    stack = LayerStack([StackLayer("background", Image.new("RGBA", (8, 8)), np.zeros((8, 8), np.float32), 0.0)])
    with pytest.raises(ValueError, match=message):
        render_view(stack, **kwargs)
