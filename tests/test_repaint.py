"""DiffusersBackend.repaint: ControlNet img2img / inpaint from existing pixels, on tiny SD1.5 and SDXL pipelines.

The backends are built the user's way (DiffusersBackend(model=DIR) on a folder written with save_pretrained). The
weights are random, so the tests compare pictures with each other and with the input, not judge their content.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from layers.backends.base import RenderSettings, RepaintRequest
from layers.backends.diffusers import DiffusersBackend, RenderMemoryError, _control_image

W, H, STEPS = 96, 64, 4
SETTINGS = RenderSettings(width=W, height=H, steps=STEPS, guidance=5.0)
Y, X = np.mgrid[0:H, 0:W].astype(np.float32)
RIGHT_HALF = (X >= W // 2).astype(np.float32)


def start_image(seed=0) -> Image.Image:
    """A smooth picture with some texture: what a plate or a photo gives the repaint."""
    rng = np.random.default_rng(seed)
    base = np.stack([X / W, Y / H, 1 - X / W], axis=-1) * 200 + 30
    return Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8), "RGB")


def req(name="background", *, mask=None, denoise=1.0, seed=7, strength=1.0, prompt=None, control=None, image=None):
    return RepaintRequest(name=name, prompt=prompt or f"{name} of a flooded station", negative_prompt="blurry",
                          image=image or start_image(), control=Y / (H - 1) if control is None else control,
                          seed=seed, mask=mask, denoise=denoise, strength=strength)


def px(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_diff(a, b) -> int:
    return int(np.abs(px(a) - px(b)).max())


def same_up_to_batch_rounding(a, b) -> bool:
    """Same seed and conditioning in a batch of n and of 1: only float rounding differs, a few levels at most."""
    diff = np.abs(px(a) - px(b))
    return diff.max() <= 6 and diff.mean() < 0.2


def held_parameters(*pipes) -> tuple[int, int]:
    """(tensors, values) of the distinct parameter storages reachable from the given pipelines."""
    seen = {}
    for pipe in pipes:
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                for p in module.parameters():
                    seen[p.data_ptr()] = p.numel()
    return len(seen), sum(seen.values())


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_img2img_and_inpaint_share_the_loaded_weights(family, request):
    backend = request.getfixturevalue(family)
    before = held_parameters(backend.pipe)
    backend.repaint([req(mask=RIGHT_HALF), req("midground", denoise=0.5)], SETTINGS)
    img2img, inpaint = backend.repaint_pipeline("img2img"), backend.repaint_pipeline("inpaint")
    expected = {"sd15": ("StableDiffusionControlNetImg2ImgPipeline", "StableDiffusionControlNetInpaintPipeline"),
                "sdxl": ("StableDiffusionXLControlNetImg2ImgPipeline", "StableDiffusionXLControlNetInpaintPipeline")}
    assert (type(img2img).__name__, type(inpaint).__name__) == expected[family]
    # Three pipelines hold exactly the parameters of the one that was loaded: not one tensor more.
    assert held_parameters(backend.pipe, img2img, inpaint) == before
    for name in ("unet", "vae", "controlnet", "text_encoder"):
        assert getattr(img2img, name) is getattr(backend.pipe, name) is getattr(inpaint, name)
    assert backend.repaint_pipeline("inpaint") is inpaint  # made once, then reused


def test_a_half_precision_model_stays_in_its_dtype_when_the_repaint_pipelines_are_made(tiny_sd15_dir):
    # from_pipe casts to float32 unless told otherwise, and the modules are shared: the loaded model must not change.
    backend = DiffusersBackend(model=str(tiny_sd15_dir), dtype="bfloat16")
    backend.repaint([req(mask=RIGHT_HALF)], SETTINGS)
    assert backend.pipe.unet.dtype == backend.pipe.vae.dtype == torch.bfloat16
    assert backend.repaint_pipeline("inpaint").unet.dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_inpaint_keeps_every_pixel_outside_the_mask_and_repaints_inside(family, request):
    backend = request.getfixturevalue(family)
    start = start_image()
    (out,) = backend.repaint([req(mask=RIGHT_HALF)], SETTINGS).images
    assert out.size == (W, H) and out.mode == "RGB"
    keep = RIGHT_HALF == 0
    assert np.array_equal(px(out)[keep], px(start)[keep])
    assert np.abs(px(out)[~keep] - px(start)[~keep]).mean() > 20
    # a soft mask blends the repaint in: half way where the mask is 0.5
    soft = RIGHT_HALF * 0.5
    (half,) = backend.repaint([req(mask=soft)], SETTINGS).images
    inside = ~keep
    assert np.array_equal(px(half)[keep], px(start)[keep])
    expected = px(start)[inside] + (px(out)[inside] - px(start)[inside]) * 0.5
    assert np.abs(px(half)[inside] - expected).max() <= 1


def test_requests_with_one_denoise_go_through_one_batched_call_each_with_its_own_seed(sd15):
    reqs = [req("background", mask=RIGHT_HALF, seed=1), req("midground", seed=2, control=X / (W - 1), mask=RIGHT_HALF),
            req("foreground", seed=3, mask=1 - RIGHT_HALF)]
    sizes = []
    hook = sd15.pipe.unet.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    try:
        batched = sd15.repaint(reqs, SETTINGS)
    finally:
        hook.remove()
    assert batched.info["batching"] == "batched" and len(batched.info["calls"]) == 1
    assert batched.info["calls"][0]["pipeline"] == "StableDiffusionControlNetInpaintPipeline"
    assert set(sizes) == {6}  # three pictures, conditional + unconditional, every step
    # each picture alone with its seed is the same picture, up to batch-size rounding
    for r, image in zip(reqs, batched.images):
        (alone,) = sd15.repaint([r], SETTINGS).images
        assert same_up_to_batch_rounding(alone, image)
    # same seeds: identical; one new seed: only that picture changes
    again = sd15.repaint(reqs, SETTINGS)
    assert all(max_diff(a, b) == 0 for a, b in zip(batched.images, again.images))
    reseeded = sd15.repaint([reqs[0], dataclasses.replace(reqs[1], seed=99), reqs[2]], SETTINGS)
    diffs = [max_diff(a, b) for a, b in zip(batched.images, reseeded.images)]
    assert diffs[0] == 0 and diffs[2] == 0 and diffs[1] > 20


def test_img2img_is_diffusers_own_controlnet_img2img_with_its_strength_per_request(sd15):
    a = req("midground", denoise=0.5, seed=4, control=X / (W - 1))
    b = req("foreground", denoise=0.5, seed=5)
    base = sd15.repaint([a, b], SETTINGS)
    assert [c["pipeline"] for c in base.info["calls"]] == ["StableDiffusionControlNetImg2ImgPipeline"]
    softer = sd15.repaint([dataclasses.replace(a, strength=0.2), b], SETTINGS)
    assert max_diff(base.images[1], softer.images[1]) == 0  # the other request's strength is its own
    assert max_diff(base.images[0], softer.images[0]) > 5
    # alone, a request is exactly the stock pipeline called with that request's values
    (alone,) = sd15.repaint([dataclasses.replace(a, strength=0.2)], SETTINGS).images
    stock = sd15.repaint_pipeline("img2img")(
        prompt=a.prompt, negative_prompt=a.negative_prompt, image=a.image, control_image=_control_image(a.control, W, H),
        strength=0.5, num_inference_steps=STEPS, guidance_scale=5.0, controlnet_conditioning_scale=0.2,
        generator=[torch.Generator("cpu").manual_seed(a.seed)]).images[0]
    assert max_diff(alone, stock) == 0
    assert same_up_to_batch_rounding(alone, softer.images[0])


def test_lower_denoise_stays_closer_to_the_start_and_each_denoise_is_its_own_call(sd15):
    reqs = [req("a", denoise=0.25, seed=3), req("b", denoise=1.0, seed=3), req("c", denoise=0.25, mask=RIGHT_HALF)]
    result = sd15.repaint(reqs, SETTINGS)
    # one call per (kind, denoise): a picture goes through the same pipeline alone or with others
    assert [(c["layers"], c["denoise"]) for c in result.info["calls"]] == [(["a"], 0.25), (["b"], 1.0), (["c"], 0.25)]
    start = px(start_image())
    near, far = (np.abs(px(img) - start).mean() for img in result.images[:2])
    assert near < far
    assert result.info["layers"]["a"]["denoise"] == 0.25


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_long_prompts_reach_the_repaint_beyond_77_tokens(family, request):
    backend = request.getfixturevalue(family)
    head = ("a vast flooded railway station at dusk with broken skylights and rusted girders, water to the knees, "
            "ribbed vaults overhead, ")
    assert backend.count_tokens(head) > 77
    a, b = (backend.repaint([req(prompt=head + tail, mask=RIGHT_HALF)], SETTINGS)
            for tail in ("a red lantern on the left", "a blue banner on the right"))
    assert max_diff(a.images[0], b.images[0]) > 0
    assert a.info["layers"]["background"]["chunks"] == 2 and a.info["layers"]["background"]["truncated_tokens"] == 0


def test_repainting_reports_progress_within_each_step_and_while_decoding(sd15, monkeypatch):
    from test_diffusers_backend import assert_moves_within_every_step_and_while_decoding

    monkeypatch.setattr(sd15, "progress_interval", 0.0)
    mask = np.zeros((H, W), np.float32)
    mask[:, : W // 2] = 1.0
    calls = []
    sd15.repaint([req("midground", denoise=1.0, seed=3), req("foreground", denoise=1.0, seed=4),
                  req("background", mask=mask, denoise=1.0)], SETTINGS, progress=lambda *a: calls.append(a))
    assert_moves_within_every_step_and_while_decoding(calls, "midground+foreground", STEPS)  # img2img
    assert_moves_within_every_step_and_while_decoding(calls, "background", STEPS)  # inpaint


def test_out_of_memory_in_the_batch_falls_back_to_one_picture_at_a_time(sd15):
    reqs = [req("background", mask=RIGHT_HALF, seed=1), req("midground", seed=2, mask=1 - RIGHT_HALF)]
    batched = sd15.repaint(reqs, SETTINGS)
    assert batched.info["batching"] == "batched"

    def runs_out_in_the_batch(label, step, total):
        if "+" in label:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    result = sd15.repaint(reqs, SETTINGS, progress=runs_out_in_the_batch)
    assert result.info["batching"] == "one_by_one" and "one by one" in result.info["fallbacks"][0]
    assert all(same_up_to_batch_rounding(a, b) for a, b in zip(result.images, batched.images))

    def always_out(label, step, total):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(RenderMemoryError, match="out of memory rendering layer 'background'"):
        sd15.repaint(reqs, SETTINGS, progress=always_out)


@pytest.mark.parametrize("change, match", [
    (dict(image=Image.new("RGB", (W, W))), r"'background': image must be an RGB picture of 96x64, got RGB 96x96"),
    (dict(image=Image.new("RGBA", (W, H))), r"image must be an RGB picture .* got RGBA"),
    (dict(mask=np.full((H, W), 1.5, np.float32)), r"mask"),
    (dict(mask=np.ones((H, H), np.float32)), r"mask"),
    (dict(denoise=0.0), r"denoise must be in \(0, 1\], got 0.0"),
    (dict(strength=3.0), r"strength must be in \[0, 2\], got 3.0"),
    (dict(seed=-1), r"seed must be an integer"),
])
def test_bad_repaint_requests_are_refused_with_the_bad_value(sd15, change, match):
    with pytest.raises(ValueError, match=match):
        sd15.repaint([dataclasses.replace(req(), **change)], SETTINGS)
    with pytest.raises(ValueError, match="names must be unique"):
        sd15.repaint([req(), req()], SETTINGS)


def test_a_few_step_model_repaints_with_its_guidance_embedding_and_no_classifier_free_guidance(tiny_lcm_dir):
    """The CPU preset's model (LCM-distilled) in the plate flow: diffusers' img2img and inpaint pipelines would run
    classifier-free guidance on it and never pass its guidance embedding; a prompt past 77 tokens crashed them."""
    lcm = DiffusersBackend(model=str(tiny_lcm_dir))
    assert lcm.few_step
    seen = []

    def record(module, args, kwargs, output):  # what the UNet was called with, after any pre-hooks
        sample = args[0] if args else kwargs["sample"]
        seen.append((sample.shape[0], kwargs.get("timestep_cond")))

    handle = lcm.pipe.unet.register_forward_hook(record, with_kwargs=True)
    long_prompt = ", ".join(f"a pillar of carved stone number {i}" for i in range(30))  # ~240 tokens
    try:
        out = lcm.repaint([req(mask=RIGHT_HALF, prompt=long_prompt), req("midground", denoise=0.5, seed=3)],
                          dataclasses.replace(SETTINGS, guidance=8.0))
    finally:
        handle.remove()
    assert len(out.images) == 2 and all(im.size == (W, H) for im in out.images)
    assert seen and all(batch == 1 for batch, _ in seen)  # one picture per call, never doubled for guidance
    expected = lcm.pipe.get_guidance_scale_embedding(torch.tensor([7.0]),
                                                     embedding_dim=lcm.pipe.unet.config.time_cond_proj_dim)
    assert all(cond is not None and torch.allclose(cond.float(), expected) for _, cond in seen)
    assert lcm.pipe.unet._forward_pre_hooks == {}  # the embedding hook lives for the call only


class UNetTimesteps:
    """The timesteps the UNet is called at (a forward pre-hook on the real module)."""

    def __init__(self, pipe):
        self.seen = []
        self.handle = pipe.unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self.seen.append(round(float(torch.as_tensor(t).reshape(-1)[0]), 3))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("steps, denoise, schedule", [(1, 0.25, 4), (2, 0.25, 4), (1, 0.55, 2), (4, 0.1, 10)])
def test_a_repaint_runs_at_least_one_step_from_the_noise_level_its_denoise_asks(sd15, steps, denoise, schedule):
    """Where int(steps * denoise) rounds to no step, the schedule is lengthened to the fewest steps that run one:
    the same single step, at the same timestep, as a diffusers user asking for `schedule` steps at that strength."""
    asked = dataclasses.replace(SETTINGS, steps=steps)
    with UNetTimesteps(sd15.pipe) as few:
        out = sd15.repaint([req(denoise=denoise)], asked)
    with UNetTimesteps(sd15.pipe) as full:
        reference = sd15.repaint([req(denoise=denoise)], dataclasses.replace(SETTINGS, steps=schedule))
    assert len(few.seen) == 1 and few.seen == full.seen  # one step, at the noise level `denoise` asks
    assert max_diff(out.images[0], reference.images[0]) == 0
    assert max_diff(out.images[0], start_image()) > 0  # it repainted
    call = out.info["calls"][0]
    assert (call["steps"], call["steps_run"]) == (schedule, 1) and out.info["steps"] == steps
    assert out.info["layers"]["background"]["steps_run"] == 1


def test_a_repaint_that_runs_steps_keeps_its_schedule(sd15):
    with UNetTimesteps(sd15.pipe) as seen:
        out = sd15.repaint([req(denoise=0.5)], SETTINGS)
    assert len(seen.seen) == 2 and (out.info["calls"][0]["steps"], out.info["calls"][0]["steps_run"]) == (STEPS, 2)


def test_a_few_step_scheduler_refuses_a_schedule_longer_than_its_own_before_any_step(tiny_lcm_dir):
    lcm = DiffusersBackend(model=str(tiny_lcm_dir))
    assert lcm.max_steps == 50  # LCM picks its steps from the 50 it was distilled on
    with UNetTimesteps(lcm.pipe) as seen:
        with pytest.raises(ValueError, match=r"denoise 0.01 runs a step only on a schedule of 100 steps; this "
                                             r"model's scheduler takes at most 50: raise denoise to at least 0.02"):
            lcm.repaint([req(denoise=0.01)], SETTINGS)
        with pytest.raises(ValueError, match=r"steps must be an integer in 1..50 for this model's scheduler, got 60"):
            lcm.repaint([req(denoise=0.5)], dataclasses.replace(SETTINGS, steps=60))
        out = lcm.repaint([req(denoise=0.02)], dataclasses.replace(SETTINGS, steps=1))
    assert len(seen.seen) == 1 and out.info["calls"][0]["steps"] == 50
