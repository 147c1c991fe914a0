"""Matting: rembg's real session code with a tiny ONNX model built here, and the offline fallback."""
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from helpers import build_tiny_u2net, figure_prior, render_on_backdrop
from layers.matte import MatteSettings, matte_layer, matte_rgba, new_matte_session

FIGURE = (200, 40, 50)     # carmine figure ...
BACKDROP = (40, 180, 60)   # ... on a saturated green backdrop: any halo would show as green


@pytest.fixture()
def rembg_home(tmp_path, monkeypatch):
    home = tmp_path / "u2net"
    home.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.delenv("REMBG_HOME", raising=False)
    return home


@pytest.fixture()
def tiny_session(rembg_home):
    model = build_tiny_u2net(rembg_home / "models" / "tiny_u2net.onnx")
    return new_matte_session(model)


def bright_scene(width=128, height=192):
    """A bright figure where the prior is, plus a bright stray lamp far from it, on a dark backdrop."""
    prior = figure_prior(width, height)
    img = np.full((height, width, 3), 20, np.uint8)
    img[prior > 0.5] = 235
    img[6:26, 6:30] = 235  # the lamp: bright, so the segmenter keeps it, but nowhere near the prior
    return Image.fromarray(img, "RGB"), prior


# --------------------------------------------------------------------------------------------- rembg session

def test_rembg_session_mattes_the_figure_and_the_prior_drops_stray_background(tiny_session):
    from rembg import remove

    image, prior = bright_scene()
    raw = np.asarray(remove(image, session=tiny_session, only_mask=True), np.float32) / 255.0
    alpha = matte_layer(image, prior, session=tiny_session)

    assert alpha.dtype == np.float32 and alpha.shape == prior.shape
    inside = ndimage.binary_erosion(prior > 0.5, iterations=4)
    far = ~ndimage.binary_dilation(prior > 0.5, iterations=12)
    assert alpha[inside].mean() > 0.9
    assert alpha[far].max() < 0.05
    lamp = (slice(8, 24), slice(8, 28))
    assert raw[lamp].mean() > 0.8          # the segmenter alone keeps the lamp ...
    assert alpha[lamp].max() == 0.0        # ... the prior removes it


def test_rembg_session_rgba_has_the_figure_colour_and_alpha(tiny_session):
    image, prior = bright_scene()
    rgba = matte_rgba(image, prior, session=tiny_session)
    assert rgba.mode == "RGBA" and rgba.size == image.size
    arr = np.asarray(rgba)
    centre = arr[int(0.62 * 192), 64]
    assert centre[3] > 230 and centre[:3].min() > 200


def test_model_file_outside_u2net_home_is_refused(rembg_home, tmp_path):
    outside = build_tiny_u2net(tmp_path / "elsewhere" / "tiny.onnx")
    with pytest.raises(ValueError, match="U2NET_HOME") as info:
        new_matte_session(outside)
    assert "elsewhere" in str(info.value)


def test_missing_model_file_under_u2net_home_is_refused(rembg_home):
    with pytest.raises(ValueError, match="not found"):
        new_matte_session(rembg_home / "models" / "nothing.onnx")


def test_named_model_that_is_not_downloaded_is_refused_instead_of_downloading(rembg_home):
    with pytest.raises(ValueError, match="u2net.*downloads are off"):
        new_matte_session("u2net")


def test_unknown_model_name_lists_the_choices(rembg_home):
    with pytest.raises(ValueError, match="isnet-general-use"):
        new_matte_session("no-such-model")


# --------------------------------------------------------------------------------------------- fallback

def test_fallback_alpha_is_soft_at_the_edge_solid_inside_and_clear_outside():
    prior = figure_prior(256, 384)
    image, coverage = render_on_backdrop(prior, FIGURE, BACKDROP)
    alpha = matte_layer(image, prior)

    assert alpha.dtype == np.float32 and alpha.shape == prior.shape
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0
    inside = ndimage.binary_erosion(prior > 0.5, iterations=6)
    far = ~ndimage.binary_dilation(prior > 0.5, iterations=12)
    assert alpha[inside].min() > 0.98
    assert alpha[far].max() < 0.02
    edge = (prior > 0.5) ^ ndimage.binary_erosion(prior > 0.5)
    soft = (alpha[edge] > 0.05) & (alpha[edge] < 0.95)
    assert soft.mean() > 0.3                        # soft, anti-aliased edge, not a cut-out
    assert np.abs(alpha - coverage).mean() < 0.01   # and it is the edge the image has


def test_fallback_edges_carry_the_figure_colour_not_the_backdrop():
    prior = figure_prior(256, 384)
    image, _ = render_on_backdrop(prior, FIGURE, BACKDROP, texture=False)
    rgba = np.asarray(matte_rgba(image, prior)).astype(float)
    alpha = rgba[..., 3] / 255.0
    band = (alpha > 0.1) & (alpha < 0.9)
    assert band.sum() > 100
    colours = rgba[..., :3][band]
    to_figure = np.linalg.norm(colours - FIGURE, axis=1)
    to_backdrop = np.linalg.norm(colours - BACKDROP, axis=1)
    assert np.median(to_figure) < 20 and (to_figure < to_backdrop).all()
    # Composited over white, the edge goes from the figure colour to white with no green in between.
    over_white = rgba[..., :3] * alpha[..., None] + 255.0 * (1 - alpha[..., None])
    edge_pixels = over_white[band]
    greenness = edge_pixels[:, 1] - np.maximum(edge_pixels[:, 0], edge_pixels[:, 2])
    assert greenness.max() < 5
    # Without decontamination the same edge is visibly green-tinged: the check above means something.
    raw = np.asarray(matte_rgba(image, prior, settings=MatteSettings(decontaminate=False))).astype(float)
    raw_white = raw[..., :3] * alpha[..., None] + 255.0 * (1 - alpha[..., None])
    raw_green = raw_white[band][:, 1] - np.maximum(raw_white[band][:, 0], raw_white[band][:, 2])
    assert raw_green.max() > 10


def test_fallback_ignores_content_far_from_the_prior():
    prior = figure_prior(128, 192)
    image, _ = render_on_backdrop(prior, FIGURE, BACKDROP)
    arr = np.asarray(image).copy()
    arr[5:25, 5:25] = FIGURE  # a stray patch of figure colour in a corner
    alpha = matte_layer(Image.fromarray(arr), prior)
    assert alpha[5:25, 5:25].max() == 0.0


def test_empty_prior_gives_a_fully_transparent_layer():
    image = Image.new("RGB", (40, 30), BACKDROP)
    alpha = matte_layer(image, np.zeros((30, 40), np.float32))
    assert alpha.shape == (30, 40) and alpha.max() == 0.0
    assert np.asarray(matte_rgba(image, np.zeros((30, 40))))[..., 3].max() == 0


def test_prior_filling_the_frame_keeps_everything():
    image = Image.new("RGB", (40, 30), FIGURE)
    alpha = matte_layer(image, np.ones((30, 40), np.float32))
    assert alpha.min() == 1.0


def test_matting_a_full_size_layer_is_fast():
    prior = figure_prior(512, 768)
    image, coverage = render_on_backdrop(prior, FIGURE, BACKDROP)
    matte_rgba(image, prior)  # first call loads pymatting's compiled kernels
    start = time.perf_counter()
    rgba = matte_rgba(image, prior)
    elapsed = time.perf_counter() - start
    assert np.abs(np.asarray(rgba)[..., 3] / 255.0 - coverage).mean() < 0.01
    assert elapsed < 1.5, f"matting one 512x768 layer took {elapsed:.2f}s"


@pytest.mark.parametrize("prior, message", [
    (np.zeros((10, 10), np.float32), "shape"),
    (np.full((30, 40), np.nan, np.float32), "NaN"),
    (np.full((30, 40), 3.0, np.float32), r"\[0, 1\]"),
])
def test_bad_priors_are_refused(prior, message):
    with pytest.raises(ValueError, match=message):
        matte_layer(Image.new("RGB", (40, 30)), prior)


def test_rgb_must_be_an_image():
    with pytest.raises(ValueError, match="PIL image"):
        matte_layer(np.zeros((30, 40, 3), np.uint8), np.zeros((30, 40), np.float32))


def test_settings_are_range_checked():
    with pytest.raises(ValueError, match="band"):
        MatteSettings(band=0.0)
    with pytest.raises(ValueError, match="solve_pixels"):
        MatteSettings(solve_pixels=10)


def test_fallback_survives_an_image_the_solver_cannot_refine():
    """Noise for both image and prior stalls pymatting's conjugate gradient ("did not converge"); the matte
    still comes back, finite and in range, instead of failing the whole render."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (96, 64, 3), dtype=np.uint8))
    prior = rng.random((96, 64)).astype(np.float32)
    alpha = matte_layer(rgb, prior)
    assert alpha.shape == (96, 64) and np.isfinite(alpha).all()
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0
    assert 0.2 < alpha.mean() < 0.8
