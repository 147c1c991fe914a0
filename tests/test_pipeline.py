"""The whole draft pipeline in-process: prompt -> stack -> files, regenerate, progress, all-or-nothing writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layers.backends import get_backend, resolve_backend
from layers.pipeline import GenerateOptions, generate, load_result, regenerate_layer, write_outputs

ROOT = Path(__file__).resolve().parents[1]
PROMPT = (ROOT / "seeds" / "002_velvet_planetarium.txt").read_text(encoding="utf-8")
SMALL = dict(width=192, height=320)


@pytest.fixture(scope="module")
def draft():
    return get_backend("draft")


@pytest.fixture(scope="module")
def result(draft):
    return generate(PROMPT, draft, seed=4, options=GenerateOptions(frames=8), **SMALL)


def test_stack_is_three_layers_back_to_front_with_an_opaque_background(result):
    stack = result.stack
    assert stack.names == ("background", "midground", "foreground")
    assert stack.size == (192, 320)
    assert stack["background"].alpha.min() == 1.0
    near = [layer.nearness for layer in stack]
    assert near[0] < near[1] < near[2]


def test_alpha_follows_the_layer_priors(result):
    for name in ("midground", "foreground"):
        alpha, prior = result.stack[name].alpha, result.depths[name].prior
        assert alpha[prior > 0.9].mean() > 0.85, f"{name}: content kept"
        assert alpha[prior < 0.05].mean() < 0.05, f"{name}: backdrop removed"


def test_two_figures_in_the_prompt_give_two_figures(result):
    from scipy import ndimage

    _, count = ndimage.label(result.stack["midground"].alpha > 0.5)
    assert result.plan.figures == 2
    assert count >= 2


def test_progress_is_reported_in_order(draft, tmp_path):
    seen = []
    res = generate("a temple, a monk, leaves", draft, **SMALL, options=GenerateOptions(frames=4),
                   progress=lambda f, text: seen.append((f, text)))
    write_outputs(res, tmp_path / "o", progress=lambda f, text: seen.append((f, text)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    texts = " | ".join(t for _, t in seen)
    for word in ("depth", "matting midground", "stack.psd", "parallax.mp4"):
        assert word in texts, word


def test_regenerate_changes_one_layer_only(result, draft):
    new = regenerate_layer(result, "foreground", draft, seed=99)
    assert new.stack["background"] is result.stack["background"]
    assert new.stack["midground"] is result.stack["midground"]
    assert new.plan.layer("foreground").seed == 99
    assert not np.array_equal(np.asarray(new.stack["foreground"].rgba), np.asarray(result.stack["foreground"].rgba))
    same = regenerate_layer(result, "foreground", draft, seed=result.plan.layer("foreground").seed)
    assert np.array_equal(np.asarray(same.stack["foreground"].rgba), np.asarray(result.stack["foreground"].rgba))


def test_a_fill_is_refused_for_a_stack_rendered_layer_by_layer(result, draft):
    with pytest.raises(ValueError, match="rendered on the scaffold"):
        regenerate_layer(result, "background", draft, fill="texture")
    with pytest.raises(ValueError, match="unknown fill"):
        regenerate_layer(result, "background", draft, fill="blurry")


def test_regenerate_with_a_new_prompt(result, draft):
    new = regenerate_layer(result, "midground", draft, prompt="a single dancer in teal silk")
    assert new.plan.layer("midground").prompt.startswith("a single dancer in teal silk")
    assert new.plan.layer("background") == result.plan.layer("background")


def test_written_stack_loads_back_identically(result, tmp_path):
    write_outputs(result, tmp_path / "o")
    loaded = load_result(tmp_path / "o")
    assert loaded.plan == result.plan
    for a, b in zip(loaded.stack, result.stack):
        assert a.name == b.name
        assert np.array_equal(np.asarray(a.rgba), np.asarray(b.rgba))
        assert np.abs(a.depth - b.depth).max() < 1e-4


def test_a_failed_export_leaves_nothing_behind(result, tmp_path, monkeypatch):
    out = tmp_path / "o"
    write_outputs(result, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("layers.pipeline.export_ora", broken)
    with pytest.raises(ValueError, match="No space left"):
        write_outputs(result, out)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before, "the earlier complete output is untouched"
    assert [p.name for p in tmp_path.iterdir()] == ["o"], "no staging folder left"
    with pytest.raises(ValueError):
        write_outputs(result, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_options_are_checked():
    with pytest.raises(ValueError, match="steps"):
        GenerateOptions(steps=0)
    with pytest.raises(ValueError, match="spiral"):
        GenerateOptions(parallax="spiral")
    with pytest.raises(ValueError, match="strengths"):
        GenerateOptions(strengths=(1.0, 3.0, 1.0))
    with pytest.raises(ValueError, match="thresholds"):
        GenerateOptions(thresholds=(0.7, 0.3))


def test_auto_backend_falls_back_to_draft_with_a_notice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    backend, notice = resolve_backend("auto")
    assert backend.name == "draft"
    assert notice and "Draft mode" in notice
    with pytest.raises(ValueError, match="choose one of"):
        resolve_backend("midjourney")


def test_depth_map_bands_become_layers(draft):
    depth = np.tile(np.linspace(0.0, 1.0, 192, dtype=np.float32), (320, 1))  # left far, right near
    res = generate("a hall, a figure, rocks", draft, **SMALL, depth_map=depth, options=GenerateOptions(frames=4))
    fg = res.stack["foreground"].alpha
    assert fg[:, -30:].mean() > 0.8 and fg[:, :60].mean() < 0.05
    assert res.depth_source == "map"
