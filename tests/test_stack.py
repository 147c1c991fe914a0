"""LayerStack: ordering, checks, and premultiplied "over" compositing."""
import numpy as np
import pytest
from PIL import Image

from helpers import DEBRIS_RGB, FIGURE_RGB, colour_mask, figure_prior, make_test_stack
from layers.stack import LayerStack, StackLayer, composite_arrays, premultiply, with_alpha


def solid(colour, alpha=255, size=(8, 6)):
    return Image.new("RGBA", size, tuple(colour) + (alpha,))


def flat_depth(value, size=(8, 6)):
    return np.full((size[1], size[0]), value, np.float32)


def test_half_transparent_red_over_blue_gives_the_expected_purple():
    stack = LayerStack([
        StackLayer("background", solid((0, 0, 255)), flat_depth(0.1), 0.1),
        StackLayer("midground", solid((255, 0, 0), alpha=128), flat_depth(0.5), 0.5),
    ])
    out = np.asarray(stack.composite())
    a = 128 / 255
    expected = np.array([255 * a, 0, 255 * (1 - a)])
    assert stack.composite().mode == "RGB"
    assert np.abs(out.astype(float) - expected).max() <= 0.51


def test_three_layers_stack_in_order_back_to_front():
    stack = LayerStack([
        StackLayer("background", solid((10, 20, 30)), flat_depth(0.1), 0.1),
        StackLayer("midground", solid((200, 0, 0), alpha=255), flat_depth(0.5), 0.5),
        StackLayer("foreground", solid((0, 200, 0), alpha=64), flat_depth(0.9), 0.9),
    ])
    out = np.asarray(stack.composite()).astype(float)
    a = 64 / 255
    # The foreground sits over the opaque red midground, not over the background.
    assert np.allclose(out[0, 0], [200 * (1 - a), 200 * a, 0], atol=0.51)


def test_opaque_background_shows_unchanged_where_the_upper_layers_are_clear():
    stack = make_test_stack(96, 144)
    composite = np.asarray(stack.composite())
    background = np.asarray(stack["background"].rgba.convert("RGB"))
    clear = (stack["midground"].alpha == 0) & (stack["foreground"].alpha == 0)
    assert clear.mean() > 0.3
    assert np.array_equal(composite[clear], background[clear])
    # ...and the figure and the debris are where their layers put them.
    assert colour_mask(composite, FIGURE_RGB, 10)[stack["midground"].alpha == 1].all()
    assert colour_mask(composite, DEBRIS_RGB, 10)[stack["foreground"].alpha == 1].all()


def test_premultiply_and_composite_arrays_match_the_over_formula():
    rng = np.random.default_rng(0)
    top = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    bottom = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    pm = premultiply(Image.fromarray(top, "RGBA"))
    a = top[..., 3:4] / 255.0
    assert np.allclose(pm[..., :3], top[..., :3] / 255.0 * a, atol=1e-6)
    base = premultiply(Image.fromarray(bottom, "RGB").convert("RGBA"))
    out = composite_arrays([base, pm]).astype(float)
    expected = top[..., :3] * a + bottom * (1 - a)
    assert np.abs(out - expected).max() <= 0.51


def test_with_alpha_keeps_colour_and_stores_alpha():
    rgb = Image.new("RGB", (4, 3), (12, 34, 56))
    alpha = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    rgba = with_alpha(rgb, alpha)
    assert rgba.mode == "RGBA"
    assert np.asarray(rgba)[..., :3].tolist() == np.asarray(rgb).tolist()
    assert np.abs(np.asarray(rgba)[..., 3] / 255.0 - alpha).max() <= 0.5 / 255 + 1e-6


def test_stack_lookup_names_and_replace():
    stack = make_test_stack(32, 48)
    assert stack.names == ("background", "midground", "foreground")
    assert len(stack) == 3 and stack.size == (32, 48)
    new_mid = StackLayer("midground", solid((1, 2, 3), 255, (32, 48)), flat_depth(0.5, (32, 48)), 0.5)
    replaced = stack.replace(new_mid)
    assert replaced["midground"] is new_mid and replaced["background"] is stack["background"]
    with pytest.raises(KeyError):
        stack["sky"]
    with pytest.raises(ValueError, match="sky"):
        stack.replace(StackLayer("sky", new_mid.rgba, new_mid.depth, 0.5))


@pytest.mark.parametrize("problem", ["empty", "mode", "size", "depth", "duplicate"])
def test_bad_stacks_are_refused_with_a_clear_message(problem):
    good = StackLayer("background", solid((0, 0, 0)), flat_depth(0.1), 0.1)
    bad = {
        "empty": [],
        "mode": [good, StackLayer("midground", solid((0, 0, 0)).convert("RGB"), flat_depth(0.5), 0.5)],
        "size": [good, StackLayer("midground", solid((0, 0, 0), size=(9, 6)), flat_depth(0.5, (9, 6)), 0.5)],
        "depth": [good, StackLayer("midground", solid((0, 0, 0)), flat_depth(0.5, (6, 8)), 0.5)],
        "duplicate": [good, good],
    }[problem]
    with pytest.raises(ValueError):
        LayerStack(bad)


def test_make_test_stack_figure_is_where_its_prior_is():
    stack = make_test_stack(64, 96)
    alpha = stack["midground"].alpha
    prior = figure_prior(64, 96)
    assert alpha[prior > 0.9].min() == 1.0
    assert alpha[prior < 0.1].max() == 0.0
    assert stack["background"].alpha.min() == 1.0
