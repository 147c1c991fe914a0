"""Depth-conditioning maps: the procedural scaffold, splitting a given map into bands, reading depth-map files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from layers.depth import DepthSettings, LayerDepth, build_depth_maps, load_depth_map, split_depth_map
from layers.plan import LAYER_NAMES, LayerPlan, ScenePlan


def make_plan(seed: int = 1, figures: int = 2, width: int = 256, height: int = 384) -> ScenePlan:
    layers = tuple(LayerPlan(name, f"{name} prompt", "blurry", seed * 3 + i) for i, name in enumerate(LAYER_NAMES))
    return ScenePlan(prompt="a hall with figures and debris", seed=seed, width=width, height=height, aspect="2:3",
                     style="", figures=figures, layers=layers)


@pytest.fixture(scope="module")
def maps() -> dict[str, LayerDepth]:
    return build_depth_maps(make_plan())


# ---------------------------------------------------------------------------------------------------- scaffold


def test_three_layers_back_to_front_with_valid_maps(maps):
    assert list(maps) == list(LAYER_NAMES)
    for name, layer in maps.items():
        assert layer.name == name
        for arr in (layer.control, layer.prior):
            assert arr.dtype == np.float32
            assert arr.shape == (384, 256)
            assert np.isfinite(arr).all()
            assert 0.0 <= arr.min() and arr.max() <= 1.0
        assert 0.0 <= layer.nearness <= 1.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 17])
def test_layers_are_ordered_far_to_near(seed):
    d = build_depth_maps(make_plan(seed=seed))
    bg, mid, fg = (d[name].nearness for name in LAYER_NAMES)
    assert bg < mid < fg
    # The bands the renderer and the parallax rely on.
    assert bg < 0.25 and 0.42 <= mid <= 0.68 and fg >= 0.75
    assert d["background"].control.max() <= 0.45
    # Within the frame, each layer's content sits in front of the layer behind it.
    inside_mid = d["midground"].prior > 0.9
    assert (d["midground"].control[inside_mid] > d["background"].control[inside_mid]).all()


def test_background_is_complete_room_in_perspective(maps):
    bg = maps["background"]
    assert (bg.prior == 1.0).all()
    near = bg.control
    # Far wall / sky: the farthest values are small; the floor at the bottom of the frame is the nearest part.
    assert 0.04 <= near.min() <= 0.16
    bottom = near[-10:].mean()
    assert bottom > 0.3
    assert bottom > np.median(near) + 0.1
    # Nearness grows toward the bottom along the floor: monotonic down the middle column below the horizon.
    column = near[near.shape[0] * 2 // 3:, near.shape[1] // 2]
    assert (np.diff(column) >= -1e-4).all()
    # The farthest point (vanishing point) lies inside the frame, not at its border.
    vy, vx = np.unravel_index(np.argmin(ndimage.uniform_filter(near, 9)), near.shape)
    assert 0.2 * near.shape[0] < vy < 0.8 * near.shape[0]
    assert 0.2 * near.shape[1] < vx < 0.8 * near.shape[1]


@pytest.mark.parametrize("figures", [0, 1, 2, 3, 5])
def test_midground_holds_one_silhouette_per_figure(figures):
    d = build_depth_maps(make_plan(figures=figures))
    prior = d["midground"].prior
    labels, count = ndimage.label(prior > 0.5)
    assert count == figures
    for box in ndimage.find_objects(labels):
        height = box[0].stop - box[0].start
        # Standing figures: taller than wide, feet in the lower part of the frame, head below the top edge.
        assert height > (box[1].stop - box[1].start)
        assert box[0].stop > 0.8 * prior.shape[0]
        assert box[0].start > 0
    # Nothing but the figures: the control map is zero away from them.
    assert (d["midground"].control[prior == 0] == 0).all()


def test_three_figures_spread_across_a_full_size_frame():
    d = build_depth_maps(make_plan(seed=2, figures=3, width=512, height=768))
    labels, count = ndimage.label(d["midground"].prior > 0.5)
    assert count == 3
    centres = sorted(c[1] for c in ndimage.center_of_mass(d["midground"].prior, labels, [1, 2, 3]))
    assert centres[0] < 512 / 3 < centres[1] < 2 * 512 / 3 < centres[2]


def test_foreground_crowds_the_edges_and_leaves_the_centre_open(maps):
    prior = maps["foreground"].prior
    h, w = prior.shape
    centre = prior[int(0.25 * h):int(0.7 * h), int(0.3 * w):int(0.7 * w)].mean()
    ring = np.ones_like(prior, bool)
    ring[int(0.12 * h):int(0.88 * h), int(0.12 * w):int(0.88 * w)] = False
    border = prior[ring].mean()
    assert centre < 0.06
    assert border > 0.25
    assert border > 5 * centre
    # Lower frame near the camera: the bottom rows are mostly covered, and nearer than the top of the frame.
    assert prior[-int(0.05 * h):].mean() > 0.6
    fg = maps["foreground"]
    inside = fg.prior > 0.9
    rows = np.nonzero(inside)[0]
    assert fg.control[inside][rows > 0.8 * h].mean() > fg.control[inside][rows < 0.3 * h].mean()


def test_same_seed_same_maps_other_seed_other_maps():
    a, b, c = build_depth_maps(make_plan(seed=5)), build_depth_maps(make_plan(seed=5)), build_depth_maps(make_plan(seed=6))
    for name in LAYER_NAMES:
        assert np.array_equal(a[name].control, b[name].control)
        assert np.array_equal(a[name].prior, b[name].prior)
    assert np.abs(a["background"].control - c["background"].control).mean() > 0.003
    assert np.abs(a["midground"].prior - c["midground"].prior).mean() > 0.01
    assert np.abs(a["foreground"].prior - c["foreground"].prior).mean() > 0.05


def test_figure_count_does_not_move_the_room_or_the_debris():
    two, three = build_depth_maps(make_plan(figures=2)), build_depth_maps(make_plan(figures=3))
    assert np.array_equal(two["background"].control, three["background"].control)
    assert np.array_equal(two["foreground"].control, three["foreground"].control)


@pytest.mark.parametrize("seed", [1, 4])
def test_surfaces_are_smooth_not_noisy(seed):
    """What feeds a depth ControlNet: smooth surfaces (small curvature inside objects), no per-pixel noise."""
    d = build_depth_maps(make_plan(seed=seed))
    noise = np.random.default_rng(0).random((384, 256)) * 0.05
    noise_level = np.median(np.abs(ndimage.laplace(noise)))
    for name in LAYER_NAMES:
        layer = d[name]
        inside = ndimage.binary_erosion(layer.prior > 0.99, iterations=3)
        assert inside.sum() > 500
        lap = np.abs(ndimage.laplace(layer.control.astype(np.float64)))[inside]
        assert np.median(lap) < 0.003, name
        assert np.median(lap) < noise_level / 10, name


def test_small_and_wide_frames_keep_their_figures():
    for width, height, figures in ((64, 64, 2), (896, 512, 4), (512, 512, 12)):
        d = build_depth_maps(make_plan(figures=figures, width=width, height=height))
        assert d["midground"].prior.shape == (height, width)
        assert ndimage.label(d["midground"].prior > 0.5)[1] == figures


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="figure count"):
        build_depth_maps(make_plan(figures=-1))
    with pytest.raises(ValueError, match="figure count"):
        build_depth_maps(make_plan(figures=13))
    with pytest.raises(ValueError, match="width"):
        build_depth_maps(make_plan(width=0))


# ---------------------------------------------------------------------------------------------------- bands


def vertical_ramp(height: int = 200, width: int = 100) -> np.ndarray:
    """Far (0) at the top to near (1) at the bottom."""
    return np.repeat(np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None], width, axis=1)


def test_split_puts_each_band_in_its_layer():
    ramp = vertical_ramp()
    d = split_depth_map(ramp, (0.35, 0.65))
    assert list(d) == list(LAYER_NAMES)
    row_depth = ramp[:, 0]
    bg, mid, fg = d["background"], d["midground"], d["foreground"]
    # The background is complete: the whole map, prior everywhere.
    assert np.array_equal(bg.control, ramp) and (bg.prior == 1).all()
    # Clearly inside a band: prior 1 there, 0 in the other bands (a soft edge of about a pixel at the thresholds).
    mid_rows = (row_depth > 0.37) & (row_depth < 0.63)
    assert (mid.prior[mid_rows] > 0.99).all()
    assert (mid.prior[(row_depth < 0.32) | (row_depth > 0.68)] < 0.01).all()
    assert (fg.prior[row_depth > 0.67] > 0.99).all()
    assert (fg.prior[row_depth < 0.62] < 0.01).all()
    # Controls keep the map's values inside the band and are 0 (far) outside it.
    assert np.allclose(mid.control[mid_rows], ramp[mid_rows], atol=1e-4)
    assert (mid.control[row_depth < 0.3] == 0).all()
    assert (fg.control[row_depth < 0.6] == 0).all()
    assert bg.nearness < mid.nearness < fg.nearness
    assert 0.35 <= mid.nearness <= 0.65 and fg.nearness >= 0.65 and bg.nearness < 0.35


def test_split_respects_other_thresholds():
    ramp = vertical_ramp()
    row_depth = ramp[:, 0]
    d = split_depth_map(ramp, (0.2, 0.8))
    assert (d["midground"].prior[(row_depth > 0.23) & (row_depth < 0.77)] > 0.99).all()
    assert (d["foreground"].prior[row_depth < 0.75] < 0.01).all()
    assert (d["foreground"].prior[row_depth > 0.83] > 0.99).all()


@pytest.mark.parametrize("thresholds", [(0.7, 0.3), (0.5, 0.5), (0.0, 0.5), (0.4, 1.0), (-0.1, 0.5), (0.3,),
                                        ("a", 0.6), (float("nan"), 0.6)])
def test_bad_thresholds_are_refused(thresholds):
    with pytest.raises(ValueError, match="threshold"):
        split_depth_map(vertical_ramp(), thresholds)
    with pytest.raises(ValueError, match="threshold"):
        DepthSettings(thresholds=thresholds)


def test_given_map_is_resized_and_split_with_the_settings():
    plan = make_plan(width=128, height=192)
    d = build_depth_maps(plan, depth_map=vertical_ramp(50, 40), settings=DepthSettings(thresholds=(0.3, 0.7), source="map"))
    for layer in d.values():
        assert layer.control.shape == (192, 128) and layer.prior.shape == (192, 128)
    top_to_bottom = d["background"].control[:, 64]
    assert top_to_bottom[0] < 0.05 and top_to_bottom[-1] > 0.95
    assert (d["foreground"].prior[-10:] > 0.99).all() and (d["foreground"].prior[:60] == 0).all()
    # A constant map is fine: all of it falls in one band.
    flat = build_depth_maps(plan, depth_map=np.full((10, 10), 0.5, np.float32))
    assert (flat["midground"].prior > 0.99).all() and (flat["foreground"].prior == 0).all()


def test_bad_depth_maps_and_sources_are_refused():
    plan = make_plan()
    with pytest.raises(ValueError, match="2-D"):
        build_depth_maps(plan, depth_map=np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        build_depth_maps(plan, depth_map=np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_depth_maps(plan, depth_map=np.full((4, 4), 255.0))
    with pytest.raises(ValueError, match="needs a depth map"):
        build_depth_maps(plan, settings=DepthSettings(source="map"))
    with pytest.raises(ValueError, match="depth source"):
        DepthSettings(source="guess")


# ---------------------------------------------------------------------------------------------------- files


def test_load_8bit_grey_and_rgb_maps(tmp_path):
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :], 20, axis=0)
    Image.fromarray(ramp, "L").save(tmp_path / "grey.png")
    Image.fromarray(np.stack([ramp] * 3, -1), "RGB").save(tmp_path / "rgb.png")
    for name in ("grey.png", "rgb.png"):
        d = load_depth_map(tmp_path / name)
        assert d.dtype == np.float32 and d.shape == (20, 256)
        assert d.min() == 0.0 and d.max() == 1.0
        assert np.allclose(d[0], np.arange(256) / 255.0, atol=1e-6)
    # Resized on load to the size asked for (PIL order: width, height).
    d = load_depth_map(tmp_path / "grey.png", size=(64, 48))
    assert d.shape == (48, 64)
    assert (np.diff(d[10]) >= 0).all()


def test_load_16bit_map_keeps_its_precision(tmp_path):
    # A shallow 16-bit ramp: 1000 distinct levels that 8 bits would collapse to 4.
    values = np.linspace(30000, 31000, 1000).astype(np.uint16)
    img = Image.fromarray(np.repeat(values[None, :], 8, axis=0))
    assert img.mode.startswith("I;16")
    img.save(tmp_path / "d16.png")
    d = load_depth_map(tmp_path / "d16.png")
    assert d.shape == (8, 1000)
    assert len(np.unique(d[0])) > 900
    assert d.min() == 0.0 and d.max() == 1.0
    # 32-bit integer images (what older Pillow versions open 16-bit PNGs as) are read the same way.
    as_int = Image.fromarray(np.repeat(values[None, :], 8, axis=0).astype(np.int32), "I")
    assert len(np.unique(load_depth_map(as_int)[0])) > 900


def test_load_constant_map_and_image_objects(tmp_path):
    d = load_depth_map(Image.new("L", (30, 20), 128))
    assert d.shape == (20, 30) and np.isfinite(d).all()
    assert np.allclose(d, 128 / 255)


def test_load_refuses_missing_and_broken_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_depth_map(tmp_path / "nope.png")
    (tmp_path / "fake.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="not an image"):
        load_depth_map(tmp_path / "fake.png")
    with pytest.raises(ValueError, match="width"):
        load_depth_map(Image.new("L", (8, 8)), size=(0, 10))


def test_the_background_setting_in_the_prompt_picks_hall_or_open_sky():
    from layers.depth import BACKGROUND_FAR
    from layers.plan import plan_scene

    outdoor = "In the background, a ruined castle on a misty hill under a dawn sky. In the midground, a knight."
    indoor = "In the background, a vaulted cathedral hall with a ribbed ceiling. In the midground, a knight."
    for seed in range(4):
        sky = plan_scene(outdoor, seed, width=128, height=192)
        hall = plan_scene(indoor, seed, width=128, height=192)
        assert (sky.setting, hall.setting) == ("outdoor", "indoor")
        top_sky = build_depth_maps(sky)["background"].control[:10]
        top_hall = build_depth_maps(hall)["background"].control[:10]
        assert np.median(top_sky) < BACKGROUND_FAR + 0.005, "open sky at the top of an outdoor scene"
        assert np.median(top_hall) > BACKGROUND_FAR + 0.03, "a vault overhead indoors"
