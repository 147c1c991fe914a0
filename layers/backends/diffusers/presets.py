"""The diffusers backend's presets: model + depth ControlNet pairs with their sampling defaults, and the decoders.

Plain data, no torch: the backend chooser (layers.backends.auto), the command line and the studio read it without
loading a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Preset:
    """A named model + depth ControlNet pair with the sampling defaults that suit it."""

    model: str
    """Hugging Face id of the diffusers pipeline."""
    controlnet: str
    """Hugging Face id of the depth ControlNet for that model's family."""
    steps: int
    """Default number of denoising steps."""
    guidance: float
    """Default guidance scale (for a few-step model: the guidance embedding it was distilled with)."""
    scheduler: Optional[str] = None
    """Scheduler to swap in ("dpmpp_2m", "lcm"), or None to keep the model's own."""
    control_end: float = 1.0
    """Plate composition: fraction of the plate's and the layers' steps the ControlNet guides."""
    fill_denoise: float = 1.0
    """Plate composition: how far the background is re-noised where nearer layers hide it."""

    def defaults(self) -> dict:
        """What GenerateOptions takes from the preset."""
        return {"steps": self.steps, "guidance": self.guidance, "control_end": self.control_end,
                "fill_denoise": self.fill_denoise}


PRESETS: dict[str, Preset] = {
    "sd15": Preset(
        model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        controlnet="lllyasviel/control_v11f1p_sd15_depth",
        steps=25, guidance=6.0,
        # The repository ships PNDM; DPM-Solver++ (2M) converges better at 25 steps.
        scheduler="dpmpp_2m",
    ),
    "sdxl": Preset(
        model="stabilityai/stable-diffusion-xl-base-1.0",
        controlnet="diffusers/controlnet-depth-sdxl-1.0",
        steps=25, guidance=5.0,
    ),
    # Few-step preset for previews. LCM-Dreamshaper-v7 is an LCM-distilled SD1.5 UNet shipped as a full
    # diffusers pipeline, so it loads through the same from_pretrained path as every other model (no LoRA,
    # hence no peft dependency) and keeps SD1.5's feature space: the SD1.5 depth ControlNet plugs into it
    # unchanged (diffusers' LCM guide pairs this checkpoint with SD1.5 ControlNets). Its guidance is a
    # learned embedding rather than classifier-free guidance, so a batch of three runs the UNet on three
    # items, not six, and at SD1.5's native 512x768 four steps keep the whole stack interactive.
    # (SDXL-Lightning / Hyper-SD are SDXL-sized: slower at the same size, and best at 1024 px.)
    "lcm-sd15": Preset(
        model="SimianLuo/LCM_Dreamshaper_v7",
        controlnet="lllyasviel/control_v11f1p_sd15_depth",
        steps=4, guidance=8.0, scheduler="lcm",
        # Four LCM steps run at t = 999, 759, 499, 259. The depth ControlNet lays the structure out in the first
        # two; the last two refine texture, which a depth map does not describe, and on a CPU the ControlNet is a
        # quarter of every step's work (1.6 of 5.8 s per picture at 512x768 in bfloat16). The midground and
        # foreground (img2img at 0.55: t = 499, 259) start from the plate's pixels, which already hold their shape.
        control_end=0.5,
        # The background's hidden parts start from the decomposition's fill (the colours around them) three steps
        # from the end instead of from noise four: one step less, and the invented wall keeps its surroundings'
        # light.
        fill_denoise=0.75,
    ),
}

DEFAULT_PRESET = "sd15"
DEPTH_CONTROLNETS: dict[str, str] = {"sd15": PRESETS["sd15"].controlnet, "sdxl": PRESETS["sdxl"].controlnet}
"""The depth ControlNet used for a model of each family when none is given."""

FAMILY_PIPELINES = {"sd15": "StableDiffusionControlNetPipeline", "sdxl": "StableDiffusionXLControlNetPipeline"}

DECODERS = ("full", "tiny")
"""How latents become pictures: "full", the model's own VAE; "tiny", TAESD (TINY_DECODERS), a 2.4M-parameter
distilled decoder for the same latent space. On a CPU the tiny one decodes the 512x768 3-layer batch in a few
seconds where the full VAE takes about half a minute (bench/bench_cpu_speedups.py); its pictures are a little
softer, so the CPU preset takes it and `--decoder full` brings the VAE back."""
TINY_DECODERS: dict[str, str] = {"sd15": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}
"""Hugging Face id of the tiny decoder (AutoencoderTiny) for each model family's latent space."""


def _is_tiny(vae) -> bool:
    return type(vae).__name__ == "AutoencoderTiny"
