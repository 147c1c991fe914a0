"""Matting: rembg's real session code with a tiny ONNX model built here, and the offline fallback."""
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from helpers import build_blob_u2net, build_tiny_isnet, build_tiny_u2net, figure_prior, render_on_backdrop
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


def test_an_isnet_shaped_model_file_runs_through_rembgs_dis_session(rembg_home):
    """rembg's u2net_custom session feeds 320 px images, which a 1024 px (IS-Net) model refuses; the file's own
    input picks the session that feeds it 1024 px."""
    from rembg import new_session, remove

    path = build_tiny_isnet(rembg_home / "models" / "tiny_isnet.onnx")
    image, prior = bright_scene()
    with pytest.raises(Exception, match="Expected: 1024"):  # the session the file used to get
        remove(image, session=new_session("u2net_custom", model_path=str(path)), only_mask=True)
    session = new_matte_session(path)
    assert session.name() == "dis_custom"
    # The segmenter's mask alone (method closed-form), so the matte is what the model said.
    alpha = matte_layer(image, prior, session=session, settings=MatteSettings(method="closed-form"))
    inside = ndimage.binary_erosion(prior > 0.5, iterations=4)
    outside = ~ndimage.binary_dilation(prior > 0.5, iterations=3)
    assert alpha[inside].mean() > 0.9 and alpha[outside].max() < 0.1


def test_a_u2net_shaped_model_file_keeps_the_u2net_session(rembg_home):
    assert new_matte_session(build_tiny_u2net(rembg_home / "models" / "tiny.onnx")).name() == "u2net_custom"


def test_a_model_file_of_another_input_size_is_refused_in_one_line(rembg_home):
    from helpers import _save_u2net
    from onnx import helper

    nodes = [helper.make_node("Conv", ["input.1", "W", "B"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["c"], ["mask"])]
    path = _save_u2net(rembg_home / "models" / "odd.onnx", nodes,
                       {"W": np.ones((1, 3, 1, 1), np.float32), "B": np.zeros((1,), np.float32)}, side=512)
    with pytest.raises(ValueError, match=r"takes 512x512 images; rembg runs custom models of 320x320"):
        new_matte_session(path)


def test_a_file_that_is_not_an_onnx_model_is_refused_in_one_line(rembg_home):
    path = rembg_home / "models" / "notes.onnx"
    path.parent.mkdir(parents=True)
    path.write_text("not a model")
    with pytest.raises(ValueError, match="not an ONNX model") as info:
        new_matte_session(path)
    assert "\n" not in str(info.value)


def _counted(session):
    """The session, its real predict counted."""
    calls = []
    predict = session.predict

    def counting(*args, **kwargs):
        calls.append(1)
        return predict(*args, **kwargs)

    session.predict = counting
    return session, calls


RED, GREY = (200, 60, 40), (128, 128, 128)
BAND = MatteSettings(band=0.1)  # 12 px on 120: room for a patch inside the band, where keying decides


def square_with_patch(patch_px: int, size=120):
    """A red square on a grey backdrop (its prior), with a grey patch_px x patch_px patch 3 px inside its left
    side: cut off from the backdrop by red, within the band."""
    prior = np.zeros((size, size), np.float32)
    prior[30:90, 30:90] = 1.0
    arr = np.full((size, size, 3), GREY, np.uint8)
    arr[30:90, 30:90] = RED
    patch = (slice(58, 58 + patch_px), slice(33, 33 + patch_px))
    arr[patch] = GREY
    return Image.fromarray(arr), prior, patch


def test_the_segmenter_runs_only_on_a_layer_with_a_patch_keying_cannot_tell(rembg_home):
    """The segmenter decides only backdrop-coloured patches cut off from the backdrop; a layer with none (most
    layers) is matted without running it, exactly as offline, and a patch smaller than decide_px (a gap between
    specks) stays clear without running it either."""
    model = build_blob_u2net(rembg_home / "models" / "blob.onnx", centre=(0.5, 0.5), radius=(0.3, 0.3))
    session, calls = _counted(new_matte_session(model))
    plain, prior, _ = square_with_patch(0)
    alpha = matte_layer(plain, prior, session=session, settings=BAND)
    assert calls == [] and np.array_equal(alpha, matte_layer(plain, prior, settings=BAND))
    assert alpha[30:90, 30:90].min() == 1.0 and alpha.sum() == 60 * 60

    small, _, gap = square_with_patch(2)                       # 4 px < decide_px (9)
    alpha = matte_layer(small, prior, session=session, settings=BAND)
    assert calls == [] and alpha[gap].max() == 0.0             # stays clear, as keyed: no segmenter run

    big, _, patch = square_with_patch(6)                       # 36 px: the segmenter decides it
    offline = matte_layer(big, prior, settings=BAND)
    alpha = matte_layer(big, prior, session=session, settings=BAND)
    assert calls == [1]
    assert offline[patch].max() == 0.0 and alpha[patch].min() == 1.0
    rest = np.ones(prior.shape, bool)
    rest[patch] = False
    assert np.array_equal(alpha[rest], offline[rest])          # the rest is the offline matte

    # decide_px lowered to the gap's size: the gap is the segmenter's call too.
    alpha = matte_layer(small, prior, session=session, settings=MatteSettings(band=0.1, decide_px=4))
    assert calls == [1, 1] and alpha[gap].min() == 1.0


def test_a_diagonal_gap_to_the_backdrop_is_backdrop_not_an_enclosed_patch(rembg_home):
    """Two content pixels touching at a corner do not close a gap: backdrop reached through the corner is still
    backdrop, so the segmenter is not asked about it."""
    model = build_blob_u2net(rembg_home / "models" / "blob.onnx", centre=(0.5, 0.5), radius=(0.45, 0.45))
    session, calls = _counted(new_matte_session(model))
    image, prior, _ = square_with_patch(0)
    arr = np.asarray(image).copy()
    arr[31:35, 31:35] = GREY  # a grey room inside the square's corner ...
    arr[30, 30] = GREY        # ... opening onto the backdrop through the corner pixel, diagonally only
    settings = MatteSettings(band=0.1, decide_px=2)
    alpha = matte_layer(Image.fromarray(arr), prior, session=session, settings=settings)
    assert calls == [] and alpha[31:35, 31:35].max() == 0.0
    arr[30, 30] = RED         # closed: now the room is enclosed, and the segmenter decides it
    alpha = matte_layer(Image.fromarray(arr), prior, session=session, settings=settings)
    assert calls == [1] and alpha[31:35, 31:35].min() == 1.0


def test_decide_px_is_range_checked():
    for bad in (0, 2.5, True, 100_001):
        with pytest.raises(ValueError, match="decide_px"):
            MatteSettings(decide_px=bad)


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
