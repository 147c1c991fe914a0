"""The draft backend: procedural layer paintings from prompts, depth maps and priors."""
from __future__ import annotations

import colorsys
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from layers.backends import get_backend
from layers.backends.base import RenderRequest, RenderSettings
from layers.backends.draft import DraftBackend, colour_words, light_vector
from layers.depth import build_depth_maps
from layers.plan import LAYER_NAMES, LayerPlan, ScenePlan

W, H = 256, 384


def make_plan(seed: int = 1, figures: int = 2, width: int = W, height: int = H) -> ScenePlan:
    layers = tuple(LayerPlan(name, f"{name} prompt", "blurry", seed * 3 + i) for i, name in enumerate(LAYER_NAMES))
    return ScenePlan(prompt="a hall", seed=seed, width=width, height=height, aspect="2:3", style="", figures=figures,
                     layers=layers)


PROMPTS = {
    "background": "a vast velvet-lined hall, tiered balconies, midnight blue arches, warm gold light",
    "midground": "two figures in carmine and gold robes",
    "foreground": "velvet folds, brass gears, glass shards, dust",
}


@pytest.fixture(scope="module")
def depths():
    return build_depth_maps(make_plan())


def requests_for(depths, seed: int = 7, prompts=PROMPTS) -> list[RenderRequest]:
    return [RenderRequest(name, prompts[name], "", depths[name].control, depths[name].prior, seed + i)
            for i, name in enumerate(LAYER_NAMES)]


def rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float32) / 255.0


def hue_degrees(pixels: np.ndarray) -> np.ndarray:
    return np.array([colorsys.rgb_to_hsv(*p)[0] * 360 for p in pixels])


@pytest.fixture(scope="module")
def result(depths):
    return DraftBackend().render(requests_for(depths), RenderSettings(width=W, height=H, light_direction="left"))


def test_one_rgb_image_per_layer_at_the_asked_size(result):
    assert len(result.images) == 3
    for img in result.images:
        assert img.mode == "RGB" and img.size == (W, H)
    assert result.info["backend"] == "draft"
    assert result.info["batching"] == "batched"
    assert set(result.info["palette"]) == set(LAYER_NAMES)


def test_registry_builds_the_draft_backend():
    backend = get_backend("draft")
    assert isinstance(backend, DraftBackend) and backend.name == "draft"


def test_same_seed_same_pixels_other_seed_other_pixels(depths, result):
    settings = RenderSettings(width=W, height=H, light_direction="left")
    again = DraftBackend().render(requests_for(depths), settings)
    for a, b in zip(result.images, again.images):
        assert a.tobytes() == b.tobytes()
    other = DraftBackend().render(requests_for(depths, seed=1234), settings)
    for name, a, b in zip(LAYER_NAMES, result.images, other.images):
        assert np.abs(rgb(a) - rgb(b)).mean() > 0.001, name


def test_background_is_an_opaque_painting_with_atmospheric_depth(depths, result):
    img = rgb(result.images[0])
    lum = img.mean(axis=2)
    # Complete and structured: no flat backdrop, plenty of tonal range and detail.
    assert lum.std() > 0.08
    assert np.abs(np.diff(lum, axis=1)).mean() > 0.005
    near = depths["background"].control
    far_px = near <= np.quantile(near, 0.05)
    near_px = near >= np.quantile(near, 0.95)
    # Far = hazy and light (the lit portal, the haze); near = darker floor.
    assert lum[far_px].mean() > lum[near_px].mean() + 0.1


def test_midground_is_figures_on_a_flat_backdrop(depths, result):
    img = rgb(result.images[1])
    prior = depths["midground"].prior
    outside = img[prior == 0]
    assert outside.size > 0
    # One exact colour outside the figures, neutral grey.
    assert (outside == outside[0]).all()
    assert np.ptp(outside[0]) < 0.02
    inside = img[prior > 0.9]
    sat = np.array([colorsys.rgb_to_hsv(*p)[1] for p in inside[::7]])
    assert sat.mean() > 0.3
    assert np.abs(inside - outside[0]).sum(axis=1).mean() > 0.3
    # Shaded volumes, not flat cut-outs.
    assert inside.mean(axis=1).std() > 0.08


def test_foreground_is_debris_on_a_flat_backdrop(depths, result):
    img = rgb(result.images[2])
    prior = depths["foreground"].prior
    outside = img[prior == 0]
    assert (outside == outside[0]).all()
    inside = img[prior > 0.9]
    assert np.abs(inside - outside[0]).sum(axis=1).mean() > 0.25
    assert inside.mean(axis=1).std() > 0.08


@pytest.mark.parametrize("word, lo, hi", [("gold", 30, 60), ("teal", 160, 200), ("velvet blue", 215, 250)])
def test_palette_words_dress_the_figures(depths, word, lo, hi):
    req = RenderRequest("midground", f"a figure in {word}", "", depths["midground"].control,
                        depths["midground"].prior, 3)
    img = DraftBackend().render([req], RenderSettings(width=W, height=H)).images[0]
    pixels = rgb(img)[depths["midground"].prior > 0.9][::5]
    hues = hue_degrees(pixels)
    assert lo <= np.median(hues) <= hi


def test_settings_palette_is_used_when_the_prompt_has_no_colour(depths):
    def median_hue(palette):
        req = RenderRequest("midground", "a figure", "", depths["midground"].control, depths["midground"].prior, 3)
        img = DraftBackend().render([req], RenderSettings(width=W, height=H, palette=palette)).images[0]
        return np.median(hue_degrees(rgb(img)[depths["midground"].prior > 0.9][::5]))

    assert 160 <= median_hue(("teal",)) <= 200
    assert median_hue(("emerald",)) != median_hue(("crimson",))


def test_light_direction_sets_the_lit_side_of_the_figures(depths):
    prior = depths["midground"].prior
    labels, count = ndimage.label(prior > 0.5)
    centres = np.array([0.0] + [c[1] for c in ndimage.center_of_mass(prior, labels, range(1, count + 1))])
    xs = np.broadcast_to(np.arange(W)[None, :], (H, W))
    left_half = (labels > 0) & (xs < centres[labels])
    right_half = (labels > 0) & (xs > centres[labels])

    def lit_side(direction):
        req = RenderRequest("midground", "figures in ivory", "", depths["midground"].control, prior, 3)
        lum = rgb(DraftBackend().render([req], RenderSettings(width=W, height=H, light_direction=direction))
                  .images[0]).mean(axis=2)
        return lum[left_half].mean() - lum[right_half].mean()

    assert lit_side("left") > 0.03
    assert lit_side("right") < -0.03


def test_progress_reports_every_layer_to_completion(depths):
    calls = []
    DraftBackend().render(requests_for(depths), RenderSettings(width=W, height=H),
                          progress=lambda name, step, total: calls.append((name, step, total)))
    for name in LAYER_NAMES:
        mine = [c for c in calls if c[0] == name]
        assert mine and any(step == total for _, step, total in mine)
        assert [s for _, s, _ in mine] == sorted(s for _, s, _ in mine)


def test_a_single_layer_can_be_repainted_alone(depths, result):
    req = requests_for(depths)[1]
    alone = DraftBackend().render([req], RenderSettings(width=W, height=H, light_direction="left"))
    assert alone.images[0].tobytes() == result.images[1].tobytes()


def test_whole_stack_at_full_size_is_fast():
    plan = make_plan(figures=3, width=512, height=768)
    d = build_depth_maps(plan)
    reqs = requests_for(d)
    backend = DraftBackend()
    settings = RenderSettings(width=512, height=768)
    backend.render(reqs, settings)
    best = min(_timed(lambda: backend.render(reqs, settings)) for _ in range(3))
    # The target is well under 0.5 s on two cores; the bound leaves room for a busy test machine.
    assert best < 1.5


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_bad_requests_are_refused(depths):
    good = requests_for(depths)
    settings = RenderSettings(width=W, height=H)
    with pytest.raises(ValueError, match="no layer"):
        DraftBackend().render([], settings)
    with pytest.raises(ValueError, match="expected"):
        DraftBackend().render(good, RenderSettings(width=W + 64, height=H))
    odd = RenderRequest("sky", "x", "", depths["background"].control, depths["background"].prior, 1)
    with pytest.raises(ValueError, match="unknown layer 'sky'"):
        DraftBackend().render([odd], settings)
    with pytest.raises(ValueError, match="light direction"):
        DraftBackend().render(good, RenderSettings(width=W, height=H, light_direction="sideways"))
    broken = RenderRequest("midground", "x", "", depths["midground"].control * 3, depths["midground"].prior, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DraftBackend().render([broken], settings)


def test_colour_words_are_read_from_prompts():
    text = "Bold sunrise-gold rim light, hot-carmine drapes, VELVET BLUE arches, golden dust, reddish haze, black ink"
    assert colour_words(text) == ["sunrise-gold", "carmine", "velvet blue", "gold", "black ink"]
    assert colour_words("no colours here") == []


def test_light_words():
    assert light_vector("left")[0] < -0.5
    assert light_vector("right")[0] > 0.5
    assert light_vector("top")[1] < -0.5
    assert light_vector("back")[2] < 0
    assert light_vector("top-left")[0] < 0 and light_vector("top-left")[1] < 0
    with pytest.raises(ValueError, match="light direction"):
        light_vector("")


def test_every_palette_name_the_planner_emits_is_a_colour_the_draft_paints():
    from layers.plan import _COLOR_ALIASES

    for name in sorted(set(_COLOR_ALIASES.values())):
        assert colour_words(name), name
