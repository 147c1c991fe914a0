"""Compose, then layer: a whole-scene plate cut into layers, each rendered from it, matted and harmonised.

Everything runs through the user's path (generate / regenerate_layer / write_outputs / load_result) on a tiny SD1.5
ControlNet pipeline and a tiny Depth Anything estimator saved in real formats, and rembg's real u2net_custom session
on a tiny ONNX segmenter. Random weights: the tests compare pictures and maps with each other, not their content.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from layers.backends.diffusers import DiffusersBackend
from layers.compose import combined_scaffold, matte_band
from layers.decompose import decompose
from layers.depth import build_depth_maps
from layers.estimate import estimate_depth
from layers.pipeline import GenerateOptions, generate, load_result, regenerate_layer, write_outputs

PROMPT = ("Far beyond the gate, a ruined aqueduct under moonlight, a knight kneels in the middle ground "
          "holding a lantern, sparks and broken stones scattered in the foreground")
W, H = 96, 128


def options(tiny_depth_anything_dir, **change):
    base = dict(steps=4, composition="plate", depth_model=str(tiny_depth_anything_dir), matte_model="closed-form",
                video=False, frames=2)
    base.update(change)
    return GenerateOptions(**base)


def rgba(layer) -> np.ndarray:
    return np.asarray(layer.rgba, dtype=np.uint8)


def same_stack(a, b) -> list[bool]:
    return [np.array_equal(rgba(x), rgba(y)) for x, y in zip(a.stack, b.stack)]


@pytest.fixture(scope="module")
def backend(tiny_sd15_dir):
    return DiffusersBackend(model=str(tiny_sd15_dir))


@pytest.fixture(scope="module")
def plated(backend, tiny_depth_anything_dir):
    return generate(PROMPT, backend, seed=5, width=W, height=H, options=options(tiny_depth_anything_dir))


def test_the_plate_is_one_render_of_the_whole_prompt_at_the_scene_seed(plated):
    info = plated.render_info
    assert info["composition"] == "plate" and plated.plate.size == (W, H)
    plate = info["plate"]
    assert plate["seed"] == 5 and plate["hint_strength"] == 0.3 and plate["prompt"] == PROMPT
    seen = plate["render"]["layers"]["plate"]
    # the tiny tokenizer spends a token per letter: the whole prompt takes several 77-token chunks, none cut
    assert seen["chunks"] >= 2 and seen["truncated_tokens"] == 0
    assert "".join(seen["chunk_texts"]).replace(" ", "") == PROMPT.replace(" ", "").lower()
    assert "isolated" not in seen["prompt"]  # the plate is a scene, not a subject on a backdrop


def test_layers_are_conditioned_on_the_bands_of_the_estimated_depth_of_the_plate(plated, tiny_depth_anything_dir):
    depth = estimate_depth(plated.plate, model=str(tiny_depth_anything_dir))
    assert np.allclose(depth, plated.plate_depth, atol=1 / 65535)  # kept as depth/plate.png stores it
    parts = decompose(plated.plate, plated.plate_depth, layers=3)
    assert plated.render_info["decompose"]["thresholds"] == [round(float(t), 6) for t in parts.thresholds]
    scaffold = build_depth_maps(plated.plan)
    for name in ("midground", "foreground"):
        band = parts.stack[name].alpha
        control = plated.depths[name].control
        assert np.allclose(control, parts.stack[name].depth * band, atol=1e-6)
        assert np.allclose(plated.depths[name].prior, band)
        assert not np.allclose(control, scaffold[name].control, atol=0.05)  # not the plan's mannequin
    assert np.allclose(plated.depths["background"].control, parts.stack["background"].depth, atol=1e-6)


def test_the_background_is_opaque_everywhere_and_its_hidden_part_was_inpainted(plated):
    assert (rgba(plated.stack["background"])[..., 3] == 255).all()
    calls = plated.render_info["calls"]
    assert {"layers": ["background"], "pipeline": "StableDiffusionControlNetInpaintPipeline", "denoise": 1.0} \
        .items() <= calls[0].items()
    assert calls[1]["layers"] == ["midground", "foreground"] and calls[1]["denoise"] == 0.55
    assert calls[1]["pipeline"] == "StableDiffusionControlNetImg2ImgPipeline" and calls[1]["batching"] == "batched"


def test_same_seed_gives_the_same_stack_and_a_new_layer_seed_changes_only_that_layer(backend, plated,
                                                                                      tiny_depth_anything_dir):
    again = generate(PROMPT, backend, seed=5, width=W, height=H, options=options(tiny_depth_anything_dir))
    assert all(same_stack(plated, again)) and np.array_equal(np.asarray(plated.plate), np.asarray(again.plate))
    changed = regenerate_layer(plated, "midground", backend, seed=1234)
    assert same_stack(plated, changed) == [True, False, True]
    assert changed.plan.layer("midground").seed == 1234
    assert changed.render_info["regenerated"][-1]["layer"] == "midground"
    # the regenerated layer was harmonised again; its alpha is its own new matte
    assert changed.render_info["regenerated"][-1]["harmonize"]["layers"] == ["midground"]


def test_regenerating_the_background_with_another_fill_cuts_the_plate_with_it(backend, plated):
    changed = regenerate_layer(plated, "background", backend, seed=21, fill="smooth")
    assert changed.render_info["regenerated"][-1]["fill"] == "smooth"
    assert changed.options.fill == "texture"  # the stack's own, what its other layers were cut with
    assert same_stack(plated, changed) == [False, True, True]


def test_regenerate_from_the_written_folder_keeps_the_other_layers_byte_identical(backend, plated, tmp_path):
    files = write_outputs(plated, tmp_path / "stack")
    assert files["plate"].is_file() and files["plate_depth"].is_file()
    loaded = load_result(tmp_path / "stack")
    assert np.array_equal(np.asarray(loaded.plate), np.asarray(plated.plate))
    changed = regenerate_layer(loaded, "foreground", backend, seed=77)
    assert same_stack(loaded, changed) == [True, True, False]
    written = write_outputs(changed, tmp_path / "stack")
    for name in ("background", "midground"):
        with Image.open(written[f"layers/{name}"]) as a, Image.open(files[f"layers/{name}"]) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_harmonising_keeps_every_alpha_byte_identical_and_colour_changes_inside_each_layer(
        backend, plated, tiny_depth_anything_dir):
    raw = generate(PROMPT, backend, seed=5, width=W, height=H, options=options(tiny_depth_anything_dir, harmonize=0.0))
    assert raw.render_info["harmonize"]["strength"] == 0.0
    for before, after in zip(raw.stack, plated.stack):
        a, b = rgba(before), rgba(after)
        assert np.array_equal(a[..., 3], b[..., 3]), before.name
        clear = a[..., 3] == 0
        assert np.array_equal(a[clear], b[clear])  # nothing painted where the layer is not
        assert np.abs(a[..., :3].astype(int) - b[..., :3]).mean() > 0  # and its own pixels were harmonised
    assert plated.render_info["harmonize"]["strength"] == 0.25


def test_the_rembg_union_keeps_planned_debris_that_a_one_blob_segmenter_drops(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))
    from layers.matte import MatteSettings, matte_layer, new_matte_session

    size = 96
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    figure = (yy - 48) ** 2 + (xx - 48) ** 2 < 18 ** 2
    specks = [(10, 10), (12, 84), (84, 8), (86, 86), (48, 6)]
    debris = np.zeros_like(figure)
    for y, x in specks:
        debris |= (yy - y) ** 2 + (xx - x) ** 2 < 3.5 ** 2
    picture = np.full((size, size, 3), 40, np.uint8)
    picture[figure | debris] = 230
    image = Image.fromarray(picture, "RGB")
    band = (figure | debris).astype(np.float32)

    session = new_matte_session(_one_blob_segmenter(tmp_path / "u2net" / "one_blob.onnx"))
    # The segmenter's mask alone (near the band): what matting trusted before keying.
    alone = matte_layer(image, band, session=session, settings=MatteSettings(method="closed-form"))
    union = np.asarray(matte_band(image, band, session).getchannel("A"), dtype=np.float32) / 255.0
    assert alone[figure].mean() > 0.6 and union[figure].mean() > 0.9
    for y, x in specks:  # the segmenter drops every speck; the union keeps every one
        assert alone[y, x] < 0.2 and union[y, x] > 0.8, (y, x)
    # Inside what was painted the union never keeps less than the segmenter; outside it, keying's exact edge wins
    # over the segmenter's 320 px blur (letting the mask raise every pixel would thicken every outline).
    painted = figure | debris
    assert (union[painted] >= alone[painted] - 1e-6).all()
    assert union[~painted].max() < 0.1


def _one_blob_segmenter(path):
    """A tiny salient-object segmenter in U^2-Net's I/O: bright pixels, weighted by a centred window, so it keeps
    the one central subject and drops what lies near the edges (as IS-Net did with scattered debris)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:320, 0:320].astype(np.float32)
    window = np.exp(-(((yy - 160) ** 2 + (xx - 160) ** 2) / (2 * 70.0 ** 2)))[None, None].astype(np.float32)
    w = np.full((1, 3, 1, 1), 8.0, np.float32)  # rembg normalises to ~[-2, 2]: bright -> large
    b = np.full((1,), -4.0, np.float32)
    nodes = [helper.make_node("Conv", ["input.1", "W", "B"], ["c"]), helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Mul", ["s", "window"], ["m"]), helper.make_node("Clip", ["m", "lo", "hi"], ["mask"])]
    graph = helper.make_graph(
        nodes, "one_blob", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
                     numpy_helper.from_array(window, "window"), numpy_helper.from_array(np.float32(0.0), "lo"),
                     numpy_helper.from_array(np.float32(1.0), "hi")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def test_without_an_estimator_the_scaffold_flow_runs_with_a_notice(backend, tmp_path):
    result = generate(PROMPT, backend, seed=5, width=W, height=H,
                      options=options("unused", depth_model=str(tmp_path / "no-such-estimator")))
    assert result.render_info["composition"] == "scaffold" and result.plate is None
    (notice,) = result.render_info["notices"]
    assert notice.startswith("Scaffold composition: the plate's depth cannot be estimated") and "\n" not in notice
    manifest_notices = write_outputs(result, tmp_path / "out")["manifest"].read_text()
    assert "Scaffold composition" in manifest_notices


def test_without_rembg_weights_offline_the_closed_form_matte_is_used_with_a_notice(
        backend, tiny_depth_anything_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = generate(PROMPT, backend, seed=5, width=W, height=H,
                      options=options(tiny_depth_anything_dir, matte_model=None, harmonize=0.0))
    assert result.render_info["composition"] == "plate"
    assert result.render_info["matte_model"] == "closed-form"
    (notice,) = result.render_info["notices"]
    assert notice.startswith("Closed-form matting: rembg model 'isnet-general-use' unavailable")


def test_a_first_use_of_the_matte_model_says_it_downloads_and_a_failed_download_falls_back(
        backend, tiny_depth_anything_dir, tmp_path, monkeypatch, capsys):
    """rembg fetches isnet-general-use (~170 MB) on first use: the progress bar and the CLI say so before its own
    bar; with no route to the download, the stack is matted offline with a one-line notice."""
    import socket

    from layers.cli import _say_downloads
    from layers.models import add_load_listener, remove_load_listener

    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    lookups = []

    def no_lookup(host, *a, **k):
        lookups.append(host)
        raise socket.gaierror("name lookup blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    texts = []
    add_load_listener(_say_downloads)
    try:
        result = generate(PROMPT, backend, seed=5, width=W, height=H,
                          options=options(tiny_depth_anything_dir, matte_model=None, harmonize=0.0),
                          progress=lambda fraction, text: texts.append(text))
    finally:
        remove_load_listener(_say_downloads)
    line = f"downloading matte model isnet-general-use into {tmp_path / 'empty'}"
    assert any(text.startswith(line) for text in texts)
    assert f"layercake: {line}" in capsys.readouterr().err
    assert lookups  # it did try
    assert result.render_info["matte_model"] == "closed-form"
    (notice,) = result.render_info["notices"]
    assert notice.startswith("Closed-form matting: rembg model 'isnet-general-use' unavailable") and "\n" not in notice


def test_the_manifest_records_how_the_stack_was_composed(plated, tmp_path, tiny_depth_anything_dir):
    import json

    manifest = json.loads(write_outputs(plated, tmp_path / "m")["manifest"].read_text())
    render = manifest["render"]
    assert manifest["composition"] == "plate" and manifest["files"]["plate"] == "plate.png"
    assert render["plate"]["seed"] == 5 and render["estimator"] == str(tiny_depth_anything_dir)
    assert len(render["decompose"]["thresholds"]) == 2 and render["strengths"] == [0.6, 1.0, 1.0]
    assert render["layer_denoise"] == 0.55 and render["matte_model"] == "closed-form"
    assert render["harmonize"]["strength"] == 0.25
    assert manifest["options"]["composition"] == "plate"
    assert manifest["options"]["fill"] == "texture" == render["compose_settings"]["fill"] == render["decompose"]["fill"]


def test_the_background_inpaint_starts_from_the_chosen_fill():
    """The plate cut into layers with each fill (no model needed): the background's inpaint request starts from
    patches of the background's own texture, or from its smooth blend."""
    from layers.compose import ComposeSettings, _cut, _layer_request
    from layers.plan import plan_scene

    plan = plan_scene(PROMPT, 5, width=W, height=H)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W]
    plate = (96 + 96 * ((x // 4 + y // 4) % 2)[..., None] + rng.integers(0, 32, (H, W, 3))).astype(np.uint8)
    depth = np.where((x - 48) ** 2 + (y - 64) ** 2 < 24 ** 2, 0.9, np.where(y > 100, 0.5, 0.1)).astype(np.float32)
    starts = {}
    for fill in ("texture", "smooth"):
        settings = ComposeSettings(fill=fill, fill_denoise=0.75)
        parts = _cut(Image.fromarray(plate), depth, plan, settings)
        assert parts.info["fill"] == fill
        request = _layer_request(plan, parts, "background", 0.6, settings)
        hidden = parts.filled["background"]
        assert request.mask is not None and request.denoise == 0.75
        start = np.asarray(request.image, np.float32)
        assert np.array_equal(start, np.asarray(parts.stack["background"].rgba.convert("RGB"), np.float32))
        gy, gx = np.gradient(start.mean(-1))
        starts[fill] = float(np.hypot(gx, gy)[hidden].mean())
    assert starts["texture"] > 3 * starts["smooth"]
    with pytest.raises(ValueError, match="unknown fill"):
        GenerateOptions(fill="blurry")
    assert GenerateOptions(fill="smooth").compose_settings().fill == "smooth"


def test_a_background_inpainted_from_noise_is_cut_with_the_smooth_fill_and_the_midground_keeps_its_texture():
    """At a fill denoise of 1 the background's hidden part starts from noise: the texture fill's pixels would never
    be seen there, so the cut gives the background the smooth fill (a fraction of the time); the midground, which
    is repainted from its colours, keeps the texture fill."""
    from layers.compose import ComposeSettings, _cut, _layer_request
    from layers.plan import plan_scene

    plan = plan_scene(PROMPT, 5, width=W, height=H)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W]
    plate = (96 + 96 * ((x // 4 + y // 4) % 2)[..., None] + rng.integers(0, 32, (H, W, 3))).astype(np.uint8)
    depth = np.where((x - 48) ** 2 + (y - 64) ** 2 < 20 ** 2, 0.9,
                     np.where(np.abs(x - 48) < 30, 0.5, 0.1)).astype(np.float32)
    cut = {d: _cut(Image.fromarray(plate), depth, plan, ComposeSettings(fill="texture", fill_denoise=d))
           for d in (1.0, 0.75)}
    smooth = _cut(Image.fromarray(plate), depth, plan, ComposeSettings(fill="smooth", fill_denoise=1.0))
    assert cut[1.0].info["smooth"] == ["background"] and "background" not in cut[1.0].info["seeds"]
    assert "smooth" not in cut[0.75].info and "background" in cut[0.75].info["seeds"]
    assert cut[1.0].filled["background"].any() and cut[1.0].filled["midground"].any()

    def colour(parts, name):
        return np.asarray(parts.stack[name].rgba.convert("RGB"))

    assert np.array_equal(colour(cut[1.0], "background"), colour(smooth, "background"))
    assert not np.array_equal(colour(cut[0.75], "background"), colour(smooth, "background"))
    assert np.array_equal(colour(cut[1.0], "midground"), colour(cut[0.75], "midground"))
    assert not np.array_equal(colour(cut[1.0], "midground"), colour(smooth, "midground"))
    request = _layer_request(plan, cut[1.0], "background", 0.6, ComposeSettings(fill_denoise=1.0))
    assert request.denoise == 1.0 and request.mask is not None
    with pytest.raises(ValueError, match="discarded names no layer of background, midground, foreground: sky"):
        decompose(Image.fromarray(plate), depth, layers=3, discarded=("sky",))


def test_draft_mode_keeps_the_scaffold_and_plate_needs_a_model(tiny_depth_anything_dir):
    from layers.backends.draft import DraftBackend

    draft = DraftBackend()
    result = generate(PROMPT, draft, seed=5, width=W, height=H, options=GenerateOptions(video=False))
    assert result.render_info["composition"] == "scaffold" and result.plate is None
    with pytest.raises(ValueError, match="composition 'plate' needs a model backend"):
        generate(PROMPT, draft, seed=5, width=W, height=H, options=options(tiny_depth_anything_dir))
    with pytest.raises(ValueError, match="unknown composition 'layered'"):
        GenerateOptions(composition="layered")
    with pytest.raises(ValueError, match=r"layer_denoise must be in \(0, 1\], got 0.0"):
        GenerateOptions(layer_denoise=0.0)


def test_the_plate_hint_is_the_plans_scaffold_combined_back_to_front(plated):
    scaffold = build_depth_maps(plated.plan)
    hint = combined_scaffold(scaffold)
    fg = scaffold["foreground"].prior > 0.99
    assert np.allclose(hint[fg], scaffold["foreground"].control[fg], atol=0.01)
    empty = (scaffold["foreground"].prior < 0.01) & (scaffold["midground"].prior < 0.01)
    assert np.allclose(hint[empty], scaffold["background"].control[empty], atol=0.01)
    assert dataclasses.is_dataclass(plated.options) and plated.options.plate_hint == 0.3


def test_the_cli_composes_from_a_plate_by_default_in_model_mode_and_regenerates_one_layer(
        tmp_path, tiny_sd15_dir, tiny_depth_anything_dir, capsys):
    import hashlib
    import json

    from layers.cli import main

    out = tmp_path / "plate"
    code = main(["generate", "--prompt", PROMPT, "--backend", "diffusers", "--model", str(tiny_sd15_dir),
                 "--depth-model", str(tiny_depth_anything_dir), "--matte-model", "closed-form", "--steps", "4",
                 "--width", str(W), "--height", str(H), "--no-video", "--no-harmonize", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["composition"] == "plate" and (out / "plate.png").is_file()
    assert manifest["render"]["harmonize"]["strength"] == 0.0 and manifest["options"]["harmonize"] == 0.0

    def digest(rel):
        return hashlib.sha256((out / rel).read_bytes()).hexdigest()

    before = {n: digest(f"layers/{n}.png") for n in ("background", "midground", "foreground")}
    # A local model folder is named again (a received manifest never picks what to load from this machine).
    assert main(["regenerate", "--from", str(out), "--layer", "background", "--seed", "9",
                 "--model", str(tiny_sd15_dir)]) == 0
    after = {n: digest(f"layers/{n}.png") for n in before}
    assert [after[n] == before[n] for n in before] == [False, True, True]
    # the scaffold composition is still there on request, and bad values are one line, exit 2
    assert main(["generate", "--prompt", PROMPT, "--backend", "draft", "--composition", "plate",
                 "--out", str(tmp_path / "x")]) == 2
    assert "composition 'plate' needs a model backend" in capsys.readouterr().err
    assert main(["generate", "--prompt", PROMPT, "--backend", "draft", "--layer-denoise", "2",
                 "--out", str(tmp_path / "y")]) == 2
    assert "layer_denoise must be in (0, 1], got 2.0" in capsys.readouterr().err
    for flag, value, message in (("--control-end", "0", "control_end must be in (0, 1], got 0.0"),
                                 ("--fill-denoise", "1.5", "fill_denoise must be in (0, 1], got 1.5")):
        assert main(["generate", "--prompt", PROMPT, "--backend", "draft", flag, value,
                     "--out", str(tmp_path / "z")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_a_plate_conditions_a_whole_long_prompt_where_a_layer_is_held_to_its_budget(backend):
    from layers.backends.base import RenderRequest, RenderSettings

    # ~12 chunks of the tiny tokenizer (one token per letter), like a long example prompt with CLIP's
    long = ", ".join(f"a carved stone arch number {i} with ivy" for i in range(24))
    flat = np.zeros((64, 64), np.float32)
    settings = RenderSettings(width=64, height=64, steps=1, guidance=5.0)
    seen = {}
    for name in ("plate", "midground"):
        request = RenderRequest(name=name, prompt=long, negative_prompt="", control=flat, prior=flat, seed=1)
        seen[name] = backend.render([request], settings).info["layers"][name]
    assert seen["plate"]["chunks"] > backend.max_prompt_chunks and seen["plate"]["truncated_tokens"] == 0
    assert seen["midground"]["chunks"] == backend.max_prompt_chunks and seen["midground"]["truncated_tokens"] > 0


def test_the_studio_offers_the_composition_and_shows_the_plate(backend, tiny_depth_anything_dir, tmp_path):
    import app
    from layers.studio import Studio

    studio = Studio(backend, output_root=tmp_path / "outputs", depth_model=str(tiny_depth_anything_dir))
    run = studio.generate(PROMPT, seed=5, width=W, height=H,
                          options=GenerateOptions(steps=4, matte_model="closed-form", video=False, frames=2))
    assert run.summary()["composition"] == "plate" and run.files["plate"].is_file()
    # the new /generate inputs come last with defaults, the plate is the last output
    demo = app.build_demo(studio)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"composition", "matte-model", "plate"} <= ids
    (fn,) = [f for f in demo.fns.values() if getattr(f, "api_name", None) == "generate"]
    assert [getattr(c, "elem_id", None) for c in fn.inputs[-2:]] == ["composition", "matte-model"]
    assert getattr(fn.outputs[-1], "elem_id", None) == "plate"


def test_the_harmonising_pass_reports_its_steps(backend, tiny_depth_anything_dir):
    """On a CPU the pass is one full-size step (seconds): the bar moves through it instead of standing still."""
    texts = []
    generate(PROMPT, backend, seed=5, width=W, height=H, options=options(tiny_depth_anything_dir),
             progress=lambda fraction, text: texts.append((fraction, text)))
    harmonising = [(f, t) for f, t in texts if t.startswith("harmonising: ")]
    assert harmonising and all(0.85 <= f <= 0.9 for f, _ in harmonising)
    assert harmonising[-1][1] == "harmonising: step 1/1"


def test_a_few_step_model_guides_half_its_steps_and_fills_the_background_from_its_surroundings(
        tiny_lcm_dir, tiny_depth_anything_dir, tmp_path):
    """The few-step preset's plate composition: the ControlNet runs in the first half of the plate's and the layers'
    steps only (harmonising: throughout), and the background's hidden part starts from the decomposition's fill
    three steps from the end. Each UNet call and each ControlNet forward that really runs is counted."""
    import json

    lcm = DiffusersBackend(model=str(tiny_lcm_dir))
    chosen = GenerateOptions.for_backend(lcm, composition="plate", depth_model=str(tiny_depth_anything_dir),
                                         matte_model="closed-form", video=False, frames=2)
    assert (chosen.steps, chosen.guidance, chosen.control_end, chosen.fill_denoise) == (4, 8.0, 0.5, 0.75)
    calls = {"unet": [], "controlnet": 0}
    hooks = [lcm.pipe.unet.register_forward_hook(lambda m, a, o: calls["unet"].append(a[0].shape[0])),
             lcm.pipe.controlnet.controlnet_mid_block.register_forward_hook(
                 lambda m, a, o: calls.__setitem__("controlnet", calls["controlnet"] + 1))]
    try:
        result = generate(PROMPT, lcm, seed=5, width=W, height=H, options=chosen)
    finally:
        for hook in hooks:
            hook.remove()
    # plate 4 steps (1 picture), background inpaint 3, midground + foreground 2 (one batch of 2), harmonising 1
    assert calls["unet"] == [1] * 4 + [1] * 3 + [2] * 2 + [1]
    # the ControlNet: plate 2 of 4, background 1 of 3, the pair 1 of 2, harmonising 1 of 1
    assert calls["controlnet"] == 2 + 1 + 1 + 1
    manifest = json.loads(write_outputs(result, tmp_path / "lcm")["manifest"].read_text())
    assert manifest["render"]["compose_settings"]["control_end"] == 0.5
    assert manifest["render"]["fill_denoise"] == 0.75 and manifest["options"]["control_end"] == 0.5
    # the studio's defaults are the model's: 4 steps, not the 25 a full model takes
    from layers.studio import Studio

    studio = Studio(lcm, output_root=tmp_path / "outputs", depth_model=str(tiny_depth_anything_dir))
    assert studio.options() == GenerateOptions.for_backend(lcm)
    assert (studio.options().steps, studio.options().control_end) == (4, 0.5)
    import app

    demo = app.build_demo(studio)
    sliders = {b.label: b.value for b in demo.blocks.values() if type(b).__name__ == "Slider"}
    assert (sliders["Steps"], sliders["Guidance"]) == (4, 8.0)  # the page offers the model's own defaults
    (steps,) = [b for b in demo.blocks.values() if type(b).__name__ == "Slider" and b.label == "Steps"]
    assert (steps.minimum, steps.maximum) == (1, 50)  # no further than LCM's scheduler runs


@pytest.mark.parametrize("steps, change", [(1, {}), (2, {}), (3, {}), (4, dict(layer_denoise=0.1))])
def test_few_steps_or_a_low_denoise_give_a_whole_stack_with_the_steps_each_pass_ran(backend, tiny_depth_anything_dir,
                                                                                    tmp_path, steps, change):
    """One to three steps, or a layer denoise of 0.1, used to end after the plate with "runs no step": every pass
    now runs at least one step, from the noise level its denoise asks, and the manifest says how many it ran."""
    result = generate(PROMPT, backend, seed=5, width=W, height=H,
                      options=options(tiny_depth_anything_dir, steps=steps, formats=("psd",), **change))
    files = write_outputs(result, tmp_path / "out")
    assert {"psd", "manifest"} <= set(files) and (tmp_path / "out" / "plate.png").is_file()
    info = load_result(tmp_path / "out").render_info
    layer_denoise = change.get("layer_denoise", 0.55)
    runs = {tuple(c["layers"]): (c["steps"], c["steps_run"]) for c in info["calls"]}
    assert runs[("background",)] == (steps, steps)  # denoise 1: the schedule asked for, every step of it
    expected = max(1, int(steps * layer_denoise))
    assert runs[("midground", "foreground")][1] == expected
    assert info["harmonize"]["steps_run"] == max(1, int(steps * 0.25)) >= 1
    assert all(info["layers"][name]["steps_run"] >= 1 for name in ("background", "midground", "foreground"))


@pytest.mark.parametrize("change, match", [
    (dict(steps=60), r"steps 60: this model's scheduler runs at most 50 steps"),
    (dict(steps=4, layer_denoise=0.01), r"layer_denoise 0.01 needs a schedule of 100 steps to run one; this model's "
                                         r"scheduler runs at most 50: raise it to at least 0.02"),
    (dict(steps=4, harmonize=0.015), r"harmonize 0.015 needs a schedule of 67 steps"),
])
def test_settings_a_few_step_scheduler_cannot_run_are_refused_before_any_work(tiny_lcm_dir, tiny_depth_anything_dir,
                                                                             change, match):
    lcm = DiffusersBackend(model=str(tiny_lcm_dir))
    calls = []
    handle = lcm.pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    reports = []
    try:
        with pytest.raises(ValueError, match=match):
            generate(PROMPT, lcm, seed=5, width=W, height=H, options=options(tiny_depth_anything_dir, **change),
                     progress=lambda f, text: reports.append(text))
    finally:
        handle.remove()
    assert calls == [] and reports == []  # no step, not even the depth maps


def test_the_whole_prompt_is_encoded_once_for_the_plate_and_the_harmonising_pass(tiny_sd15_dir,
                                                                                 tiny_depth_anything_dir,
                                                                                 monkeypatch):
    import layers.backends.diffusers.prompts as prompts

    def stack_and_encodings(kept: int):
        monkeypatch.setattr(prompts, "KEPT_ENCODINGS", kept)
        fresh = DiffusersBackend(model=str(tiny_sd15_dir))
        texts, runs = [], []
        encode = fresh._encode
        fresh._encode = lambda text, **kw: (texts.append(text), encode(text, **kw))[1]
        hook = fresh.pipe.text_encoder.register_forward_hook(lambda module, args, out: runs.append(args[0].shape[0]))
        try:
            result = generate(PROMPT, fresh, seed=5, width=W, height=H, options=options(tiny_depth_anything_dir))
        finally:
            hook.remove()
        return result, texts, sum(runs)

    kept, texts, chunks = stack_and_encodings(prompts.KEPT_ENCODINGS)
    unkept, texts_each_time, chunks_each_time = stack_and_encodings(0)
    plate_chunks = kept.render_info["plate"]["render"]["layers"]["plate"]["chunks"]
    assert plate_chunks >= 2
    # without keeping, the harmonising pass runs the text encoder over the whole prompt a second time
    assert texts_each_time.count(PROMPT) == 2 and texts.count(PROMPT) == 1
    # kept, every distinct text (the negative prompts too) is encoded once
    assert sorted(texts) == sorted(set(texts_each_time))
    assert chunks <= chunks_each_time - plate_chunks
    # and the stack is the same to the byte
    assert all(same_stack(kept, unkept))
    assert np.array_equal(np.asarray(kept.plate), np.asarray(unkept.plate))
    assert kept.render_info["harmonize"]["steps_run"] == unkept.render_info["harmonize"]["steps_run"] >= 1


def test_kept_encodings_are_bounded_and_the_least_recent_goes_first(backend, monkeypatch):
    import layers.backends.diffusers.prompts as prompts

    monkeypatch.setattr(prompts, "KEPT_ENCODINGS", 2)
    backend._kept_encodings.clear()
    first = backend._encode_kept("a red door")[0]
    backend._encode_kept("a blue door")
    assert backend._encode_kept("a red door")[0] is first  # kept, and now the most recent
    backend._encode_kept("a green door")  # drops the blue door, the least recently used
    assert [key[0] for key in backend._kept_encodings] == ["a red door", "a green door"]
    report = backend._encode_kept("a red door")[1]
    report["chunk_texts"].append("changed by a caller")
    assert backend._encode_kept("a red door")[1]["chunk_texts"] == ["a red door"]
