"""DiffusersBackend: the diffusers renderer, assembled from its loading, prompt, render and repaint parts."""
from __future__ import annotations

from .loading import LoadingMixin
from .prompts import PromptEncodingMixin
from .render import RenderMixin
from .repaint import RepaintMixin


class DiffusersBackend(LoadingMixin, PromptEncodingMixin, RenderMixin, RepaintMixin):
    """Stable Diffusion + depth ControlNet renderer.

    Args:
        model: a preset name (see PRESETS), a Hugging Face id, or a local folder holding a diffusers pipeline.
            The family (SD1.x/2.x or SDXL) is read from the model itself. A preset with a LoRA loads its base model,
            then the LoRA file (cache first, like every weight; one line naming the file when it cannot be had),
            fused into the weights.
        controlnet: a Hugging Face id ("org/name", or "org/name/subfolder") or a local folder holding a depth
            ControlNet. None: the preset's; else the model folder's own `controlnet/`; else the family's default
            depth ControlNet (DEPTH_CONTROLNETS).
        device: "cuda", "cuda:N", "mps" or "cpu"; None picks CUDA when there is one, else CPU.
        dtype: "float16", "bfloat16" or "float32"; None: float16 on an accelerator, float32 on CPU.
        batch: "auto" (layers in one call, one by one when memory runs out), "batched" or "one_by_one".
        local_files_only: never touch the network; None follows HF_HUB_OFFLINE.
        offload: "auto" (model CPU offload when the accelerator's free memory is short), "none", "model",
            "sequential". Offload needs an accelerator.
        vae_tiling: "auto" (tiles above TILING_PIXELS on an accelerator), True or False.
        max_prompt_chunks: how many 77-token chunks a prompt may use; longer prompts are cut and reported.
        safety_checker: keep the SD1.x safety checker a model ships (it blanks flagged images).
        decoder: "full" (the model's own VAE) or "tiny" (the family's TAESD, TINY_DECODERS: a few seconds
            instead of half a minute to decode a stack on a CPU, slightly softer pictures; see DECODERS).

    Raises:
        ModelUnavailableError: the weights are not reachable (one line naming the id and how to fetch it).
        ValueError: a bad option, an unsupported model, or a ControlNet from another family.

    Attributes:
        model_info: model and ControlNet ids, family, pipeline and scheduler classes, dtype, device, placement, a
            preset's fused LoRA (id, file, scale) and eta (for the manifest; every RenderResult.info starts with it).
        defaults: what suits the model, as GenerateOptions keywords (the preset's; an LCM model's: 4 steps,
            guidance 8, the ControlNet over half the steps, the background fill re-noised 0.75).
        few_step: distilled to sample in a few steps (the preset says so, or the UNet has a guidance embedding).
        guidance_embedding: the UNet takes its guidance as an embedding (LCM's time_cond_proj_dim) and never runs
            classifier-free guidance; a few-step LoRA has none and runs without it at guidance 0 or 1.
        eta: the preset's scheduler eta (TCD's gamma), or None for the pipelines' default.
        count_tokens: the model's own tokenizer count, for the planner.
        token_budget: the longest layer prompt conditioned in full (max_prompt_chunks chunks).
        progress_interval: least seconds between two reports within a step (PROGRESS_INTERVAL; 0 reports every
            block of the UNet, ControlNet and VAE decoder).
    """

    name = "diffusers"
