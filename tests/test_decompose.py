"""decompose: a real photo + its real depth -> named layers that composite back to the photo, filled behind."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from layers.backends.base import ModelUnavailableError, RenderResult
from layers.decompose import (DecomposeSettings, check_picture, choose_thresholds, decompose, layer_names,
                              load_depth, prepare_depth)


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def motorcycle():
    """The Middlebury motorcycle (left view) and its measured disparity, at half size (fast)."""
    from skimage import data

    left, _, disparity = data.stereo_motorcycle()
    img = Image.fromarray(left).resize((left.shape[1] // 2, left.shape[0] // 2), Image.BILINEAR)
    disp = np.where(np.isfinite(disparity), disparity, np.nan)[::2, ::2][:img.height, :img.width]
    return img, disp


@pytest.fixture(scope="module")
def motorcycle_layers(motorcycle):
    img, disp = motorcycle
    return decompose(img, disp)


def test_three_named_layers_composite_back_to_the_photo(motorcycle, motorcycle_layers):
    img, _ = motorcycle
    result = motorcycle_layers
    assert result.stack.names == ("background", "midground", "foreground")
    assert len(result.thresholds) == 2 and 0 < result.thresholds[0] < result.thresholds[1] < 1
    assert psnr(result.stack.composite(), img) >= 40.0
    # Soft boundaries: the matted edges hold partial alpha, not a hard cut.
    fg_alpha = result.stack["foreground"].alpha
    assert ((fg_alpha > 0.05) & (fg_alpha < 0.95)).mean() > 0.002
    assert (result.stack["background"].alpha == 1.0).all()


def test_hidden_parts_are_filled_with_colour_and_farther_depth(motorcycle_layers):
    result = motorcycle_layers
    bg = result.stack["background"]
    hidden = result.filled["background"]
    assert hidden.mean() > 0.2  # the motorcycle covers a good part of the garage
    # Completed depth: defined everywhere, and behind the occluders no nearer than the background band.
    assert np.isfinite(bg.depth).all()
    assert bg.depth[hidden].max() <= result.thresholds[0] + 1e-6
    mid = result.stack["midground"]
    mid_hidden = result.filled["midground"]
    assert mid_hidden.any()
    assert mid.depth[mid_hidden].min() >= result.thresholds[0] - 1e-6
    assert mid.depth[mid_hidden].max() <= result.thresholds[1] + 1e-6
    # The front layer hides nothing and is filled nowhere.
    assert not result.filled["foreground"].any()
    # Visible weights partition every pixel.
    total = sum(result.visible.values())
    assert np.allclose(total, 1.0, atol=2e-2)


@pytest.fixture(scope="module")
def red_disc():
    """A pure red disc in front of a green/blue textured wall: (picture, depth, disc mask, the wall itself)."""
    rng = np.random.default_rng(0)
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    wall = np.zeros((h, w, 3), np.float32)
    wall[..., 1] = 0.4 + 0.3 * np.sin(xx / 7.0) + 0.1 * rng.random((h, w))
    wall[..., 2] = 0.5 + 0.3 * np.cos(yy / 5.0)
    disc = (yy - 60) ** 2 + (xx - 80) ** 2 < 35 ** 2
    rgb = wall.copy()
    rgb[disc] = (0.95, 0.05, 0.05)
    img = Image.fromarray(np.clip(rgb * 255, 0, 255).astype(np.uint8), "RGB")
    depth = np.where(disc, 0.9, 0.1 + 0.1 * xx / w).astype(np.float32)
    return img, depth, disc, np.clip(wall, 0, 1)


@pytest.mark.parametrize("fill", ["texture", "smooth"])
def test_no_colour_from_the_occluder_in_the_fill(red_disc, fill):
    """The wall's fill behind the red disc holds no red, whichever fill completes it."""
    img, depth, disc, _ = red_disc
    result = decompose(img, depth, layers=2, settings=DecomposeSettings(fill=fill))
    assert result.info["fill"] == fill
    bg = np.asarray(result.stack["background"].rgba.convert("RGB"), np.float32) / 255.0
    hidden = result.filled["background"]
    assert hidden.sum() > 0.8 * disc.sum()
    redness = bg[..., 0] - np.maximum(bg[..., 1], bg[..., 2])
    assert redness[hidden].max() < 0.05, "the occluder's red leaked into the background fill"
    assert redness[~disc].max() < 0.05  # no red halo around the disc either
    assert result.stack["background"].depth[hidden].max() < 0.25


def test_the_texture_fill_continues_the_walls_texture_where_the_smooth_fill_blurs_it(red_disc):
    from scipy import ndimage

    img, depth, disc, wall = red_disc
    inside = ndimage.binary_erosion(disc, iterations=4)

    def detail(result):
        rgb = np.asarray(result.stack["background"].rgba.convert("RGB"), np.float32) / 255.0
        gy, gx = np.gradient(rgb.mean(-1))
        return float(np.hypot(gx, gy)[inside].mean())

    gy, gx = np.gradient(wall.mean(-1))
    truth = float(np.hypot(gx, gy)[inside].mean())
    textured = decompose(img, depth, layers=2, seed=7)
    smooth = decompose(img, depth, layers=2, settings=DecomposeSettings(fill="smooth"))
    assert detail(textured) / truth > 0.5 > 0.4 > detail(smooth) / truth
    assert detail(textured) > 1.6 * detail(smooth)
    # Deterministic for a seed (one per layer, recorded); another seed, another fill of the same hidden part.
    assert textured.info["seeds"] == {"background": textured.info["seeds"]["background"]}
    again = decompose(img, depth, layers=2, seed=7)
    assert np.array_equal(np.asarray(again.stack["background"].rgba), np.asarray(textured.stack["background"].rgba))
    other = decompose(img, depth, layers=2, seed=8)
    changed = np.any(np.asarray(other.stack["background"].rgba) != np.asarray(textured.stack["background"].rgba), -1)
    assert changed.any() and not changed[~textured.filled["background"]].any()


@pytest.mark.parametrize("count", [2, 4, 6])
def test_layer_counts_and_names(count):
    h, w = 64, 96
    xx = np.tile(np.arange(w, dtype=np.float32) / (w - 1), (h, 1))
    rng = np.random.default_rng(1)
    img = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
    result = decompose(img, xx, layers=count)
    assert result.stack.names == layer_names(count)
    assert result.stack.names[0] == "background" and result.stack.names[-1] == "foreground"
    assert len(result.thresholds) == count - 1
    assert psnr(result.stack.composite(), img) >= 40.0


def test_auto_splits_in_the_histogram_valleys():
    # Three clusters of depth: auto finds three layers with thresholds between the clusters.
    h, w = 60, 90
    depth = np.full((h, w), 0.15, np.float32)
    depth[:, 30:60] = 0.5
    depth[:, 60:] = 0.85
    depth += np.random.default_rng(2).normal(0, 0.02, depth.shape).astype(np.float32)
    t = choose_thresholds(np.clip((depth - depth.min()) / (depth.max() - depth.min()), 0, 1), "auto")
    assert len(t) == 2
    img = Image.fromarray((np.random.default_rng(3).random((h, w, 3)) * 255).astype(np.uint8))
    result = decompose(img, depth, layers="auto")
    assert len(result.stack) == 3 and result.info["layer_count"] == "auto"
    lo, hi = result.thresholds
    stretched = (depth - depth.min()) / (depth.max() - depth.min())
    assert stretched[:, :30].max() < lo < stretched[:, 30:60].min()
    assert stretched[:, 30:60].max() < hi < stretched[:, 60:].min()


def test_depth_of_another_size_is_resized_with_a_notice(motorcycle):
    img, disp = motorcycle
    small = disp[::2, ::2]
    d, notices = prepare_depth(small, img.size)
    assert d.shape == (img.height, img.width)
    assert notices and "resized" in notices[0]


@pytest.mark.parametrize("make, message", [
    (lambda: Image.new("RGBA", (64, 64)), "transparency"),
    (lambda: Image.new("CMYK", (64, 64)), "CMYK"),
    (lambda: Image.new("I;16", (64, 64)), "16-bit"),
    (lambda: Image.new("RGB", (20, 64)), "at least"),
])
def test_pictures_that_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        check_picture(make())


def test_bad_depth_and_layer_counts():
    img = Image.new("RGB", (64, 48), (10, 20, 30))
    with pytest.raises(ValueError, match="constant"):
        decompose(img, np.full((48, 64), 0.3))
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    for bad in (9, 1, "many", 2.5, True):
        with pytest.raises(ValueError, match="layers must be"):
            decompose(img, ramp, layers=bad)
    with pytest.raises(ValueError, match="2-D"):
        decompose(img, np.zeros((4, 48, 64)))


def test_load_depth_reads_16_bit_png_and_npy(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 80).astype(np.uint16), (40, 1))
    Image.fromarray(ramp).save(tmp_path / "d.png")
    got = load_depth(tmp_path / "d.png")
    assert got.max() > 65000 and len(np.unique(got)) == 80  # full 16-bit precision kept
    np.save(tmp_path / "d.npy", ramp.astype(np.float32) / 7.0)
    assert np.allclose(load_depth(tmp_path / "d.npy"), ramp / 7.0, rtol=1e-5)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="npy"):
        load_depth(tmp_path / "bad.npy")


class FlatRepainter:
    """A real (if simple) Repainter: paints each masked region with one colour per seed, keeps the rest."""

    name = "flat-repainter"

    def __init__(self):
        self.calls = []

    def repaint(self, requests, settings, progress=None):
        self.calls.append(list(requests))
        images = []
        for req in requests:
            rng = np.random.default_rng(req.seed)
            colour = rng.integers(0, 256, 3).astype(np.uint8)
            base = np.asarray(req.image.convert("RGB")).copy()
            assert req.mask.shape == base.shape[:2] and req.control.shape == base.shape[:2]
            base[req.mask > 0.5] = colour
            images.append(Image.fromarray(base))
            if progress:  # as the diffusers backend does: a fraction inside the step, then the step done
                progress(req.name, 0.5, 1)
                progress(req.name, 1, 1)
        return RenderResult(images=images, info={"backend": self.name})


class UnavailableRepainter:
    name = "no-weights"

    def repaint(self, requests, settings, progress=None):
        raise ModelUnavailableError("inpainting model 'x/y' is not cached; run: hf download x/y")


def test_backend_repaints_every_hidden_region_in_one_call(motorcycle):
    img, disp = motorcycle
    backend = FlatRepainter()
    result = decompose(img, disp, backend=backend, seed=5)
    assert len(backend.calls) == 1
    names = [req.name for req in backend.calls[0]]
    assert names == ["background", "midground"]
    for req in backend.calls[0]:
        hidden = result.filled[req.name]
        assert (req.mask[hidden] == 1.0).all()
        # the control is the layer's completed depth
        assert np.allclose(req.control, result.stack[req.name].depth, atol=1e-6)
    bg = np.asarray(result.stack["background"].rgba.convert("RGB"))
    painted = np.asarray(backend.calls[0][0].image)  # the start image (offline fill) differs from the paint
    colour = np.random.default_rng(backend.calls[0][0].seed).integers(0, 256, 3)
    assert (bg[result.filled["background"]] == colour).all()
    assert not (painted[result.filled["background"]] == colour).all()
    assert result.info["fill"] == "repaint"
    assert psnr(result.stack.composite(), img) >= 40.0  # what was visible is untouched
    again = decompose(img, disp, backend=FlatRepainter(), seed=5)
    assert np.array_equal(np.asarray(again.stack["background"].rgba), np.asarray(result.stack["background"].rgba))


def test_repainting_progress_reads_as_words_even_inside_a_step(motorcycle):
    img, disp = motorcycle
    seen = []
    decompose(img, disp, backend=FlatRepainter(), seed=5, progress=lambda f, text: seen.append(text))
    repainting = [t for t in seen if t.startswith("repainting")]
    assert "repainting background: decoding" in repainting and "repainting background: step 1/1" in repainting
    assert not any("." in t.split(":")[-1] for t in repainting), repainting  # no "step 0.5/1"


def test_unavailable_inpainting_falls_back_to_the_offline_fill_with_a_notice(motorcycle, motorcycle_layers):
    img, disp = motorcycle
    result = decompose(img, disp, backend=UnavailableRepainter())
    assert any("filled offline" in n for n in result.notices)
    assert result.info["fill"] == "texture"  # the offline default
    assert np.array_equal(np.asarray(result.stack["background"].rgba),
                          np.asarray(motorcycle_layers.stack["background"].rgba))


def test_settings_are_range_checked():
    with pytest.raises(ValueError, match="reach"):
        DecomposeSettings(reach=0)
    with pytest.raises(ValueError, match="band"):
        DecomposeSettings(band=0.5)
    with pytest.raises(ValueError, match="unknown fill 'blur'"):
        DecomposeSettings(fill="blur")


def test_round_trip_holds_with_a_rembg_session(motorcycle, tmp_path, monkeypatch):
    """Boundaries matted by a rembg session (a real ONNX model with U^2-Net I/O) still composite back exactly."""
    from helpers import build_tiny_u2net
    from layers.matte import new_matte_session

    home = tmp_path / "u2net"
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.delenv("REMBG_HOME", raising=False)
    session = new_matte_session(build_tiny_u2net(home / "models" / "tiny_u2net.onnx"))
    img, disp = motorcycle
    result = decompose(img, disp, session=session)
    offline = decompose(img, disp)
    assert psnr(result.stack.composite(), img) >= 40.0
    # The segmenter's soft mask, not the closed-form one, shaped the front layer's edges.
    assert not np.array_equal(result.stack["foreground"].alpha, offline.stack["foreground"].alpha)
    fg = result.stack["foreground"].alpha
    assert ((fg > 0.05) & (fg < 0.95)).any()


def test_explicit_thresholds_are_used_and_checked(motorcycle):
    img, disp = motorcycle
    result = decompose(img, disp, thresholds=(0.3, 0.6, 0.8))
    assert result.thresholds == (0.3, 0.6, 0.8) and len(result.stack) == 4
    for bad in ((0.6, 0.3), (0.0, 0.5), (0.5, 1.0), ()):
        with pytest.raises(ValueError, match="thresholds"):
            decompose(img, disp, thresholds=bad)


def test_zero_is_far_by_default_and_unknown_when_asked():
    # A near square on a far floor; a stereo matcher left 0 (no match) on part of the square and of the floor.
    depth = np.full((40, 60), 10.0, np.float32)
    depth[10:30, 20:40] = 50.0
    depth[15:20, 25:30] = 0.0    # unknown on the square
    depth[0:4, 0:6] = 0.0        # unknown on the floor
    d, notices = prepare_depth(depth, (60, 40))
    assert d[17, 27] == 0.0 and d[1, 1] == 0.0 and not notices  # the default: 0 is the farthest value
    d, notices = prepare_depth(depth, (60, 40), unknown_zero=True)
    assert d[17, 27] == 1.0 and d[1, 1] == 0.0  # each unknown patch takes its surroundings' depth
    assert d[10:30, 20:40].min() == 1.0
    assert len(notices) == 1 and "2.0% of the pixels are unknown" in notices[0]
    with pytest.raises(ValueError, match="no known value"):
        prepare_depth(np.zeros((40, 60)), (60, 40), unknown_zero=True)


def test_the_repaint_takes_the_model_s_own_steps_and_guidance(motorcycle):
    """A few-step model repaints a picture's hidden parts in its own few steps, not in the 25 an SD model takes."""
    img, disp = motorcycle

    class FewStep(FlatRepainter):
        defaults = {"steps": 2, "guidance": 1.5, "control_end": 0.5, "fill_denoise": 0.75}

        def repaint(self, requests, settings, progress=None):
            self.settings = settings
            return super().repaint(requests, settings, progress)

    backend = FewStep()
    decompose(img, disp, backend=backend, seed=5)
    assert (backend.settings.steps, backend.settings.guidance) == (2, 1.5)
    plain = type("Plain", (FewStep,), {"defaults": None})()
    decompose(img, disp, backend=plain, seed=5)
    assert (plain.settings.steps, plain.settings.guidance) == (25, 6.0)  # RenderSettings' own
