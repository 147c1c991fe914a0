"""The diffusers backend's presets: model + depth ControlNet pairs with their sampling defaults, and the decoders.

Plain data, no torch: the backend chooser (layers.backends.auto), the command line and the studio read it without
loading a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

SCHEDULERS = ("dpmpp_2m", "lcm", "tcd", "euler_trailing")
"""Schedulers a preset can swap in: DPM-Solver++ (2M, Karras sigmas), LCM's, TCD's (Trajectory Consistency
Distillation, with its stochastic `eta`), and Euler with "trailing" timestep spacing (the first step at t = 999)."""


@dataclass(frozen=True)
class Lora:
    """A LoRA fused into the model's UNet (and text encoder, where the file has keys for it) once, at load."""

    repo: str
    """Hugging Face id of the repository holding the file."""
    file: str
    """The safetensors file in that repository (diffusers' `weight_name`)."""
    scale: float = 1.0
    """How much of the LoRA is fused in (diffusers' `fuse_lora(lora_scale=...)`), in (0, 2]."""

    def __post_init__(self):
        if not 0.0 < float(self.scale) <= 2.0:
            raise ValueError(f"LoRA scale must be in (0, 2], got {self.scale!r}")

    def info(self) -> dict:
        """What the manifest records of it."""
        return {"id": self.repo, "file": self.file, "scale": float(self.scale)}


@dataclass(frozen=True)
class Preset:
    """A named model + depth ControlNet pair with the sampling defaults that suit it."""

    model: str
    """Hugging Face id of the diffusers pipeline (the base model, under a LoRA)."""
    controlnet: str
    """Hugging Face id of the depth ControlNet for that model's family."""
    steps: int
    """Default number of denoising steps, 1..150."""
    guidance: float
    """Default guidance scale, 0..30: the classifier-free guidance scale (0 or 1: none, one UNet pass per step), or,
    for a UNet with a guidance embedding (LCM), the value it embeds."""
    scheduler: Optional[str] = None
    """Scheduler to swap in (one of SCHEDULERS), or None to keep the model's own."""
    control_end: float = 1.0
    """Plate composition: fraction of the plate's and the layers' steps the ControlNet guides, (0, 1]."""
    fill_denoise: float = 1.0
    """Plate composition: how far the background is re-noised where nearer layers hide it, (0, 1]."""
    lora: Optional[Lora] = None
    """A few-step LoRA fused into the base model at load, or None."""
    eta: Optional[float] = None
    """The scheduler's `eta` in [0, 1] (TCD's gamma: 0 deterministic, 1 fully stochastic), or None for the
    pipeline's default."""
    few_step: bool = False
    """Distilled to sample in a few steps (a LoRA says so only here; an LCM UNet also by its guidance embedding)."""

    def __post_init__(self):
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 150:
            raise ValueError(f"preset steps must be an integer in 1..150, got {self.steps!r}")
        if not 0.0 <= float(self.guidance) <= 30.0:
            raise ValueError(f"preset guidance must be in 0..30, got {self.guidance!r}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"preset scheduler must be one of {', '.join(SCHEDULERS)} or None, got {self.scheduler!r}")
        for name in ("control_end", "fill_denoise"):
            if not 0.0 < float(getattr(self, name)) <= 1.0:
                raise ValueError(f"preset {name} must be in (0, 1], got {getattr(self, name)!r}")
        if self.eta is not None and not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"preset eta must be in [0, 1] or None, got {self.eta!r}")

    def defaults(self) -> dict:
        """What GenerateOptions takes from the preset."""
        return {"steps": self.steps, "guidance": self.guidance, "control_end": self.control_end,
                "fill_denoise": self.fill_denoise}

    def step_words(self) -> str:
        """"1 step" / "4 steps"."""
        return f"{self.steps} step{'s' if self.steps != 1 else ''}"


SD15_DEPTH = "lllyasviel/control_v11f1p_sd15_depth"
SDXL_DEPTH = "diffusers/controlnet-depth-sdxl-1.0"
SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"

PRESETS: dict[str, Preset] = {
    "sd15": Preset(
        model=SD15_BASE, controlnet=SD15_DEPTH, steps=25, guidance=6.0,
        # The repository ships PNDM; DPM-Solver++ (2M) converges better at 25 steps.
        scheduler="dpmpp_2m",
    ),
    "sdxl": Preset(model=SDXL_BASE, controlnet=SDXL_DEPTH, steps=25, guidance=5.0),
    # The fastest stack. Hyper-SD's unified SD1.5 LoRA ("Hyper-SD15-1step-lora", which its card offers for 1 to 8
    # steps) fused into SD1.5, with the card's own settings for it, ControlNet usage included: TCDScheduler, one
    # step, guidance 0 (no classifier-free guidance: one UNet pass per step), eta 1.0 ("lower eta results in more
    # detail for multi-steps inference"). The ControlNet is the SD1.5 depth one, unchanged. A consistency model maps
    # any noise level to a picture, so the plate composition's img2img and inpaint passes, which start mid-schedule,
    # are what it was distilled for. Its paper (arXiv 2404.13686) reports state-of-the-art SD1.5 pictures at each
    # step count from 1 to 8.
    "hyper-sd15": Preset(
        model=SD15_BASE, controlnet=SD15_DEPTH, steps=1, guidance=0.0, scheduler="tcd", eta=1.0, few_step=True,
        lora=Lora("ByteDance/Hyper-SD", "Hyper-SD15-1step-lora.safetensors"),
        # The plate composition's few-step settings, as lcm-sd15's (below): at its one step every pass is guided
        # and runs one step whatever these say (the background fill from the surroundings' colours at t = 499);
        # raised to 2 or 4 steps, they spare the ControlNet where the structure is laid out and a fill step.
        control_end=0.5, fill_denoise=0.75,
    ),
    # LCM-Dreamshaper-v7 is an LCM-distilled SD1.5 UNet shipped as a full diffusers pipeline; it keeps SD1.5's
    # feature space, so the SD1.5 depth ControlNet plugs into it unchanged (diffusers' LCM guide pairs this checkpoint
    # with SD1.5 ControlNets). Its guidance is a learned embedding rather than classifier-free guidance, so a batch
    # of three runs the UNet on three items, not six.
    "lcm-sd15": Preset(
        model="SimianLuo/LCM_Dreamshaper_v7", controlnet=SD15_DEPTH, steps=4, guidance=8.0, scheduler="lcm",
        few_step=True,
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
    # SDXL-Lightning's 4-step LoRA fused into SDXL base with its card's settings: Euler with "trailing" timesteps,
    # 4 steps (the card: always the checkpoint's own step count), guidance 0. Paired with the SDXL depth ControlNet.
    # The card rates its 2-, 4- and 8-step models' quality alike and its full-UNet checkpoints above the LoRAs; the
    # LoRA loads through the same path as every other preset's weights. SDXL-Turbo, the other SDXL family, is
    # distilled at 512x512 under a non-commercial licence, where the SDXL depth ControlNet is trained at 1024.
    "lightning-sdxl": Preset(
        model=SDXL_BASE, controlnet=SDXL_DEPTH, steps=4, guidance=0.0, scheduler="euler_trailing", few_step=True,
        lora=Lora("ByteDance/SDXL-Lightning", "sdxl_lightning_4step_lora.safetensors"),
    ),
}

DEFAULT_PRESET = "sd15"
DEPTH_CONTROLNETS: dict[str, str] = {"sd15": SD15_DEPTH, "sdxl": SDXL_DEPTH}
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
