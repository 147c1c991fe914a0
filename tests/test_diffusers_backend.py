"""The diffusers backend on tiny random SD1.5 / SDXL / LCM ControlNet pipelines saved in real formats.

Every backend here is built the way a user's `--model DIR` is: DiffusersBackend(model=DIR), which reads the
folder's model_index.json, loads its ControlNet and the pipeline with from_pretrained, on CPU in float32.
The weights are random, so the tests compare images with each other rather than judge their content.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from layers.backends.base import ModelUnavailableError, RenderRequest, RenderSettings, step_text
from layers.backends.diffusers import (ISOLATION_NEGATIVE, ISOLATION_PROMPT, PRESETS, DiffusersBackend,
                                       RenderMemoryError, _control_image, _isolated)

NAMES = ("background", "midground", "foreground")
W, H, STEPS = 96, 64, 3
SETTINGS = RenderSettings(width=W, height=H, steps=STEPS, guidance=5.0)


def ramps(h=H, w=W):
    """Three distinct depth maps: top-to-bottom, left-to-right, diagonal."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return [y / (h - 1), x / (w - 1), (x / (w - 1) + y / (h - 1)) / 2]


def requests(strengths=(1.0, 1.0, 1.0), seeds=(11, 22, 33), controls=None, prompts=None):
    controls = controls or ramps()
    prompts = prompts or [f"{n} of a gothic nave" for n in NAMES]
    return [RenderRequest(name=n, prompt=p, negative_prompt="blurry, lowres", control=c, prior=c, seed=s, strength=k)
            for n, p, c, s, k in zip(NAMES, prompts, controls, seeds, strengths)]


def pixels(result):
    return [np.asarray(img, dtype=np.int16) for img in result.images]


def max_diff(a, b):
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def sd15_stack(sd15):
    return sd15.render(requests(), SETTINGS)


class UNetBatches:
    """Records the batch size the UNet is called with (a forward hook on the real module)."""

    def __init__(self, pipe):
        self.sizes = []
        self.handle = pipe.unet.register_forward_hook(lambda m, args, out: self.sizes.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_loads_a_pipeline_folder_with_its_own_controlnet_on_cpu(sd15, tiny_sd15_dir):
    info = sd15.model_info
    assert info["family"] == "sd15" and info["pipeline"] == "StableDiffusionControlNetPipeline"
    assert info["model"] == str(tiny_sd15_dir)
    assert info["controlnet"] == f"{tiny_sd15_dir}/controlnet"  # the folder's own, not a hub default
    assert (info["device"], info["dtype"]) == ("cpu", "float32")
    assert sd15.name == "diffusers"


def test_one_call_renders_three_layers_each_with_its_own_control_and_seed(sd15, sd15_stack):
    with UNetBatches(sd15.pipe) as unet:
        result = sd15.render(requests(), SETTINGS)
    # one pipeline call: STEPS UNet calls on 3 layers x (negative, positive)
    assert unet.sizes == [6] * STEPS
    assert result.info["batching"] == "batched" and result.info["fallbacks"] == []
    assert [img.size for img in result.images] == [(W, H)] * 3
    assert all(img.mode == "RGB" for img in result.images)
    a = pixels(result)
    assert min(max_diff(a[i], a[j]) for i in range(3) for j in range(i + 1, 3)) > 20  # three different layers

    # a different control map for the foreground only changes the foreground
    controls = ramps()
    controls[2] = 1.0 - controls[2]
    b = pixels(sd15.render(requests(controls=controls), SETTINGS))
    assert max_diff(a[0], b[0]) == 0 and max_diff(a[1], b[1]) == 0 and max_diff(a[2], b[2]) > 20

    # a different seed for the midground only changes the midground
    c = pixels(sd15.render(requests(seeds=(11, 99, 33)), SETTINGS))
    assert max_diff(a[0], c[0]) == 0 and max_diff(a[2], c[2]) == 0 and max_diff(a[1], c[1]) > 20


def test_same_seeds_give_identical_pixels_and_new_seeds_different(sd15, sd15_stack):
    again = sd15.render(requests(), SETTINGS)
    assert all(max_diff(x, y) == 0 for x, y in zip(pixels(sd15_stack), pixels(again)))
    other = sd15.render(requests(seeds=(1, 2, 3)), SETTINGS)
    assert all(max_diff(x, y) > 20 for x, y in zip(pixels(sd15_stack), pixels(other)))


def test_per_layer_strength_changes_only_that_layer_as_diffusers_own_scale_would(sd15, sd15_stack):
    softer = sd15.render(requests(strengths=(1.0, 0.3, 1.0)), SETTINGS)
    a, b = pixels(sd15_stack), pixels(softer)
    assert max_diff(a[0], b[0]) == 0 and max_diff(a[2], b[2]) == 0
    assert max_diff(a[1], b[1]) > 10
    assert softer.info["layers"]["midground"]["strength"] == 0.3

    # The per-item scaling is the ControlNet's own conditioning scale: the midground at 0.3 equals the stock
    # pipeline called for that layer alone with controlnet_conditioning_scale=0.3.
    req = requests(strengths=(1.0, 0.3, 1.0))[1]
    alone = sd15.render([req], SETTINGS).images[0]
    prompt, negative = _isolated(req)
    stock = sd15.pipe(prompt=prompt, negative_prompt=negative, image=_control_image(req.control, W, H), height=H,
                      width=W, num_inference_steps=STEPS, guidance_scale=5.0, controlnet_conditioning_scale=0.3,
                      generator=[torch.Generator("cpu").manual_seed(req.seed)]).images[0]
    assert max_diff(np.asarray(alone), np.asarray(stock)) == 0
    # and in the batch it is the same image up to batch-size rounding
    assert max_diff(np.asarray(alone), b[1]) <= 2

    # strength 0: the control map no longer matters
    flat = [np.zeros((H, W), np.float32)] * 3
    zero = (0.0, 0.0, 0.0)
    assert all(max_diff(x, y) == 0 for x, y in zip(pixels(sd15.render(requests(strengths=zero), SETTINGS)),
                                                    pixels(sd15.render(requests(strengths=zero, controls=flat),
                                                                       SETTINGS))))


def test_regenerating_one_layer_with_its_seed_reproduces_its_batched_render(sd15, sd15_stack):
    batched = pixels(sd15_stack)
    for i, req in enumerate(requests()):
        alone = sd15.render([req], SETTINGS)
        assert alone.info["batching"] == "one_by_one"
        # Same seed, same conditioning; only float rounding differs between a batch of 3 and of 1.
        diff = np.abs(np.asarray(alone.images[0], np.int16) - batched[i])
        assert diff.max() <= 2 and diff.mean() < 0.1
    # and rendering one layer twice is exact
    one = [pixels(sd15.render([requests()[1]], SETTINGS))[0] for _ in range(2)]
    assert max_diff(*one) == 0


def test_midground_and_foreground_are_prompted_as_isolated_subjects(sd15_stack):
    layers = sd15_stack.info["layers"]
    assert ISOLATION_PROMPT not in layers["background"]["prompt"]
    for name in ("midground", "foreground"):
        assert layers[name]["prompt"].endswith(ISOLATION_PROMPT)
        assert layers[name]["negative_prompt"].startswith("blurry, lowres") and ISOLATION_NEGATIVE in \
            layers[name]["negative_prompt"]
    # a prompt the planner already framed is left as it is
    framed = RenderRequest(name="midground", prompt="two pilgrims, isolated on a plain backdrop",
                           negative_prompt="busy backdrop, text", control=ramps()[0], prior=ramps()[0], seed=1)
    assert _isolated(framed) == (framed.prompt, framed.negative_prompt)


def whole_steps(calls):
    return [c for c in calls if c[1] == int(c[1])]


def test_progress_reports_every_step_of_the_batch_and_of_each_layer_one_by_one(sd15, tiny_sd15_dir):
    calls = []
    sd15.render(requests(), SETTINGS, progress=lambda *a: calls.append(a))
    assert whole_steps(calls) == [("background+midground+foreground", s, STEPS) for s in range(1, STEPS + 1)]

    one_by_one = DiffusersBackend(model=str(tiny_sd15_dir), batch="one_by_one")
    calls.clear()
    result = one_by_one.render(requests(), SETTINGS, progress=lambda *a: calls.append(a))
    assert whole_steps(calls) == [(n, s, STEPS) for n in NAMES for s in range(1, STEPS + 1)]
    assert result.info["batching"] == "one_by_one"


def assert_moves_within_every_step_and_while_decoding(calls, label, steps):
    """What a progress bar shows when a step takes seconds: it moves inside every step and during the decoding,
    never backwards, and says "decoding" while the pictures are decoded."""
    mine = [step for name, step, total in calls if name == label and total == steps]
    assert mine == sorted(mine) and mine[-1] == steps
    for k in range(1, steps + 1):
        inside = [s for s in mine if k - 1 < s < k]
        assert len(inside) >= 3, (k, mine)
    decoding = [s for s in mine if step_text(s, steps) == "decoding"]
    assert len(decoding) >= 3 and all(steps - 1 < s < steps for s in decoding)
    assert step_text(mine[0], steps) == f"step 1/{steps}" and step_text(steps, steps) == f"step {steps}/{steps}"


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_progress_moves_within_each_step_and_during_the_vae_decoding(family, request, monkeypatch):
    backend = request.getfixturevalue(family)
    monkeypatch.setattr(backend, "progress_interval", 0.0)  # a tiny model's steps take milliseconds
    calls = []
    backend.render(requests(), SETTINGS, progress=lambda *a: calls.append(a))
    assert_moves_within_every_step_and_while_decoding(calls, "background+midground+foreground", STEPS)
    # the hooks live for one call (the ControlNet keeps only its own per-layer strength hook)
    pipe = backend.pipe
    hooked = [m for model in (pipe.unet, pipe.controlnet, pipe.vae) for m in model.modules() if m._forward_hooks]
    assert hooked == [pipe.controlnet]
    calls.clear()
    backend.render(requests()[:1], SETTINGS, progress=lambda *a: calls.append(a))
    assert_moves_within_every_step_and_while_decoding(calls, "background", STEPS)


def test_progress_runs_through_a_step_whose_controlnet_is_skipped(sd15, monkeypatch):
    """Past control_end a step runs the UNet alone: the bar still crosses the whole step, not the UNet's share of
    a guided one, before it jumps to the next."""
    monkeypatch.setattr(sd15, "progress_interval", 0.0)
    calls = []
    sd15.render(requests(), dataclasses.replace(SETTINGS, steps=4, control_end=0.5),
                progress=lambda *a: calls.append(a))
    steps = [s for _, s, _ in calls]
    for k in (1, 3):  # guided, then skipped
        inside = [s for s in steps if k - 1 < s < k]
        assert len(inside) >= 3 and max(inside) > k - 0.15, (k, inside)


def test_progress_within_a_step_is_at_most_one_report_per_interval(sd15, monkeypatch):
    monkeypatch.setattr(sd15, "progress_interval", 3600.0)
    calls = []
    sd15.render(requests(), SETTINGS, progress=lambda *a: calls.append(a))
    assert calls == [("background+midground+foreground", s, STEPS) for s in range(1, STEPS + 1)]


def test_out_of_memory_in_the_batch_falls_back_to_one_layer_at_a_time(sd15, sd15_stack):
    def runs_out_in_the_batch(label, step, total):
        if "+" in label:  # the batched call
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    result = sd15.render(requests(), SETTINGS, progress=runs_out_in_the_batch)
    assert result.info["batching"] == "one_by_one"
    assert "one by one" in result.info["fallbacks"][0]
    assert all(max_diff(x, y) <= 2 for x, y in zip(pixels(result), pixels(sd15_stack)))


def test_out_of_memory_one_by_one_retries_smaller_then_gives_a_clear_error(sd15):
    failures = {"left": 2}

    def runs_out_twice(label, step, total):
        if failures["left"]:
            failures["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory")

    result = sd15.render(requests(), RenderSettings(width=128, height=128, steps=2, guidance=5.0),
                         progress=runs_out_twice)
    layers = result.info["layers"]
    # batch failed, the background failed at full size, and from then on layers render at 0.75 -> 64x64
    assert layers["background"]["render_size"] == [64, 64] and layers["foreground"]["render_size"] == [64, 64]
    assert [img.size for img in result.images] == [(128, 128)] * 3  # upscaled back to the asked size
    assert len(result.info["fallbacks"]) == 2

    def always_out(label, step, total):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(RenderMemoryError, match="out of memory rendering layer 'background'") as err:
        sd15.render(requests(), SETTINGS, progress=always_out)
    assert "\n" not in str(err.value)


def test_sdxl_family_is_read_from_the_model_not_its_folder_name(sdxl, tiny_sdxl_dir):
    assert "sd15" in tiny_sdxl_dir.name
    assert sdxl.model_info["family"] == "sdxl"
    assert sdxl.model_info["pipeline"] == "StableDiffusionXLControlNetPipeline"
    with UNetBatches(sdxl.pipe) as unet:
        result = sdxl.render(requests(strengths=(0.6, 1.0, 1.0)), SETTINGS)
    assert unet.sizes == [6] * STEPS and result.info["batching"] == "batched"
    a = pixels(result)
    assert min(max_diff(a[i], a[j]) for i in range(3) for j in range(i + 1, 3)) > 20
    again = pixels(sdxl.render(requests(strengths=(0.6, 1.0, 1.0)), SETTINGS))
    assert all(max_diff(x, y) == 0 for x, y in zip(a, again))
    softer = pixels(sdxl.render(requests(strengths=(0.6, 1.0, 0.2)), SETTINGS))
    assert max_diff(a[0], softer[0]) == 0 and max_diff(a[1], softer[1]) == 0 and max_diff(a[2], softer[2]) > 10


def test_short_prompts_are_encoded_exactly_as_the_pipeline_encodes_them(sd15, sdxl):
    text, negative = "a knight in gilded armour, rim light", "blurry"
    pe, ne = sd15.pipe.encode_prompt(text, torch.device("cpu"), 1, True, negative)
    assert torch.equal(sd15._encode(text)[0].chunks, pe)
    assert torch.equal(sd15._encode(negative, negative=True)[0].chunks, ne)
    pe, ne, pooled, npooled = sdxl.pipe.encode_prompt(text, device=torch.device("cpu"), num_images_per_prompt=1,
                                                      do_classifier_free_guidance=True, negative_prompt=negative)
    mine = sdxl._encode(text)[0]
    assert torch.equal(mine.chunks, pe) and torch.equal(mine.pooled, pooled)
    assert torch.equal(sdxl._encode(negative, negative=True)[0].chunks, ne)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_long_prompts_are_conditioned_beyond_77_tokens(family, request):
    backend = request.getfixturevalue(family)
    # The tiny tokenizer spends about one token per letter: the shared head alone is past 77 tokens.
    head = ("a vast ruined cathedral nave with broken arches and dust hanging in shafts of light, "
            "ribbed vaults overhead, ")
    long_a, long_b = head + "a red banner on the left pillar", head + "a blue lantern on the right stair"
    assert 77 < backend.count_tokens(head) and backend.count_tokens(long_b) < 150

    # The stock pipeline truncates at 77 tokens: the two prompts give the same image.
    def stock(prompt):
        return np.asarray(backend.pipe(prompt=prompt, image=_control_image(ramps()[0], W, H), height=H, width=W,
                                       num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(5),
                                       output_type="np").images[0])

    assert np.array_equal(stock(long_a), stock(long_b))
    # Here the text after token 77 reaches the UNet: different images.
    reqs = [RenderRequest(name="background", prompt=p, negative_prompt="", control=ramps()[0], prior=ramps()[0],
                          seed=5) for p in (long_a, long_b)]
    a, b = (backend.render([r], SETTINGS) for r in reqs)
    # Same seed and the same prompt render bit-identically, so any difference is the tail's doing (the tiny
    # random UNet reacts weakly to text: a few levels).
    assert max_diff(np.asarray(a.images[0]), np.asarray(b.images[0])) > 0
    emb_a, emb_b = backend._encode(long_a)[0].chunks, backend._encode(long_b)[0].chunks
    assert emb_a.shape[0] == 2 and torch.equal(emb_a[0], emb_b[0]) and not torch.equal(emb_a[1], emb_b[1])
    seen = a.info["layers"]["background"]
    assert seen["tokens"] == backend.count_tokens(long_a) and seen["chunks"] == 2 and seen["truncated_tokens"] == 0
    assert "".join(seen["chunk_texts"]).replace(" ", "") == long_a.replace(" ", "")
    assert np.asarray(a.images[0]).std() > 0


def test_prompt_chunks_are_cut_at_a_comma_and_limited_and_reported(sd15, tiny_sd15_dir, caplog):
    words = ", ".join(f"clause{i}" for i in range(40))  # ~320 tokens
    chunks, _, report = sd15._chunk_ids(sd15.pipe.tokenizer, words)
    assert all(len(c) == 77 for c in chunks)
    assert all(t.rstrip().endswith(",") for t in report["chunk_texts"][:-1])  # clauses stay whole
    capped = DiffusersBackend(model=str(tiny_sd15_dir), max_prompt_chunks=2)
    reqs = requests(prompts=[words, "short", "short"])
    with caplog.at_level("WARNING"):
        result = capped.render(reqs, SETTINGS)
    seen = result.info["layers"]["background"]
    assert seen["chunks"] == 2 and seen["truncated_tokens"] > 0
    assert "not conditioned" in caplog.text
    # the shorter prompts were padded with empty chunks to the batch's length, and that is recorded
    assert result.info["layers"]["midground"]["chunks"] == 1
    assert result.info["layers"]["midground"]["padded_to_chunks"] == 2


def test_count_tokens_is_the_real_tokenizer_without_truncation(sd15):
    text = "word " * 60
    assert sd15.count_tokens(text) == len(sd15.pipe.tokenizer(text).input_ids) > 77
    assert sd15.count_tokens("") == 2  # BOS + EOS
    assert 200 < sd15.token_budget < 4 * 75 + 2


def test_controlnet_argument_takes_a_pipeline_folders_controlnet_subfolder(tiny_sd15_dir, tiny_sdxl_dir, sd15_stack):
    backend = DiffusersBackend(model=str(tiny_sd15_dir), controlnet=str(tiny_sd15_dir / "controlnet"))
    assert backend.model_info["controlnet"] == str(tiny_sd15_dir / "controlnet")
    assert all(max_diff(x, y) == 0 for x, y in zip(pixels(backend.render(requests(), SETTINGS)), pixels(sd15_stack)))
    with pytest.raises(ValueError, match=r"does not fit model .*\(sd15, ") as err:
        DiffusersBackend(model=str(tiny_sd15_dir), controlnet=str(tiny_sdxl_dir / "controlnet"))
    assert "diffusers/controlnet-depth-sdxl-1.0" not in str(err.value)  # suggests an SD1.5 depth ControlNet


def test_few_step_model_runs_without_classifier_free_guidance(tiny_lcm_dir):
    backend = DiffusersBackend(model=str(tiny_lcm_dir))
    assert backend.model_info["few_step"] and backend.model_info["scheduler"] == "LCMScheduler"
    assert backend.defaults == {"steps": 4, "guidance": 8.0, "control_end": 0.5, "fill_denoise": 0.75}
    settings = RenderSettings(width=W, height=H, steps=4, guidance=8.0)
    with UNetBatches(backend.pipe) as unet:
        result = backend.render(requests(), settings)
    assert unet.sizes == [3] * 4  # the guidance is an embedding: no negative half of the batch
    assert result.info["classifier_free_guidance"] is False
    a = pixels(result)
    assert all(max_diff(x, y) == 0 for x, y in zip(a, pixels(backend.render(requests(), settings))))
    assert max_diff(a[0], pixels(backend.render(requests(seeds=(5, 22, 33)), settings))[0]) > 10


class ControlNetRuns:
    """Counts the ControlNet forwards that really run (a forward hook on its middle block, inside the real forward)."""

    def __init__(self, pipe):
        self.count = 0
        self.handle = pipe.controlnet.controlnet_mid_block.register_forward_hook(self._seen)

    def _seen(self, module, args, out):
        self.count += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_controlnet_guides_the_first_control_end_of_the_steps_and_is_not_run_after(family, request):
    """Past control_end diffusers scales the ControlNet's residuals by 0: the backend skips running it, and the
    picture is the one diffusers makes running it (x + 0 = x), pixel for pixel."""
    backend = request.getfixturevalue(family)
    cn = backend.pipe.controlnet
    half = dataclasses.replace(SETTINGS, steps=4, control_end=0.5)
    with UNetBatches(backend.pipe) as unet, ControlNetRuns(backend.pipe) as runs:
        skipping = backend.render(requests(), half)
    assert unet.sizes == [6] * 4 and runs.count == 2  # the first two steps of four
    idle = cn.forward
    cn.forward = idle.forward  # diffusers' own path: the ControlNet runs at scale 0 in the last two steps
    try:
        with ControlNetRuns(backend.pipe) as runs:
            running = backend.render(requests(), half)
    finally:
        cn.forward = idle
    assert runs.count == 4
    assert all(np.array_equal(a, b) for a, b in zip(pixels(skipping), pixels(running)))
    # the end matters: guided throughout is another picture; with every strength 0 it never runs
    full = backend.render(requests(), dataclasses.replace(half, control_end=1.0))
    assert max(max_diff(a, b) for a, b in zip(pixels(skipping), pixels(full))) > 0
    with ControlNetRuns(backend.pipe) as runs:
        backend.render(requests(strengths=(0.0, 0.0, 0.0)), half)
    assert runs.count == 0
    with ControlNetRuns(backend.pipe) as runs:  # a strength per layer (the residual scaler's path) skips alike
        backend.render(requests(strengths=(0.5, 1.0, 2.0)), half)
    assert runs.count == 2
    with ControlNetRuns(backend.pipe) as runs:  # an end short of one step still guides the first
        backend.render(requests(), dataclasses.replace(half, control_end=0.1))
    assert runs.count == 1
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"control_end must be in \(0, 1\], got {bad}"):
            backend.render(requests(), dataclasses.replace(half, control_end=bad))


def test_the_controlnet_skip_runs_in_guess_mode_and_survives_offload_hooks(tiny_sd15_dir):
    """Guess mode zero-pads the ControlNet's residuals (a skip would hand it None), so it always runs. diffusers'
    model offload takes accelerate's hooks off and puts them back around every call; the skip must stay."""
    from accelerate import cpu_offload_with_hook
    from accelerate.hooks import remove_hook_from_module

    from layers.backends.diffusers import _IdleControlNet

    backend = DiffusersBackend(model=str(tiny_sd15_dir))
    cn = backend.pipe.controlnet
    size = 8 * backend.pipe.vae_scale_factor
    args = (torch.zeros(1, cn.config.in_channels, 8, 8), 10)
    kwargs = dict(encoder_hidden_states=torch.zeros(1, 4, cn.config.cross_attention_dim),
                  controlnet_cond=torch.zeros(1, 3, size, size), conditioning_scale=0.0, return_dict=False)
    with torch.inference_mode():
        assert cn(*args, **kwargs) == (None, None)
        down, mid = cn(*args, guess_mode=True, **kwargs)
    assert mid is not None and all(d is not None for d in down)
    # hooks put on after the skip keep it as the forward they restore
    cpu_offload_with_hook(cn, "cpu")
    remove_hook_from_module(cn)
    assert isinstance(cn.forward, _IdleControlNet)
    # a pipeline handed in with its hooks already on: the forward they keep is wrapped
    cn.forward = cn.forward.forward
    cpu_offload_with_hook(cn, "cpu")
    again = DiffusersBackend.from_pipeline(backend.pipe, model="hooked")
    half = dataclasses.replace(SETTINGS, steps=4, control_end=0.5)
    with ControlNetRuns(backend.pipe) as runs:
        again.render(requests(), half)
    assert runs.count == 2
    remove_hook_from_module(cn)
    assert isinstance(cn.forward, _IdleControlNet)


def test_presets_name_the_published_models():
    assert PRESETS["sd15"].model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert PRESETS["sd15"].controlnet == "lllyasviel/control_v11f1p_sd15_depth"
    assert PRESETS["sdxl"].model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert PRESETS["sdxl"].controlnet == "diffusers/controlnet-depth-sdxl-1.0"
    fast = PRESETS["lcm-sd15"]
    assert fast.steps <= 8 and fast.controlnet == PRESETS["sd15"].controlnet
    # the few-step LoRAs on the same bases and depth ControlNets, with their model cards' files and sampling
    hyper, lightning = PRESETS["hyper-sd15"], PRESETS["lightning-sdxl"]
    assert (hyper.model, hyper.controlnet) == (PRESETS["sd15"].model, PRESETS["sd15"].controlnet)
    assert (hyper.lora.repo, hyper.lora.file) == ("ByteDance/Hyper-SD", "Hyper-SD15-1step-lora.safetensors")
    assert (hyper.scheduler, hyper.steps, hyper.guidance, hyper.eta) == ("tcd", 1, 0.0, 1.0)
    assert (lightning.model, lightning.controlnet) == (PRESETS["sdxl"].model, PRESETS["sdxl"].controlnet)
    assert (lightning.lora.repo, lightning.lora.file) == ("ByteDance/SDXL-Lightning",
                                                          "sdxl_lightning_4step_lora.safetensors")
    assert (lightning.scheduler, lightning.steps, lightning.guidance) == ("euler_trailing", 4, 0.0)


@pytest.mark.parametrize("model", ["nobody/no-such-model", "sd15", "sdxl", "lcm-sd15", "hyper-sd15", "lightning-sdxl"])
def test_unreachable_weights_give_one_line_naming_the_id_and_how_to_fetch_it(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as err:
        DiffusersBackend(model=model)
    text = str(err.value)
    model_id = PRESETS[model].model if model in PRESETS else model
    assert "\n" not in text and len(text) < 450
    assert f"hf download {model_id} --include" in text and f"huggingface-cli download {model_id}" in text
    assert "HF_HOME" in text


def test_bad_folders_give_one_line_naming_the_folder(tmp_path, tiny_sd15_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in (empty, tmp_path / "missing" / "model"):
        with pytest.raises(ModelUnavailableError) as err:
            DiffusersBackend(model=str(bad))
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelUnavailableError, match="controlnet"):
        DiffusersBackend(model=str(tiny_sd15_dir), controlnet=str(empty))


def test_auto_backend_falls_back_to_draft_with_a_notice_naming_the_model(monkeypatch):
    from layers.backends import resolve_backend

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend, notice = resolve_backend("auto", model="nobody/no-such-model")
    assert backend.name == "draft" and "nobody/no-such-model" in notice


@pytest.mark.parametrize("options, match", [
    ({"batch": "sometimes"}, "batch"),
    ({"offload": "model"}, "needs an accelerator"),
    ({"dtype": "float16"}, "needs an accelerator"),
    ({"dtype": "int8"}, "dtype"),
    ({"device": "cuda"}, "CUDA"),
    ({"max_prompt_chunks": 0}, "max_prompt_chunks"),
])
def test_bad_options_are_refused_with_the_bad_value(options, match, tiny_sd15_dir):
    with pytest.raises(ValueError, match=match):
        DiffusersBackend(model=str(tiny_sd15_dir), **options)


@pytest.mark.parametrize("change, match", [
    ({"settings": RenderSettings(width=100, height=64, steps=2)}, "multiples of 8"),
    ({"settings": RenderSettings(width=96, height=64, steps=0)}, "steps"),
    ({"strength": 3.0}, "strength"),
    ({"seed": -1}, "seed"),
    ({"duplicate": True}, "unique"),
    ({"control": np.zeros((4, 4, 3), np.float32)}, "2-D"),
])
def test_bad_requests_are_refused_before_rendering(sd15, change, match):
    reqs = requests()
    fields = {k: change[k] for k in ("strength", "seed", "control") if k in change}
    reqs[1] = dataclasses.replace(reqs[1], **fields)
    if "duplicate" in change:
        reqs[2] = reqs[1]
    with pytest.raises(ValueError, match=match):
        sd15.render(reqs, change.get("settings", SETTINGS))


def test_a_pipeline_built_in_code_renders_the_same_through_from_pipeline(sd15, sd15_stack):
    wrapped = DiffusersBackend.from_pipeline(sd15.pipe, model="mine")
    assert wrapped.model_info["model"] == "mine" and wrapped.model_info["family"] == "sd15"
    result = wrapped.render(requests(strengths=(1.0, 0.3, 1.0)), SETTINGS)
    assert all(max_diff(x, y) == 0 for x, y in zip(pixels(result),
                                                    pixels(sd15.render(requests(strengths=(1.0, 0.3, 1.0)), SETTINGS))))
    assert len(sd15.pipe.controlnet._forward_hooks) == 1  # both backends share one strength hook


def test_the_progress_bar_says_which_step_runs_and_when_the_pictures_are_decoded():
    from layers.backends.base import span_progress
    from layers.pipeline import _render_progress

    for make in (lambda report: _render_progress(report), lambda report: span_progress(report, 0.4, 0.75, "layers")):
        seen = []
        on_step = make(lambda fraction, text: seen.append((fraction, text)))
        for step in (0.5, 1, 1.5, 2, 3.2, 3.5, 3.9, 4):
            on_step("background+midground+foreground", step, 4)
        texts = [t.split(": ")[-1] for _, t in seen]
        assert texts == ["step 1/4", "step 1/4", "step 2/4", "step 2/4", "step 4/4", "decoding", "decoding",
                         "step 4/4"]
        fractions = [f for f, _ in seen]
        assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)


def test_on_a_cpu_the_unet_and_controlnet_run_channels_last_and_render_the_same_pictures(sd15, sd15_stack):
    assert sd15.model_info["memory_format"] == "channels_last"
    for model in (sd15.pipe.unet, sd15.pipe.controlnet):
        weights = [p for p in model.parameters() if p.dim() == 4]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    try:
        for model in (sd15.pipe.unet, sd15.pipe.controlnet):
            model.to(memory_format=torch.contiguous_format)
        contiguous = sd15.render(requests(), SETTINGS)
    finally:
        for model in (sd15.pipe.unet, sd15.pipe.controlnet):
            model.to(memory_format=torch.channels_last)
    assert all(max_diff(x, y) <= 2 for x, y in zip(pixels(contiguous), pixels(sd15_stack)))


def test_progress_counts_the_tiles_of_a_tiled_vae_decoding(sd15, monkeypatch):
    """With VAE tiling on (an accelerator's memory fallback), the decoding runs once per tile: the bar still ends on
    the last step and moves through every tile's decoding, rather than failing on the tile count."""
    vae = sd15.pipe.vae
    monkeypatch.setattr(sd15, "progress_interval", 0.0)
    monkeypatch.setattr(sd15, "vae_tiling", True)
    latent = (H // sd15.pipe.vae_scale_factor, W // sd15.pipe.vae_scale_factor)
    monkeypatch.setattr(vae, "tile_latent_min_size", max(2, min(latent) // 2))
    monkeypatch.setattr(vae, "tile_sample_min_size", vae.tile_latent_min_size * sd15.pipe.vae_scale_factor)
    decodes = []
    handle = vae.decoder.register_forward_hook(lambda m, args, out: decodes.append(1))
    calls = []
    try:
        result = sd15.render(requests()[:1], SETTINGS, progress=lambda *a: calls.append(a))
    finally:
        handle.remove()
    assert len(decodes) > 1 and result.images[0].size == (W, H)  # it really decoded tile by tile
    assert_moves_within_every_step_and_while_decoding(calls, "background", STEPS)
