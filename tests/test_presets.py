"""Few-step presets: a LoRA fused into its base model from the hub cache, the model card's scheduler, steps,
guidance and eta, whole stacks at one and two steps, and one line when the LoRA file is missing."""
from __future__ import annotations

import dataclasses
import functools
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from layers.backends.base import ModelUnavailableError, RenderRequest, RenderSettings, RepaintRequest
from layers.backends.diffusers import PRESETS, SCHEDULERS, DiffusersBackend, Lora, Preset
from tiny_models import build_lora, lora_deltas, put_in_hub_cache

HYPER = PRESETS["hyper-sd15"]
W, H = 64, 96


def ramp(w=W, h=H):
    return np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))


def base_unet(folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(folder / "unet"))


def fused_exactly(unet, base, deltas) -> float:
    """The largest gap, over every weight of `unet`, between it and the base's plus the LoRA's delta (0 for a layer
    the LoRA does not touch)."""
    weights = dict(base.named_parameters())
    worst = 0.0
    for name, param in unet.named_parameters():
        module, _, kind = name.rpartition(".")
        expected = weights[name].detach().float()
        if kind == "weight" and module in deltas:
            expected = expected + deltas[module]
        worst = max(worst, float((param.detach().float() - expected).abs().max()))
    return worst


def test_the_hyper_preset_loads_offline_from_the_cache_and_fuses_its_lora_exactly(cached_cpu_preset, network_calls,
                                                                                  tiny_sd15_dir, tiny_sd15_lora,
                                                                                  monkeypatch):
    # at half strength, so that the scale is seen to apply
    monkeypatch.setitem(PRESETS, "hyper-sd15", dataclasses.replace(HYPER, lora=dataclasses.replace(HYPER.lora,
                                                                                                   scale=0.5)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = DiffusersBackend(model="hyper-sd15", dtype="float32")
    assert network_calls == []
    base = base_unet(tiny_sd15_dir)
    deltas = lora_deltas(tiny_sd15_lora, base, scale=0.5)
    assert len(deltas) >= 20  # attention, projections and feed-forward of every transformer block
    assert fused_exactly(backend.pipe.unet, base, deltas) < 1e-6
    assert fused_exactly(backend.pipe.unet, base, {}) > 1e-2  # the LoRA did change the weights
    # fused, then the adapter layers dropped: the UNet is made of the base model's own module types again
    assert [type(m) for m in backend.pipe.unet.modules()] == [type(m) for m in base.modules()]
    assert backend.model_info["lora"] == {"id": "ByteDance/Hyper-SD", "file": "Hyper-SD15-1step-lora.safetensors",
                                          "scale": 0.5}
    assert backend.model_info["model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_the_hyper_preset_samples_as_its_card_says(cached_cpu_preset, monkeypatch):
    """TCD with eta 1 into every pass's scheduler step, guidance 0 (one UNet pass per picture per step), 1 step."""
    from diffusers import TCDScheduler

    backend = DiffusersBackend(model="hyper-sd15", dtype="float32")
    assert backend.model_info["scheduler"] == "TCDScheduler" and isinstance(backend.pipe.scheduler, TCDScheduler)
    assert backend.few_step and not backend.guidance_embedding and backend.model_info["eta"] == 1.0
    assert backend.defaults == {"steps": 1, "guidance": 0.0, "control_end": 0.5, "fill_denoise": 0.75}
    assert not backend.uses_guidance(0.0) and not backend.uses_guidance(1.0)
    assert backend.uses_guidance(5.0)  # above 1 a LoRA model runs classifier-free guidance, as in diffusers

    etas, batches = [], []
    step = TCDScheduler.step

    @functools.wraps(step)  # the pipelines pass eta only to a step whose signature takes it
    def spy(self, *args, **kwargs):
        etas.append(kwargs.get("eta"))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(TCDScheduler, "step", spy)
    unet = backend.pipe.unet
    hook = unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        settings = RenderSettings(width=W, height=H, steps=1, guidance=0.0)
        requests = [RenderRequest(name=n, prompt="a harbour at dusk", negative_prompt="blurry", control=ramp(),
                                  prior=ramp(), seed=i) for i, n in enumerate(("background", "midground"))]
        rendered = backend.render(requests, settings)
        picture = rendered.images[0]
        repainted = backend.repaint([RepaintRequest(name="composite", prompt="a harbour at dusk", negative_prompt="",
                                                    image=picture, control=ramp(), seed=3, denoise=0.25)], settings)
    finally:
        hook.remove()
    assert etas == [1.0, 1.0]  # one step of the render, one of the repaint (its one step at denoise 0.25)
    assert batches == [2, 1]  # no negative half of the batch
    assert rendered.info["classifier_free_guidance"] is False
    assert repainted.info["calls"][0]["steps_run"] == 1 and repainted.images[0].size == (W, H)


@pytest.mark.parametrize("steps", [1, 2])
def test_a_hyper_stack_at_one_and_two_steps_is_complete_and_the_manifest_records_the_lora(
        steps, cached_cpu_preset, tiny_depth_anything_dir, tmp_path, capsys, monkeypatch):
    """`generate --backend diffusers` on a CPU: the plate flow with hyper-sd15 gives every file of a stack."""
    from psd_tools import PSDImage

    from layers import estimate
    from layers.cli import main
    from layers.estimate import DEFAULT_DEPTH_MODEL

    put_in_hub_cache(cached_cpu_preset, DEFAULT_DEPTH_MODEL, tiny_depth_anything_dir)
    monkeypatch.setattr(estimate, "_ESTIMATORS", {})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "stack"
    code = main(["generate", "--prompt", "a flooded cathedral, two pilgrims with lanterns, broken pews in front",
                 "--backend", "diffusers", "--steps", str(steps), "--matte-model", "closed-form", "--width", str(W),
                 "--height", str(H), "--no-video", "--formats", "psd", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["preset"] == "hyper-sd15" and manifest["models"]["lora"]["file"] == HYPER.lora.file
    assert manifest["composition"] == "plate" and manifest["options"]["steps"] == steps
    assert manifest["render"]["scheduler"] == "TCDScheduler" and manifest["render"]["eta"] == 1.0
    assert all(call["steps_run"] >= 1 for call in manifest["render"]["calls"])
    assert manifest["render"]["harmonize"]["steps_run"] == 1
    assert [layer["name"] for layer in manifest["layers"]] == ["background", "midground", "foreground"]
    with Image.open(out / "plate.png") as plate:
        assert plate.size == (W, H)
    psd = PSDImage.open(out / "stack.psd")
    assert len(list(psd.descendants())) >= 3


def test_a_missing_lora_file_fails_in_one_line_naming_it_and_how_to_fetch_it_before_any_weights_load(
        cached_cpu_preset, monkeypatch, tmp_path, capsys):
    from diffusers import ControlNetModel

    from layers.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.rmtree(cached_cpu_preset / "hub" / "models--ByteDance--Hyper-SD")

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the LoRA file was found")

    monkeypatch.setattr(ControlNetModel, "from_pretrained", no_weights)
    with pytest.raises(ModelUnavailableError) as err:
        DiffusersBackend(model="hyper-sd15")
    text = str(err.value)
    assert "\n" not in text
    assert "LoRA 'ByteDance/Hyper-SD/Hyper-SD15-1step-lora.safetensors'" in text and "HF_HUB_OFFLINE=1" in text
    assert "hf download ByteDance/Hyper-SD Hyper-SD15-1step-lora.safetensors" in text

    code = main(["generate", "--prompt", "a harbour", "--backend", "diffusers", "--out", str(tmp_path / "out")])
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Hyper-SD15-1step-lora.safetensors" in err_lines[-1]
    assert not (tmp_path / "out").exists()


def test_the_lightning_preset_fuses_its_lora_into_sdxl_and_samples_with_trailing_euler(
        online, tiny_sdxl_dir, tiny_models_root, network_calls, monkeypatch):
    from diffusers import EulerDiscreteScheduler

    preset = PRESETS["lightning-sdxl"]
    lora = build_lora(tiny_sdxl_dir, tiny_models_root / "sdxl_lora" / preset.lora.file, rank=2, alpha=4.0, seed=1)
    put_in_hub_cache(online, preset.model, tiny_sdxl_dir)
    put_in_hub_cache(online, preset.controlnet, tiny_sdxl_dir / "controlnet")
    put_in_hub_cache(online, preset.lora.repo, lora.parent)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = DiffusersBackend(model="lightning-sdxl", dtype="float32")
    assert network_calls == []
    base = base_unet(tiny_sdxl_dir)
    assert fused_exactly(backend.pipe.unet, base, lora_deltas(lora, base, scale=1.0)) < 1e-6
    scheduler = backend.pipe.scheduler
    assert isinstance(scheduler, EulerDiscreteScheduler) and scheduler.config.timestep_spacing == "trailing"
    scheduler.set_timesteps(4)
    assert [int(t) for t in scheduler.timesteps] == [999, 749, 499, 249]  # the card's 4-step schedule
    assert backend.defaults["steps"] == 4 and backend.defaults["guidance"] == 0.0 and backend.eta is None
    assert backend.model_info["lora"]["file"] == "sdxl_lightning_4step_lora.safetensors"
    out = backend.render([RenderRequest(name="background", prompt="a harbour", negative_prompt="", control=ramp(64, 64),
                                        prior=ramp(64, 64), seed=1)], RenderSettings(width=64, height=64, steps=4,
                                                                                     guidance=0.0))
    assert out.images[0].size == (64, 64) and out.info["classifier_free_guidance"] is False


def test_a_pipeline_built_elsewhere_samples_as_the_preset_asked(tiny_sd15_dir):
    """What the CPU bench times: the base architecture under a preset's scheduler, eta and defaults."""
    from diffusers import StableDiffusionControlNetPipeline, TCDScheduler

    pipe = StableDiffusionControlNetPipeline.from_pretrained(str(tiny_sd15_dir), safety_checker=None,
                                                             requires_safety_checker=False)
    backend = DiffusersBackend.from_pipeline(pipe, model="random sd15", preset="hyper-sd15")
    assert isinstance(pipe.scheduler, TCDScheduler) and backend.eta == 1.0 and backend.few_step
    assert backend.defaults == HYPER.defaults() and "lora" not in backend.model_info  # no LoRA was fused here
    with pytest.raises(ValueError, match="preset must be one of"):
        DiffusersBackend.from_pipeline(pipe, preset="turbo")


@pytest.mark.parametrize("bad, message", [
    (dict(steps=0), "steps"), (dict(guidance=31.0), "guidance"), (dict(scheduler="euler_a"), "scheduler"),
    (dict(control_end=0.0), "control_end"), (dict(fill_denoise=1.5), "fill_denoise"), (dict(eta=1.5), "eta"),
])
def test_a_preset_out_of_range_is_refused_in_one_line(bad, message):
    fields = dict(model="org/model", controlnet="org/controlnet", steps=4, guidance=0.0) | bad
    with pytest.raises(ValueError, match=message):
        Preset(**fields)
    with pytest.raises(ValueError, match="LoRA scale"):
        Lora("org/lora", "lora.safetensors", scale=0.0)
    assert all(p.scheduler is None or p.scheduler in SCHEDULERS for p in PRESETS.values())
