"""The fills: texture where the smooth fill blurs, only ever from the sources, at the hole's depth, for a seed."""
from __future__ import annotations

import numpy as np
import pytest

from layers.fill import FILLS, TextureSettings, check_fill, push_pull, texture_fill


def gradient(rgb: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(rgb.mean(-1))
    return np.hypot(gx, gy)


def stones(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A stochastic texture with edges (random blobs of several greys, like gravel), float RGB."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    cells = ndimage.zoom(rng.random((h // 6 + 1, w // 6 + 1)), 6, order=0)[:h, :w]
    grey = 0.25 + 0.5 * cells + 0.05 * rng.random((h, w))
    return np.repeat(grey[..., None], 3, -1).astype(np.float32)


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2


@pytest.fixture(scope="module")
def gravel():
    img = stones(96, 128)
    hole = disc(96, 128, 48, 64, 24)
    return img, hole


def test_the_texture_fill_keeps_the_texture_the_smooth_fill_blurs_away(gravel):
    img, hole = gravel
    from scipy import ndimage

    inner = ndimage.binary_erosion(hole, iterations=4)  # the hole, away from its edge
    truth = gradient(img)[inner].mean()
    smooth = push_pull(img, (~hole).astype(np.float32))
    textured = texture_fill(img, ~hole, hole, seed=0)
    assert gradient(smooth)[inner].mean() / truth < 0.2
    assert 0.6 < gradient(textured)[inner].mean() / truth < 1.4
    assert np.array_equal(textured[~hole], img[~hole])  # nothing outside the hole changes


def test_a_thin_bar_over_a_fine_grain_is_filled_as_detailed_as_the_truth_and_never_with_its_occluder():
    """A 16 px bar, slightly tilted, over fine grain among flat patches: where a flat patch is nearer than the
    grain out of phase, the texture features keep the grain (the bench's thin-bar case)."""
    from scipy import ndimage

    h, w = 96, 160
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.0)
    flat = ndimage.zoom(rng.random((h // 24 + 1, w // 24 + 1)), 24, order=0)[:h, :w]
    grey = np.where(flat > 0.35, 0.5 + 0.12 * noise / noise.std(), 0.3 + 0.4 * flat)
    img = np.repeat(grey[..., None], 3, -1).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    hole = np.abs(xx - (70 + 0.1 * yy)) < 8
    inner = ndimage.binary_erosion(hole, iterations=4)
    magenta = np.array([0.9, 0.1, 0.8], np.float32)
    filled = texture_fill(np.where(hole[..., None], magenta, img), ~hole, hole, seed=0)
    assert 0.7 <= gradient(filled)[inner].mean() / gradient(img)[inner].mean() <= 1.3
    assert np.linalg.norm(filled[hole] - magenta, axis=-1).min() > 0.5  # no occluder colour anywhere in it
    assert np.array_equal(filled, texture_fill(img, ~hole, hole, seed=0))


def test_the_same_seed_gives_the_same_fill_and_another_seed_another(gravel):
    img, hole = gravel
    a = texture_fill(img, ~hole, hole, seed=3)
    assert np.array_equal(a, texture_fill(img, ~hole, hole, seed=3))
    assert not np.array_equal(a[hole], texture_fill(img, ~hole, hole, seed=4)[hole])


def test_only_sources_are_copied_never_the_hole_or_other_pixels(gravel):
    img, hole = gravel
    picture = img.copy()
    picture[hole] = (1.0, 0.0, 1.0)  # what covers the hole: must leave no trace
    not_source = np.zeros(hole.shape, bool)
    not_source[:, :20] = True  # a strip that belongs to something else (another layer)
    picture[not_source] = (1.0, 0.0, 0.0)
    filled = texture_fill(picture, ~hole & ~not_source, hole, seed=0)
    colour = filled[hole]
    assert (colour[:, 0] - np.maximum(colour[:, 1], colour[:, 2])).max() < 0.1  # no magenta, no red
    assert np.array_equal(filled, texture_fill(np.where(hole[..., None], 0.5, picture), ~hole & ~not_source, hole,
                                               seed=0))  # the hole's own values play no part


def test_the_fill_prefers_sources_at_the_holes_depth():
    """Top: warm stones at depth 0.2; bottom: cool stones at depth 0.6. A hole inside the top half whose depth says
    it lies at the bottom's distance takes the bottom's texture; without depth, the surroundings' (top)."""
    h, w = 96, 128
    img = stones(h, w)
    top = np.arange(h)[:, None] < h // 2
    img = np.where(top[..., None], img * np.array([1.0, 0.7, 0.4], np.float32),
                   img * np.array([0.4, 0.7, 1.0], np.float32))
    depth = np.where(top, 0.2, 0.6) * np.ones((1, w), np.float32)
    hole = disc(h, w, 22, 64, 14)
    hole_depth = np.where(hole, 0.6, depth).astype(np.float32)
    with_depth = texture_fill(img, ~hole, hole, depth=hole_depth, seed=0,
                              settings=TextureSettings(depth_weight=50.0, tone_sigma=0.0, feather=0.0))
    without = texture_fill(img, ~hole, hole, seed=0, settings=TextureSettings(tone_sigma=0.0, feather=0.0))

    def coolness(rgb):
        return float((rgb[hole][:, 2] - rgb[hole][:, 0]).mean())

    assert coolness(with_depth) > 0.05 > -0.05 > coolness(without)


def test_a_line_through_the_hole_carries_on_at_its_place():
    """A horizon (dark stones above, light below) crossing a disc hole: inside the hole the change from dark to
    light happens at the horizon's row."""
    h, w = 96, 128
    img = stones(h, w, seed=1)
    horizon = 52
    img[:horizon] *= 0.4
    hole = disc(h, w, 50, 64, 22)
    filled = texture_fill(img, ~hole, hole, seed=0)
    columns = slice(54, 75)
    rows = filled[:, columns].mean(axis=(1, 2))
    above, below = rows[34:horizon - 3].mean(), rows[horizon + 3:68].mean()
    assert below > 1.4 * above
    step = int(np.argmax(np.diff(rows[30:72]))) + 31  # the first row of the light side
    assert abs(step - horizon) <= 2


def test_where_no_patch_fits_in_the_sources_the_smooth_fill_is_used():
    img = stones(40, 40)
    source = np.zeros((40, 40), bool)
    source[::3, ::3] = True  # scattered pixels: no 7x7 patch of sources anywhere
    hole = ~source
    assert np.allclose(texture_fill(img, source, hole), push_pull(img, source.astype(np.float32)))


def test_bad_input_is_refused_in_one_line():
    img = stones(32, 32)
    hole = disc(32, 32, 16, 16, 5)
    with pytest.raises(ValueError, match="must match"):
        texture_fill(img, ~hole[:, :20], hole)
    with pytest.raises(ValueError, match="both a source and part of the hole"):
        texture_fill(img, np.ones_like(hole), hole)
    with pytest.raises(ValueError, match="no source pixel"):
        texture_fill(img, np.zeros_like(hole), hole)
    with pytest.raises(ValueError, match="depth"):
        texture_fill(img, ~hole, hole, depth=np.zeros((3, 3)))
    for bad in (dict(patch=4), dict(patch=17), dict(depth_weight=-1.0), dict(tone_sigma=40.0), dict(feather=-1.0),
                dict(scans=0), dict(fine_rounds=11), dict(samples=True), dict(texture_weight=-1.0),
                dict(texture_weight=101.0), dict(texture_window=4), dict(texture_window=17)):
        with pytest.raises(ValueError):
            TextureSettings(**bad)
    assert FILLS == ("texture", "smooth") and check_fill("smooth") == "smooth"
    with pytest.raises(ValueError, match="unknown fill 'blurry'; choose one of texture, smooth"):
        check_fill("blurry")


def test_the_fill_bench_counts_a_target_met_only_when_every_seed_meets_it():
    """bench_fill.py scores the texture fill over several seeds: one seed out of range fails a case, one seed past
    the SSIM limit fails its photo, and the worst gap over the seeds is what it reports."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_fill", Path(__file__).parents[1] / "bench" / "bench_fill.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def row(kind, method, seed, texture, ssim=0.5, psnr=15.0):
        return {"photo": "p", "occluder": kind, "method": method, "seed": seed, "psnr": psnr, "ssim": ssim,
                "texture": texture, "ghost": 0.0, "seconds": 0.1, "cpu_seconds": 0.1}

    rows = [row(kind, "smooth", None, 0.1) for kind in ("disc", "bar")]
    rows += [row("disc", "oracle", None, 0.9), row("bar", "oracle", None, 0.9)]
    rows += [row("disc", "texture", s, t) for s, t in ((0, 0.8), (1, 0.9), (2, 1.0))]
    rows += [row("bar", "texture", s, t) for s, t in ((0, 0.8), (1, 0.6), (2, 0.75))]
    cases = {c["occluder"]: c for c in bench.per_case(rows)}
    assert cases["disc"]["verdict"] == "met" and cases["disc"]["texture_min"] == 0.8
    assert cases["bar"]["verdict"] == "missed" and cases["bar"]["met_seeds"] == 2
    assert abs(cases["bar"]["texture"] - 0.717) < 1e-3 and cases["bar"]["texture_max"] == 0.8
    # Texture in range on every seed; seed 1 alone is 0.12 SSIM and 2.5 dB below smooth on one case.
    rows = [r if r["occluder"] == "disc" or r["method"] != "texture" else {**r, "texture": 0.9} for r in rows]
    _, photos = bench.summary(rows)
    assert photos[0]["meets"] and photos[0]["met_seeds"] == 3
    rows = [{**r, "ssim": 0.26, "psnr": 10.0} if r["method"] == "texture" and r["seed"] == 1 and r["occluder"] == "bar"
            else r for r in rows]
    _, photos = bench.summary(rows)
    assert not photos[0]["meets"] and photos[0]["met_seeds"] == 2
    assert photos[0]["ssim_gap"] == -0.12 and photos[0]["ssim_gap_seed"] == 1
    assert photos[0]["psnr_gap"] == -2.5 and photos[0]["psnr_gap_seed"] == 1
