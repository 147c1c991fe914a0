"""Depth from a reference image, through transformers' real depth-estimation pipeline on tiny saved models.

The tiny estimators have random weights, so what their maps show means nothing; what is tested is the
contract around them: the size, dtype and range of the map, 1 = near for relative and metric models alike,
loading from a folder like `--depth-model DIR`, caching, and the errors.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image

from layers.backends.base import ModelUnavailableError
from layers.estimate import DEFAULT_DEPTH_MODEL, _ESTIMATORS, _normalise, estimate_depth


def reference(w=90, h=60, seed=0) -> Image.Image:
    """A reference photo stand-in: smooth colour gradients plus noise, at a size no patch grid divides."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w, y / h, 1 - x / w], -1) * 200 + rng.rand(h, w, 3) * 55
    return Image.fromarray(img.astype(np.uint8))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.parametrize("which", ["tiny_depth_anything_dir", "tiny_dpt_dir"])
def test_map_is_float32_at_the_image_size_stretched_to_0_1(which, request):
    folder = request.getfixturevalue(which)
    depth = estimate_depth(reference(), model=str(folder), device="cpu")
    assert depth.shape == (60, 90) and depth.dtype == np.float32
    assert depth.min() == 0.0 and depth.max() == 1.0
    assert depth.std() > 0.05  # a map, not a constant
    # a different image gives a different map: the network sees the pixels
    other = estimate_depth(reference(seed=1).transpose(Image.FLIP_LEFT_RIGHT), model=str(folder), device="cpu")
    assert np.abs(other - depth).mean() > 0.01


def test_metric_models_are_inverted_so_near_is_one(tiny_depth_anything_dir, tiny_depth_anything_metric_dir):
    # Same weights; the relative head outputs inverse depth (larger = nearer), the metric head a distance
    # (larger = farther), both monotonic in the same feature. After the 1 = near convention the two maps
    # must rank pixels in opposite order if the metric one were left as is, and in the same order here.
    relative = estimate_depth(reference(), model=str(tiny_depth_anything_dir), device="cpu")
    metric = estimate_depth(reference(), model=str(tiny_depth_anything_metric_dir), device="cpu")
    keep = relative > 0  # the relative head ends in a ReLU: ties at 0 carry no ranking
    assert keep.mean() > 0.5
    assert spearman(relative[keep], metric[keep]) < -0.99


def test_normalisation_convention_on_known_maps():
    near_high = np.array([[0.0, 2.0], [4.0, 8.0]], np.float32)  # e.g. inverse depth
    np.testing.assert_allclose(_normalise(near_high, (2, 2), True), [[0, 0.25], [0.5, 1]])
    distance = np.array([[1.0, 3.0], [5.0, 9.0]], np.float32)  # metres: the 9 m pixel is the farthest
    np.testing.assert_allclose(_normalise(distance, (2, 2), False), [[1, 0.75], [0.5, 0]])
    assert not _normalise(np.full((3, 3), 7.0, np.float32), (3, 3), True).any()  # no relief: all far
    resized = _normalise(np.arange(6, dtype=np.float32).reshape(2, 3), (30, 20), True)
    assert resized.shape == (20, 30) and resized.min() >= 0 and resized.max() <= 1


def test_inputs_arrays_and_paths_give_the_same_map_and_the_estimator_is_loaded_once(tiny_dpt_dir, tmp_path):
    img = reference()
    path = tmp_path / "ref.png"
    img.save(path)
    from_pil = estimate_depth(img, model=str(tiny_dpt_dir), device="cpu")
    cached = {k: v for k, v in _ESTIMATORS.items() if k[1] == str(tiny_dpt_dir)}
    from_array = estimate_depth(np.asarray(img), model=str(tiny_dpt_dir), device="cpu")
    from_path = estimate_depth(str(path), model=str(tiny_dpt_dir), device="cpu")
    np.testing.assert_array_equal(from_pil, from_array)
    np.testing.assert_array_equal(from_pil, from_path)
    assert {k: v for k, v in _ESTIMATORS.items() if k[1] == str(tiny_dpt_dir)} == cached and len(cached) == 1
    rgba = img.convert("RGBA")
    np.testing.assert_array_equal(estimate_depth(rgba, model=str(tiny_dpt_dir), device="cpu"), from_pil)


def test_missing_weights_give_one_line_naming_the_model_and_how_to_fetch_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as err:
        estimate_depth(reference(), device="cpu")
    text = str(err.value)
    assert "\n" not in text and f"hf download {DEFAULT_DEPTH_MODEL}" in text and "HF_HOME" in text
    assert f"huggingface-cli download {DEFAULT_DEPTH_MODEL}" in text
    with pytest.raises(ModelUnavailableError, match="depth model folder"):
        estimate_depth(reference(), model=str(tmp_path), device="cpu")


def test_bad_inputs_are_refused_with_the_bad_value(tiny_dpt_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown depth estimator 'sonar'"):
        estimate_depth(reference(), estimator="sonar")
    with pytest.raises(ValueError, match="shape"):
        estimate_depth(np.zeros((4, 4, 5), np.uint8), model=str(tiny_dpt_dir))
    with pytest.raises(ValueError, match="not found"):
        estimate_depth(tmp_path / "nope.png", model=str(tiny_dpt_dir))


@pytest.mark.skipif(importlib.util.find_spec("controlnet_aux") is not None,
                    reason="controlnet_aux is installed here: the detectors load instead of failing")
@pytest.mark.parametrize("estimator", ["midas", "zoe", "leres"])
def test_controlnet_aux_estimators_say_how_to_install_them(estimator):
    with pytest.raises(ValueError, match="controlnet_aux is not installed; pip install -r requirements-extra.txt"):
        estimate_depth(reference(), estimator=estimator)
