"""Mattes measured against the truth: the draft's exact coverage, the scores, and the quality targets."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import build_blob_u2net
from layers.backends import RenderRequest, RenderSettings
from layers.backends.draft import DraftBackend, coverage
from layers.matte import MatteSettings, matte_layer, matte_rgba, new_matte_session
from layers.matte_score import draft_cases, interior, score_matte

SEEDS = Path(__file__).resolve().parents[1] / "seeds"


def disc(width, height, cx, cy, radius):
    """An anti-aliased disc: 1 inside, 0 outside, a one-pixel ramp across the rim."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    return np.clip(radius - np.hypot(u - cx, v - cy) + 0.5, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------- ground truth

@pytest.mark.parametrize("layer", ["midground", "foreground"])
def test_draft_coverage_is_exact_for_a_shape_painted_alone(layer):
    """Paint one disc on two different backdrops: I1 - I2 = (1 - c)(B1 - B2) gives the true coverage c of
    every pixel, independently of how the painter shades the disc; the coverage the draft reports is it."""
    from layers.backends import draft

    h, w = 96, 80
    prior = disc(w, h, 40, 50, 22.3)
    control = np.clip(0.4 + 0.4 * prior, 0, 1).astype(np.float32)
    req = RenderRequest(name=layer, prompt="crimson and gold", negative_prompt="", control=control, prior=prior,
                        seed=4)
    painter, pal, light = draft._PAINTERS[layer], draft._palette(req.prompt, ()), draft.light_vector("top-left")
    b1, b2 = np.full(3, 0.2, np.float32), np.full(3, 0.8, np.float32)
    i1 = painter(req, pal, light, draft._rng(4, layer), b1)
    i2 = painter(req, pal, light, draft._rng(4, layer), b2)
    measured = 1.0 - (i1 - i2) / (b1 - b2)[:, None, None]
    truth = coverage(req)
    assert np.abs(measured - truth[None]).max() < 1e-4
    assert ((truth > 0) & (truth < 1)).sum() > 100          # the rim really is anti-aliased

    result, truths = DraftBackend().render_with_coverage([req], RenderSettings(width=w, height=h))
    np.testing.assert_array_equal(truths[0], truth)
    rgb = np.asarray(result.images[0])
    backdrop = rgb[0, 0]
    assert (rgb[truth == 0] == backdrop).all()               # no paint where the coverage is 0


def test_background_coverage_is_opaque_everywhere():
    req = RenderRequest(name="background", prompt="", negative_prompt="", control=np.zeros((20, 16), np.float32),
                        prior=np.zeros((20, 16), np.float32), seed=0)
    assert coverage(req).min() == 1.0


# --------------------------------------------------------------------------------------------- metrics

def square_truth():
    truth = np.zeros((40, 40))
    truth[10:30, 10:30] = 1.0      # 400 covered pixels, a 14 x 14 interior 3 px in
    return truth


def test_a_perfect_matte_scores_zero():
    truth = square_truth()
    score = score_matte(truth, truth)
    assert all(value == 0.0 for value in score.to_dict().values())


def test_a_matte_missing_half_the_shape_scores_what_it_should():
    truth = square_truth()
    alpha = truth.copy()
    alpha[:, 20:] = 0.0                                        # the right half (200 px) is gone
    score = score_matte(alpha, truth)
    assert score.sad == pytest.approx(0.2)                    # 200 px * 1.0, in thousands
    assert score.mse == pytest.approx(200 / 1600)
    assert score.lost == pytest.approx(0.5)
    assert interior(truth).sum() == 196
    assert score.see_through == pytest.approx(7 * 14 / 196)   # interior columns 13..26, half of them gone
    assert score.halo == 0.0
    assert score.gradient > 0.0


def test_see_through_halo_and_gradient_on_hand_made_mattes():
    truth = square_truth()
    faint = truth * 0.9                                        # the whole subject 90 % opaque
    score = score_matte(faint, truth)
    assert score.see_through == 1.0 and score.lost == 0.0 and score.sad == pytest.approx(0.04)
    halo = truth.copy()
    halo[8:10, 10:30] = 0.5                                    # a 2-px fringe of 40 px above the square
    halo_score = score_matte(halo, truth)
    assert halo_score.halo == pytest.approx(40 / 400) and halo_score.see_through == 0.0
    assert halo_score.gradient > 0.0
    almost = truth.copy()
    almost[8:10, 10:30] = 0.05                                 # below the 0.1 halo threshold
    assert score_matte(almost, truth).halo == 0.0


def test_scores_refuse_mismatched_or_out_of_range_maps():
    with pytest.raises(ValueError, match="same shape"):
        score_matte(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_matte(np.full((4, 4), 1.5), np.zeros((4, 4)))


# --------------------------------------------------------------------------------------------- targets

@pytest.fixture(scope="module", params=[("000_masquerade_babel", 3), ("001_archive_cradle", 5),
                                        ("002_velvet_planetarium", 7)], ids=["seed000", "seed001", "seed002"])
def seed_cases(request):
    stem, seed = request.param
    return draft_cases((SEEDS / f"{stem}.txt").read_text(encoding="utf-8"), seed, width=512, height=768)


def test_offline_matte_meets_the_targets_on_draft_seeds(seed_cases):
    """See-through <= 0.5 %, lost <= 1 %, halo <= 0.5 %, SAD at most half of closed-form matting's."""
    for case in seed_cases:
        score = score_matte(matte_layer(case.rgb, case.prior), case.truth)
        before = score_matte(matte_layer(case.rgb, case.prior, settings=MatteSettings(method="closed-form")),
                             case.truth)
        assert score.see_through <= 0.005, (case.name, score)
        assert score.lost <= 0.01, (case.name, score)
        assert score.halo <= 0.005, (case.name, score)
        assert score.sad <= 0.5 * before.sad, (case.name, score.sad, before.sad)
        assert before.see_through > 0.005                     # the old matte does fail here: the test can tell


def test_no_floor_shows_through_the_figures_once_composited(seed_cases):
    """The midground layer as stored (decontaminated RGBA) over a black-and-white floor: interior pixels show
    the figure, not the floor."""
    case = seed_cases[0]
    rgba = np.asarray(matte_rgba(case.rgb, case.prior)).astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    v, u = np.mgrid[0:case.truth.shape[0], 0:case.truth.shape[1]]
    floor = np.where((((u // 8) + (v // 8)) % 2)[..., None] == 0, 255.0, 0.0)
    over = rgba[..., :3] * alpha + floor * (1 - alpha)
    inner = interior(case.truth)
    figure = np.asarray(case.rgb, np.float32)
    assert np.abs(over[inner] - figure[inner]).max() <= 3.0


def test_keying_refined_by_closed_form_is_as_clean_and_closer_at_the_edge():
    from helpers import figure_prior, render_on_backdrop

    prior = figure_prior(192, 288)
    image, truth = render_on_backdrop(prior, (200, 40, 50), (40, 180, 60))
    key = score_matte(matte_layer(image, prior, settings=MatteSettings(method="key")), truth)
    refined_alpha = matte_layer(image, prior)                  # the default refines keying's edge
    refined = score_matte(refined_alpha, truth)
    assert refined.see_through == 0.0 and refined.halo == 0.0 and refined.lost <= 0.01
    assert refined.sad <= key.sad * 1.05
    assert refined_alpha[interior(truth)].min() == 1.0


def test_edge_refinement_solves_the_closed_form_system_of_its_pixels():
    """The refinement builds the matting Laplacian from the edge's own windows only; with the other pixels
    known, that is exactly the system pymatting solves on the whole image, so the answers agree."""
    from pymatting import estimate_alpha_cf
    from scipy import ndimage

    from layers.matte import _edge_closed_form

    h, w = 40, 36
    v, u = np.mgrid[0:h, 0:w]
    truth = np.clip(12.3 - np.hypot(u - 17.2, v - 20.4), 0.0, 1.0)
    subject = np.stack([0.8 + 0.1 * np.sin(u / 3), 0.2 + 0.1 * np.cos(v / 4), 0.3 + 0.0 * u], axis=-1)
    rgb = truth[..., None] * subject + (1 - truth[..., None]) * np.array([0.3, 0.6, 0.4])
    rgb = np.clip(rgb + np.random.default_rng(0).normal(0.0, 0.01, rgb.shape), 0.0, 1.0)
    edge = ndimage.binary_dilation((truth > 0) & (truth < 1))
    trimap = np.where(edge, 0.5, (truth >= 0.5).astype(np.float64))
    ours = _edge_closed_form(rgb.astype(np.float32), trimap.astype(np.float32), edge, eps=1e-7, keep=1e-10)
    theirs = estimate_alpha_cf(rgb, trimap, laplacian_kwargs={"epsilon": 1e-7})[edge]
    assert edge.sum() > 150
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert np.abs(ours - truth[edge]).max() < 0.15             # and it is a matte of the disc


def test_keying_follows_a_backdrop_that_is_not_flat():
    """A model's 'plain' backdrop has a vignette: the backdrop field is estimated, not a single colour, so the
    darker corners are not taken for the subject and the lighter middle does not eat into it."""
    h, w = 288, 192
    truth = disc(w, h, w * 0.5, h * 0.5, 60) * (1 - disc(w, h, w * 0.5, h * 0.5, 20))   # a ring
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1.0 - 0.35 * (((u - w / 2) / w) ** 2 + ((v - h / 2) / h) ** 2) * 4
    back = np.stack([150 * shade, 170 * shade, 160 * shade], axis=-1)
    img = truth[..., None] * np.array([200, 40, 50], np.float32) + (1 - truth[..., None]) * back
    image = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    assert np.ptp(back[truth == 0], axis=0).max() > 40          # the backdrop really varies
    score = score_matte(matte_layer(image, truth), truth)
    assert score.see_through == 0.0 and score.halo == 0.0 and score.lost <= 0.01
    assert score.sad < 0.05


def test_a_wider_edge_zone_follows_softer_edges():
    """Keying treats content more than edge_px from clear backdrop as solid: the default (2 px) suits a
    render's anti-aliased edge; a blurred edge needs a wider zone, and gets it from the setting."""
    from helpers import figure_prior

    truth = figure_prior(192, 288, blur=2.0)
    img = truth[..., None] * np.array([200, 40, 50], np.float32) + (1 - truth[..., None]) * 150.0
    image = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    narrow = score_matte(matte_layer(image, truth), truth)
    wide = score_matte(matte_layer(image, truth, settings=MatteSettings(edge_px=4)), truth)
    assert wide.sad < 0.5 * narrow.sad
    assert wide.see_through == 0.0 and wide.halo == 0.0


@pytest.mark.parametrize("kwargs, message", [({"method": "grabcut"}, "method"), ({"edge_px": 0}, "edge_px"),
                                             ({"edge_px": 2.5}, "edge_px")])
def test_matte_settings_refuse_unknown_methods_and_edge_widths(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MatteSettings(**kwargs)


# --------------------------------------------------------------------------------------------- rembg

def debris_scene(width=160, height=224):
    """A figure in the middle and scattered specks of debris around it, on a plain grey backdrop."""
    prior = disc(width, height, width * 0.5, height * 0.45, 30)
    rng = np.random.default_rng(1)
    specks = []
    for _ in range(14):
        x, y = rng.uniform(10, width - 10), rng.uniform(10, height - 10)
        if np.hypot(x - width * 0.5, y - height * 0.45) > 50:
            specks.append((x, y))
            prior = np.maximum(prior, disc(width, height, x, y, rng.uniform(1.5, 4.0)))
    colour = np.array([200, 60, 40], np.float32)
    back = np.array([128, 128, 128], np.float32)
    img = prior[..., None] * colour + (1 - prior[..., None]) * back
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8)), prior, specks


@pytest.fixture()
def blob_session(tmp_path, monkeypatch):
    home = tmp_path / "u2net"
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.delenv("REMBG_HOME", raising=False)
    return new_matte_session(build_blob_u2net(home / "models" / "blob.onnx", centre=(0.5, 0.45),
                                              radius=(0.25, 0.2)))


def test_rembg_with_keying_keeps_the_debris_the_segmenter_drops(blob_session):
    from rembg import remove

    image, truth, specks = debris_scene()
    assert len(specks) >= 5
    raw = np.asarray(remove(image, session=blob_session, only_mask=True), np.float32) / 255.0
    before = matte_layer(image, truth, session=blob_session, settings=MatteSettings(method="closed-form"))
    after = matte_layer(image, truth, session=blob_session)
    debris = (truth >= 0.5) & (raw < 0.5)                      # covered, but outside the segmenter's blob
    assert debris.sum() > 40
    assert (before[debris] < 0.5).mean() > 0.9                 # the segmenter alone drops the debris ...
    assert (after[debris] >= 0.5).all()                        # ... the combination keeps every speck
    score = score_matte(after, truth)
    assert score.lost == 0.0 and score.halo <= 0.005 and score.see_through == 0.0
    assert score_matte(before, truth).lost >= 0.9 * debris.sum() / (truth >= 0.5).sum()


def test_rembg_fills_a_backdrop_coloured_patch_enclosed_by_the_subject(blob_session):
    """Keying cannot tell a grey patch of the subject from the grey backdrop it matches; inside the edge band
    and cut off from the backdrop by the subject, it is the segmenter's call, and this one says subject."""
    from scipy import ndimage

    w, h = 320, 448
    truth = disc(w, h, w * 0.5, h * 0.45, 60)
    depth = ndimage.distance_transform_cdt(truth >= 0.5, metric="chessboard")
    u = np.arange(w)[None, :]
    patch = (depth >= 2) & (depth <= 4) & (u < w * 0.5 - 30)  # a grey crescent just inside the rim (band 5 px)
    colour = np.where(patch[..., None], 128.0, np.array([200, 60, 40], np.float32))
    img = truth[..., None] * colour + (1 - truth[..., None]) * 128.0
    image = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    offline = matte_layer(image, truth)
    combined = matte_layer(image, truth, session=blob_session)
    assert patch.sum() > 100
    assert (offline[patch] < 0.1).mean() > 0.8                 # keying alone: mostly see-through
    assert combined[patch].min() == 1.0                        # with the segmenter: solid
    outside = truth == 0
    assert combined[outside].max() == 0.0                     # and the backdrop around stays clear
