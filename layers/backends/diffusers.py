"""Render layers with Stable Diffusion (1.x/2.x or XL) and a depth ControlNet through diffusers.

One pipeline is loaded in the constructor and reused for every layer and request. The three layers of a
scene go through one pipeline call (a batch of three prompts, three control images, three generators);
when the accelerator runs out of memory the same layers are rendered one by one, then smaller.

Three things the stock pipeline call does not do, and how this module does them:
- Per-layer ControlNet strength in one batch. `controlnet_conditioning_scale` is one float for a single
  ControlNet (a list only for several ControlNets), so when the layers' strengths differ the backend passes
  1.0 and a forward hook on the ControlNet multiplies each batch item's residuals by that item's strength
  (see `_ResidualScaler`). That is the same product the ControlNet itself computes
  (`residual * conditioning_scale`), only per item, so a layer rendered with strength s in a batch gets what
  it would get alone with `controlnet_conditioning_scale=s`. Equal strengths go through the float as usual.
- Prompts longer than CLIP's 77 tokens. The pipeline truncates them silently; here every prompt is split
  into 75-token chunks (at a comma where one is near the cut), each chunk is encoded as its own
  BOS + tokens + EOS + padding sequence, and the chunk embeddings are concatenated along the sequence axis
  (SDXL: both encoders, pooled embedding from the first chunk). A prompt that fits one chunk is encoded
  exactly as the pipeline would encode it. What each layer's text encoder saw goes into RenderResult.info.
- Isolated subjects: every layer but the background is prompted as a subject on a plain backdrop, which
  the matting step separates cleanly.

`repaint` starts from pixels that exist (inpaint under a mask, img2img without one) through diffusers' ControlNet
img2img / inpaint pipelines, made with `from_pipe` from the loaded pipeline: the same modules, never a second
copy of the weights; the same long-prompt encoding, per-item strength and memory fallbacks as `render`.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from ..images import check_unit_map
from ..models import ModelSource, hub_offline, load_pretrained, parse_model_source
from .base import (DENOISE_SHARE, ProgressCallback, RenderRequest, RenderResult,
                   RenderSettings, RepaintRequest)

logger = logging.getLogger(__name__)


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

ISOLATION_PROMPT = "isolated on a plain neutral grey background"
"""Appended to the prompt of every layer but the background: one subject on a flat backdrop, easy to matte."""
ISOLATION_NEGATIVE = "busy background, scenery, landscape, detailed background"
ISOLATED_LAYERS = ("midground", "foreground")
WHOLE_PROMPT_NAMES = ("plate", "composite")
"""Requests that carry a whole scene's prompt (compose.py's plate and harmonising pass): encoded in full."""
WHOLE_PROMPT_CHUNKS = 16
"""How many 77-token chunks a whole-scene prompt may use (~1200 tokens: the longest example prompts take ~12)."""
"""The layers rendered as subjects on a plain backdrop; anything else (the background, a plate) as a scene."""

BATCH_MODES = ("auto", "batched", "one_by_one")
OFFLOAD_MODES = ("auto", "none", "model", "sequential")
DECODERS = ("full", "tiny")
"""How latents become pictures: "full", the model's own VAE; "tiny", TAESD (TINY_DECODERS), a 2.4M-parameter
distilled decoder for the same latent space. On a CPU the tiny one decodes the 512x768 3-layer batch in a few
seconds where the full VAE takes about half a minute (bench/bench_cpu_speedups.py); its pictures are a little
softer, so the CPU preset takes it and `--decoder full` brings the VAE back."""
TINY_DECODERS: dict[str, str] = {"sd15": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}
"""Hugging Face id of the tiny decoder (AutoencoderTiny) for each model family's latent space."""
FALLBACK_SCALES = (0.75, 0.5)
"""Side scales tried, one layer at a time, when even one full-size layer does not fit in memory."""
TILING_PIXELS = 1536 * 1536
"""Above this many pixels per image the VAE decodes in tiles on an accelerator (tiling="auto")."""


CHANNELS_LAST_MODELS = ("unet", "controlnet")
"""The models kept in channels-last memory layout on a CPU: one UNet + ControlNet step of the 3-layer batch at
512x768 in bfloat16 takes 15% less CPU time so (bench/bench_cpu_speedups.py, README "Benchmarks"). The tiny
decoder is too (a third of its CPU time); the full VAE gains nothing from it and stays contiguous."""
PROGRESS_INTERVAL = 0.5
"""Least seconds between two progress reports within a step (whole steps are always reported)."""


class RenderMemoryError(ValueError):
    """Out of accelerator memory even one layer at a time at the smallest fallback size."""


def _dtype_from(dtype, device_type: str):
    import torch

    if dtype is None:
        return torch.float16 if device_type in ("cuda", "mps", "xpu") else torch.float32
    names = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
    resolved = names.get(dtype.lower()) if isinstance(dtype, str) else dtype
    if resolved not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    if resolved == torch.float16 and device_type == "cpu":
        raise ValueError(f"dtype {dtype!r} needs an accelerator; on CPU use float32 or bfloat16")
    return resolved


def _device_from(device):
    import torch

    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be like 'cuda', 'cuda:1', 'mps' or 'cpu', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is available here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available here")
    return dev


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _control_image(control: np.ndarray, width: int, height: int) -> Image.Image:
    """Depth float map (1 = near) -> RGB image, white = near, as depth ControlNets are trained on."""
    img = Image.fromarray(np.clip(np.rint(control * 255.0), 0, 255).astype(np.uint8), "L")
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    return img.convert("RGB")


def _isolated(request: RenderRequest) -> tuple[str, str]:
    """The prompt and negative prompt a layer is rendered with."""
    if request.name not in ISOLATED_LAYERS:  # the background, a whole-scene plate
        return request.prompt, request.negative_prompt
    prompt, negative = request.prompt, request.negative_prompt.strip()
    # The planner frames these layers itself ("isolated on a plain backdrop", "busy backdrop" in the negative);
    # saying it twice only spends tokens, so the framing is added only to prompts that lack it.
    if not any(w in prompt.lower() for w in ("isolated", "plain backdrop", "plain background")):
        prompt = f"{prompt.rstrip().rstrip(',')}, {ISOLATION_PROMPT}" if prompt.strip() else ISOLATION_PROMPT
    if not any(w in negative.lower() for w in ("busy background", "busy backdrop", "background scenery")):
        negative = f"{negative.rstrip(',')}, {ISOLATION_NEGATIVE}" if negative else ISOLATION_NEGATIVE
    return prompt, negative


class _ResidualScaler:
    """Forward hook on the ControlNet: multiplies each batch item's residuals by that item's strength.

    The pipeline stacks the batch as [unconditional items..., conditional items...] under classifier-free
    guidance (and only the conditional items in guess mode), so the per-layer strengths are tiled to the
    residuals' batch size. `strengths` is set around one pipeline call and None otherwise.
    """

    def __init__(self):
        self.strengths = None

    def __call__(self, module, args, output):
        if self.strengths is None or (isinstance(output, tuple) and output[1] is None):  # not run: _IdleControlNet
            return output
        if isinstance(output, tuple):
            down, mid = output
        else:
            down, mid = output.down_block_res_samples, output.mid_block_res_sample
        n = mid.shape[0]
        if n % len(self.strengths):
            raise RuntimeError(f"ControlNet batch of {n} does not tile {len(self.strengths)} layer strengths")
        factor = self.strengths.to(device=mid.device, dtype=mid.dtype).repeat(n // len(self.strengths))
        factor = factor.view(-1, 1, 1, 1)
        down = [d * factor for d in down]
        mid = mid * factor
        if isinstance(output, tuple):
            return (down, mid)
        output.down_block_res_samples, output.mid_block_res_sample = down, mid
        return output


class _IdleControlNet:
    """The ControlNet's forward, not run when its conditioning scale is 0.

    diffusers' ControlNet pipelines call the ControlNet on every step and scale its residuals by 0 past
    ``control_guidance_end`` (and for a strength of 0): on a CPU that is a quarter of a step's work for nothing.
    Skipped, the pipeline hands the UNet no residuals, which is the same sum (x + 0 = x). Installed once per
    ControlNet as an instance attribute (``_skip_idle_controlnet``), so every pipeline sharing it (``from_pipe``)
    skips alike."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, *args, conditioning_scale=1.0, guess_mode: bool = False, return_dict: bool = True, **kwargs):
        if (isinstance(conditioning_scale, (int, float)) and conditioning_scale == 0 and not guess_mode
                and not return_dict):
            return None, None
        return self.forward(*args, conditioning_scale=conditioning_scale, guess_mode=guess_mode,
                            return_dict=return_dict, **kwargs)


def _skip_idle_controlnet(controlnet) -> None:
    """Wrap the ControlNet's forward in _IdleControlNet, once.

    accelerate's offload hooks (diffusers re-installs them around every pipeline call) keep the module's own forward
    as ``_old_forward`` and put it back when removed: under them, that is the forward to wrap."""
    name = "_old_forward" if hasattr(controlnet, "_hf_hook") and hasattr(controlnet, "_old_forward") else "forward"
    forward = getattr(controlnet, name)
    if not isinstance(forward, _IdleControlNet):
        setattr(controlnet, name, _IdleControlNet(forward))


def _guided(settings: RenderSettings, steps_run: int) -> RenderSettings:
    """`settings` with control_end raised to cover at least the first of the `steps_run` steps a call runs.

    diffusers guides step i (of n) only while (i + 1) / n <= control_end: an end below 1 / n would leave a short
    call (a 2-step repaint) with no ControlNet at all, and the layer's strength with no effect."""
    end = max(float(settings.control_end), 1.0 / max(1, steps_run))
    return settings if end == settings.control_end else replace(settings, control_end=min(1.0, end))


class _StepTicks:
    """Progress within the denoising steps and during the VAE decoding (see base.ProgressCallback).

    On a CPU one step of a batch takes many seconds and the decoding longer still, so once-per-step reports leave a
    progress bar standing. Forward hooks on the ResNet and transformer blocks of the UNet and the ControlNet (each
    runs once per step; a whole up-block of the UNet at full resolution took 5-7 s of a 20 s step) and
    on the ResNet blocks of the VAE decoder (each runs once per decoded image or tile) count how far the work has
    got; the count becomes a fractional step, reported at most once per `interval` seconds. Whole steps go through
    `step_done`, the last one through `finish` once the pictures are decoded. The hooks live for one pipeline call
    (a context manager)."""

    def __init__(self, pipe, label: str, progress: ProgressCallback, interval: float, images: int,
                 size: tuple[int, int]):
        self.pipe, self.label, self.progress, self.interval = pipe, label, progress, interval
        unet, cn, decoder = pipe.unet, pipe.controlnet, pipe.vae.decoder
        unet_parts = [part for m in (*unet.down_blocks, unet.mid_block, *unet.up_blocks) if m is not None
                      for part in _parts(m)]
        cn_parts = [part for m in (*cn.down_blocks, cn.mid_block) if m is not None for part in _parts(m)]
        self._step_blocks = unet_parts + cn_parts
        # A step whose ControlNet is skipped (_IdleControlNet) runs the UNet's parts only; the ControlNet runs
        # first, so a step's first part says which.
        self._cn_parts = {id(m) for m in cn_parts}
        self._unet_count = len(unet_parts)
        self._per_step = len(self._step_blocks)
        if _is_tiny(pipe.vae):  # TAESD: a plain stack of blocks
            self._decode_blocks = [m for m in decoder.layers if type(m).__name__ == "AutoencoderTinyBlock"]
        else:
            self._decode_blocks = [r for block in (decoder.mid_block, *decoder.up_blocks) if block is not None
                                   for r in getattr(block, "resnets", ())]
        vae = pipe.vae
        passes = images if getattr(vae, "use_slicing", False) else 1
        self._decode_ticks = max(1, len(self._decode_blocks) * passes * _tiles(vae, size, pipe.vae_scale_factor))
        self._handles: list = []
        self.done = 0
        self._ticks = 0
        self._decoding = False
        self._last = time.perf_counter()

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._step_tick) for m in self._step_blocks]
        self._handles += [m.register_forward_hook(self._decode_tick) for m in self._decode_blocks]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False

    def _report(self, step: float, total: int, *, always: bool = False):
        now = time.perf_counter()
        if always or now - self._last >= self.interval:
            self._last = now
            self.progress(self.label, step, total)

    def _step_tick(self, module, args, output):
        total = self.pipe.num_timesteps
        if self._ticks == 0:
            self._per_step = len(self._step_blocks) if id(module) in self._cn_parts else self._unet_count
        self._ticks += 1
        if self._decoding or self.done >= total or (self._ticks >= self._per_step and self.done < total - 1):
            return  # the step's end is reported as a whole step
        share = DENOISE_SHARE if self.done == total - 1 else 1.0
        self._report(self.done + share * min(self._ticks / self._per_step, 0.99), total)

    def _decode_tick(self, module, args, output):
        if not self._decoding:
            return
        self._ticks += 1
        if self._ticks >= self._decode_ticks:
            return
        total = self.pipe.num_timesteps
        self._report(total - 1 + DENOISE_SHARE + (1 - DENOISE_SHARE) * self._ticks / self._decode_ticks, total)

    def step_done(self, step: int, total: int):
        """Step `step` (1-based) of `total` has finished denoising."""
        self.done, self._ticks = step, 0
        if step < total:
            self._report(step, total, always=True)
        else:
            self._decoding = True

    def finish(self, total: int):
        """The pictures are decoded: the last whole step."""
        self._report(total, total, always=True)


def _parts(block) -> list:
    """A UNet or ControlNet block's ResNet and transformer blocks (each a progress tick), or the block itself."""
    return [*(getattr(block, "resnets", None) or ()), *(getattr(block, "attentions", None) or ())] or [block]


def _tiles(vae, size: tuple[int, int], scale: int) -> int:
    """How many tiles the VAE decodes one width x height image in (1 without tiling), for the progress count."""
    if not getattr(vae, "use_tiling", False):
        return 1
    size = getattr(vae, "tile_latent_min_size", 0)
    overlap = int(size * (1 - getattr(vae, "tile_overlap_factor", 0.25)))
    if size <= 0 or overlap <= 0:
        return 1
    latent_w, latent_h = size[0] // scale, size[1] // scale
    if latent_h <= size and latent_w <= size:
        return 1
    return -(-latent_h // overlap) * -(-latent_w // overlap)


@dataclass
class _Encoded:
    """One text's conditioning, chunk by chunk."""

    chunks: Any
    """Tensor (k, 77, D): one embedding sequence per 77-token chunk."""
    pooled: Any
    """Tensor (1, P) for SDXL (pooled embedding of the first chunk), else None."""
    zeros: bool = False
    """An all-zero (empty SDXL negative) conditioning: padded with zeros, not with the empty prompt."""


class DiffusersBackend:
    """Stable Diffusion + depth ControlNet renderer.

    Args:
        model: a preset name (see PRESETS), a Hugging Face id, or a local folder holding a diffusers pipeline.
            The family (SD1.x/2.x or SDXL) is read from the model itself.
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
        model_info: model and ControlNet ids, family, pipeline and scheduler classes, dtype, device, placement
            (for the manifest; every RenderResult.info starts with it).
        defaults: what suits the model, as GenerateOptions keywords (the preset's; a few-step model's: 4 steps,
            guidance 8, the ControlNet over half the steps, the background fill re-noised 0.75).
        count_tokens: the model's own tokenizer count, for the planner.
        token_budget: the longest layer prompt conditioned in full (max_prompt_chunks chunks).
        progress_interval: least seconds between two reports within a step (PROGRESS_INTERVAL; 0 reports every
            block of the UNet, ControlNet and VAE decoder).
    """

    name = "diffusers"

    def __init__(self, model: str = DEFAULT_PRESET, controlnet: Optional[str] = None, *, device=None, dtype=None,
                 batch: str = "auto", local_files_only: Optional[bool] = None, offload: str = "auto",
                 vae_tiling="auto", max_prompt_chunks: int = 4, safety_checker: bool = False,
                 decoder: str = "full"):
        self._check_options(batch, offload, vae_tiling, max_prompt_chunks)
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        (ControlNetModel, DiffusionPipeline, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline,
         UNet2DConditionModel) = _import_diffusers()

        local_only = hub_offline() if local_files_only is None else bool(local_files_only)
        preset_name = model if isinstance(model, str) and model in PRESETS else None
        preset = PRESETS.get(preset_name) if preset_name else None
        model_src = parse_model_source(preset.model if preset else model, "model")

        index = load_pretrained(DiffusionPipeline.load_config, model_src, "model", local_only)
        if "unet" not in index or "vae" not in index:
            raise ValueError(f"model {model_src.label!r} is a {index.get('_class_name', 'non-diffusers')} without "
                             f"a UNet and VAE; this backend renders Stable Diffusion 1.x/2.x and SDXL models")
        unet_src = ModelSource(model_src.location, f"{model_src.subfolder}/unet" if model_src.subfolder else "unet",
                               model_src.is_folder)
        unet_config = load_pretrained(UNet2DConditionModel.load_config, unet_src, "model", local_only)
        family = _detect_family(index, unet_config)

        cn_src = self._controlnet_source(controlnet, preset, model_src, index, family)
        cn_config = load_pretrained(ControlNetModel.load_config, cn_src, "controlnet", local_only)
        _check_controlnet_fits(cn_config, unet_config, cn_src, model_src, family)

        dev = _device_from(device)
        torch_dtype = _dtype_from(dtype, dev.type)
        cn = load_pretrained(ControlNetModel.from_pretrained, cn_src, "controlnet", local_only, dtype=torch_dtype)
        kwargs: dict[str, Any] = {"controlnet": cn, "dtype": torch_dtype}
        if decoder == "tiny":  # passed in, so from_pretrained neither downloads nor loads the model's own VAE
            kwargs["vae"] = load_tiny_decoder(family, torch_dtype, local_only)
        if family == "sd15":
            pipe_cls = StableDiffusionControlNetPipeline
            if not safety_checker:
                kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        else:
            pipe_cls = StableDiffusionXLControlNetPipeline
        # pipelines type-hint an AutoencoderKL and warn about any other decoder, which every SD pipeline can use
        with _muted("diffusers.pipelines.pipeline_utils") if decoder == "tiny" else contextlib.nullcontext():
            pipe = load_pretrained(pipe_cls.from_pretrained, model_src, "model", local_only, **kwargs)
        if preset is not None and preset.scheduler:
            _swap_scheduler(pipe, preset.scheduler)

        self._setup(pipe, model_label=model_src.label, controlnet_label=cn_src.label, preset=preset_name,
                    family=family, batch=batch, offload=offload, vae_tiling=vae_tiling,
                    max_prompt_chunks=max_prompt_chunks, device=dev)

    @classmethod
    def from_pipeline(cls, pipe, *, model: str = "custom", controlnet: str = "custom", batch: str = "auto",
                      vae_tiling="auto", max_prompt_chunks: int = 4) -> "DiffusersBackend":
        """Wrap a ControlNet pipeline built elsewhere (already on its device) in this backend.

        Args:
            pipe: a StableDiffusionControlNetPipeline or StableDiffusionXLControlNetPipeline with one ControlNet.
            model, controlnet: names recorded in model_info.
            batch, vae_tiling, max_prompt_chunks: as in the constructor.

        Returns:
            A DiffusersBackend rendering with `pipe`.
        """
        from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

        cls._check_options(batch, "none", vae_tiling, max_prompt_chunks)
        if not isinstance(pipe.controlnet, ControlNetModel):
            raise ValueError(f"pipe.controlnet must be one ControlNetModel, got {type(pipe.controlnet).__name__}")
        family = "sdxl" if isinstance(pipe, StableDiffusionXLControlNetPipeline) else "sd15"
        self = cls.__new__(cls)
        self._setup(pipe, model_label=model, controlnet_label=controlnet, preset=None, family=family, batch=batch,
                    offload=None, vae_tiling=vae_tiling, max_prompt_chunks=max_prompt_chunks,
                    device=pipe._execution_device)
        return self

    @staticmethod
    def _check_options(batch, offload, vae_tiling, max_prompt_chunks):
        if batch not in BATCH_MODES:
            raise ValueError(f"batch must be one of {', '.join(BATCH_MODES)}, got {batch!r}")
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
        if vae_tiling not in ("auto", True, False):
            raise ValueError(f"vae_tiling must be 'auto', True or False, got {vae_tiling!r}")
        if not isinstance(max_prompt_chunks, int) or not 1 <= max_prompt_chunks <= 32:
            raise ValueError(f"max_prompt_chunks must be an integer in 1..32, got {max_prompt_chunks!r}")

    @staticmethod
    def _controlnet_source(controlnet, preset, model_src: ModelSource, index: dict, family: str) -> ModelSource:
        if controlnet is not None:
            return parse_model_source(controlnet, "controlnet")
        if preset is not None:
            return parse_model_source(preset.controlnet, "controlnet")
        # A pipeline saved with its ControlNet carries it in controlnet/: use the one it was saved with.
        if model_src.is_folder:
            if (Path(model_src.location) / "controlnet" / "config.json").is_file():
                return ModelSource(str(Path(model_src.location) / "controlnet"), None, True)
        else:
            entry = index.get("controlnet")
            if isinstance(entry, (list, tuple)) and entry and entry[0] is not None:
                sub = "controlnet" if not model_src.subfolder else f"{model_src.subfolder}/controlnet"
                return ModelSource(model_src.location, sub, False)
        return parse_model_source(DEPTH_CONTROLNETS[family], "controlnet")

    def _setup(self, pipe, *, model_label, controlnet_label, preset, family, batch, offload, vae_tiling,
               max_prompt_chunks, device):
        import torch

        self.pipe = pipe
        self.family = family
        self.batch = batch
        self.vae_tiling = vae_tiling
        self.max_prompt_chunks = max_prompt_chunks
        self._lock = threading.Lock()
        self._device = torch.device(device)
        self._memory_savers = False
        self._empty: Optional[_Encoded] = None
        self._commas: dict[int, set] = {}
        self._pipeline_seconds = 0.0
        self._repaint_pipes: dict[str, Any] = {}
        self.progress_interval = PROGRESS_INTERVAL
        pipe.set_progress_bar_config(disable=True)
        _skip_idle_controlnet(pipe.controlnet)  # before any offload hooks, which keep and restore the wrapped forward
        if offload is None:
            placement = "as given"
        else:
            placement = self._place(offload)
        memory_format = self._cpu_layout() if self._device.type == "cpu" else None
        # Where the text encoders run (the accelerator, also under CPU offload, which the memory savers may turn
        # on later); diffusers works it out by walking every module of every component: look it up once.
        self._exec_device = pipe._execution_device
        # The dtype the pipeline casts prompt embeddings to (diffusers' .dtype walks every module: read it once).
        self._embed_dtype = pipe.text_encoder_2.dtype if family == "sdxl" else pipe.unet.dtype
        # One scaler per ControlNet, however many backends wrap the same pipeline (from_pipeline).
        scaler = getattr(pipe.controlnet, "_layer_strength_scaler", None)
        if scaler is None:
            scaler = _ResidualScaler()
            pipe.controlnet.register_forward_hook(scaler)
            pipe.controlnet._layer_strength_scaler = scaler
        self._scaler = scaler
        unet_config = pipe.unet.config
        self.few_step = unet_config.get("time_cond_proj_dim") is not None
        tok = self._tokenizers()[0]
        self.model_info: dict[str, Any] = {
            "backend": self.name,
            "preset": preset,
            "model": model_label,
            "controlnet": controlnet_label,
            "family": family,
            "pipeline": type(pipe).__name__,
            "scheduler": type(pipe.scheduler).__name__,
            "dtype": str(pipe.unet.dtype).replace("torch.", ""),
            "device": str(self._device),
            "placement": placement,
            "memory_format": memory_format or "contiguous",
            "decoder": "tiny" if _is_tiny(pipe.vae) else "full",
            "decoder_model": TINY_DECODERS[family] if _is_tiny(pipe.vae) else model_label,
            "few_step": self.few_step,
            "text_encoder_max_tokens": int(tok.model_max_length),
            "max_prompt_chunks": max_prompt_chunks,
        }
        if preset is not None:
            self.defaults = PRESETS[preset].defaults()
        elif self.few_step:  # a few-step model of the preset's kind
            self.defaults = PRESETS["lcm-sd15"].defaults()
        else:
            self.defaults = {"steps": 25, "guidance": 5.0 if family == "sdxl" else 6.0}

    def _cpu_layout(self) -> str:
        """On a CPU, the convolutional models in channels-last layout (oneDNN's own): measured by
        bench/bench_cpu_speedups.py, CHANNELS_LAST_MODELS. Returns the layout for model_info."""
        import torch

        names = CHANNELS_LAST_MODELS + (("vae",) if _is_tiny(self.pipe.vae) else ())
        for name in names:
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
        return "channels_last"

    def _place(self, offload: str) -> str:
        """Put the pipeline on its device: whole, or with model CPU offload where memory is short."""
        import torch

        dev = self._device
        if dev.type == "cpu":
            if offload in ("model", "sequential"):
                raise ValueError(f"offload={offload!r} needs an accelerator; this backend runs on CPU")
            self.pipe.to(dev)
            return "cpu"
        if offload == "auto":
            offload = "none"
            if dev.type == "cuda":
                free, _ = torch.cuda.mem_get_info(dev)
                params = sum(p.numel() * p.element_size() for m in self.pipe.components.values()
                             if isinstance(m, torch.nn.Module) for p in m.parameters())
                # weights plus room for activations at SD/SDXL sizes
                need = params + (6 if self.family == "sdxl" else 3) * 2**30
                if free < need:
                    offload = "model"
                    logger.info("%.1f GiB free on %s, %.1f GiB needed: model CPU offload", free / 2**30, dev,
                                need / 2**30)
        if offload == "model":
            self.pipe.enable_model_cpu_offload(device=dev)
            return "model_cpu_offload"
        if offload == "sequential":
            self.pipe.enable_sequential_cpu_offload(device=dev)
            return "sequential_cpu_offload"
        self.pipe.to(dev)
        return str(dev)

    # ------------------------------------------------------------------ text

    def _tokenizers(self):
        pipe = self.pipe
        if self.family == "sdxl":
            pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
            return [t for t, e in pairs if t is not None and e is not None]
        return [pipe.tokenizer]

    def _encoders(self):
        pipe = self.pipe
        if self.family == "sdxl":
            pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
            return [(t, e) for t, e in pairs if t is not None and e is not None]
        return [(pipe.tokenizer, pipe.text_encoder)]

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` under the model's own CLIP tokenizer, BOS/EOS included, nothing truncated.

        Args:
            text: any text.

        Returns:
            len(tokenizer(text).input_ids).
        """
        return len(self._tokenizers()[0](text, verbose=False).input_ids)

    @property
    def token_budget(self) -> int:
        """Longest layer prompt (tokens, BOS/EOS included) conditioned in full, isolation words included."""
        tok = self._tokenizers()[0]
        body = tok.model_max_length - 2
        suffix = len(tok(", " + ISOLATION_PROMPT, add_special_tokens=False, verbose=False).input_ids)
        return body * self.max_prompt_chunks + 2 - suffix

    def _chunk_ids(self, tokenizer, text: str, limit: Optional[int] = None) -> tuple[list[list[int]], list[list[int]],
                                                                                   dict]:
        """Token ids of `text` in encoder-sized chunks (BOS + up to 75 tokens + EOS + padding), their attention
        masks, and a report of what was encoded."""
        size = tokenizer.model_max_length
        body = size - 2
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        commas = self._commas.get(id(tokenizer))
        if commas is None:  # get_vocab() copies CLIP's 49k-entry vocabulary: once per tokenizer
            vocab = tokenizer.get_vocab()
            commas = self._commas[id(tokenizer)] = {vocab[t] for t in (",", ",</w>") if t in vocab}
        pieces: list[list[int]] = []
        rest = list(ids)
        while rest:
            if len(rest) <= body:
                cut = len(rest)
            else:
                # Break after the last comma near the end of the window so clauses stay whole.
                cut = body
                for i in range(body - 1, body - 21, -1):
                    if rest[i] in commas:
                        cut = i + 1
                        break
            pieces.append(rest[:cut])
            rest = rest[cut:]
        if not pieces:
            pieces = [[]]
        limit = limit or self.max_prompt_chunks
        truncated = sum(len(p) for p in pieces[limit:])
        pieces = pieces[:limit]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        chunks = [[tokenizer.bos_token_id] + p + [tokenizer.eos_token_id] + [pad] * (body - len(p)) for p in pieces]
        masks = [[1] * (len(p) + 2) + [0] * (body - len(p)) for p in pieces]
        report = {
            "tokens": len(ids) + 2,
            "chunks": len(chunks),
            "chunk_texts": [tokenizer.decode(p) for p in pieces],
            "truncated_tokens": truncated,
        }
        return chunks, masks, report

    def _encode(self, text: str, *, negative: bool = False, limit: Optional[int] = None) -> tuple[_Encoded, dict]:
        """Encode a prompt chunk by chunk (at most `limit` chunks; default max_prompt_chunks), the way the pipeline
        encodes one chunk."""
        import torch

        pipe = self.pipe
        device = self._exec_device
        if self.family == "sdxl" and negative and not text.strip() and pipe.config.get("force_zeros_for_empty_prompt"):
            chunks_ids, _, report = self._chunk_ids(self._tokenizers()[0], "")
            d = sum(e.config.hidden_size for _, e in self._encoders())
            p = pipe.text_encoder_2.config.projection_dim
            dtype = self._embed_dtype
            enc = _Encoded(torch.zeros(1, len(chunks_ids[0]), d, dtype=dtype, device=device),
                           torch.zeros(1, p, dtype=dtype, device=device), zeros=True)
            report["zeros"] = True
            return enc, report
        per_encoder = []
        report = None
        for tokenizer, _ in self._encoders():
            chunks_ids, masks, rep = self._chunk_ids(tokenizer, text, limit)
            report = report or rep
            per_encoder.append((chunks_ids, masks))
        k = max(len(c) for c, _ in per_encoder)
        with torch.no_grad():
            if self.family == "sd15":
                _, encoder = self._encoders()[0]
                chunks_ids, masks = per_encoder[0]
                ids = torch.tensor(chunks_ids, dtype=torch.long, device=device)
                mask = None
                if getattr(encoder.config, "use_attention_mask", False):  # as the pipeline does for such encoders
                    mask = torch.tensor(masks, dtype=torch.long, device=device)
                emb = encoder(ids, attention_mask=mask)[0].to(dtype=self._embed_dtype)
                return _Encoded(emb, None), report
            hidden, pooled = [], None
            for (tokenizer, encoder), (chunks_ids, _) in zip(self._encoders(), per_encoder):
                # The two tokenizers share CLIP's vocabulary, so this padding is for odd models only.
                empty = self._chunk_ids(tokenizer, "")[0][0]
                chunks_ids = chunks_ids + [empty] * (k - len(chunks_ids))
                ids = torch.tensor(chunks_ids, dtype=torch.long, device=device)
                out = encoder(ids, output_hidden_states=True)
                if out[0].ndim == 2:  # the projection encoder's text_embeds: SDXL's pooled embedding
                    pooled = out[0][:1]
                hidden.append(out.hidden_states[-2])
            dtype = self._embed_dtype
            emb = torch.cat(hidden, dim=-1).to(dtype=dtype)
            return _Encoded(emb, pooled.to(dtype=dtype)), report

    def _empty_encoding(self) -> _Encoded:
        if self._empty is None:
            self._empty = self._encode("")[0]
        return self._empty

    def _batch_conditioning(self, encoded: Sequence[tuple[_Encoded, _Encoded]], cfg: bool) -> tuple[dict, int]:
        """Pad every prompt of one call to the same number of chunks and stack them into pipeline kwargs."""
        import torch

        k = max(max(p.chunks.shape[0], n.chunks.shape[0]) if cfg else p.chunks.shape[0] for p, n in encoded)
        empty = self._empty_encoding()

        def flat(enc: _Encoded):
            chunks = enc.chunks
            if chunks.shape[0] < k:
                filler = torch.zeros_like(chunks[:1]) if enc.zeros else empty.chunks[:1].to(chunks)
                chunks = torch.cat([chunks] + [filler] * (k - chunks.shape[0]))
            return chunks.reshape(1, -1, chunks.shape[-1])

        kwargs = {"prompt_embeds": torch.cat([flat(p) for p, _ in encoded])}
        if cfg:
            kwargs["negative_prompt_embeds"] = torch.cat([flat(n) for _, n in encoded])
        if self.family == "sdxl":
            kwargs["pooled_prompt_embeds"] = torch.cat([p.pooled for p, _ in encoded])
            if cfg:
                kwargs["negative_pooled_prompt_embeds"] = torch.cat([n.pooled for _, n in encoded])
        return kwargs, k

    # ---------------------------------------------------------------- render

    def uses_guidance(self, guidance: float) -> bool:
        """Whether the pipeline runs classifier-free guidance (and so reads negative prompts) at `guidance`."""
        return guidance > 1.0 and not self.few_step

    @staticmethod
    def _check_inputs(requests, settings: RenderSettings):
        DiffusersBackend._check_requests(requests, RenderRequest, "layer ")
        DiffusersBackend._check_settings(settings)

    @staticmethod
    def _check_requests(requests, kind: type, label: str) -> None:
        """What render and repaint requests share: a non-empty list of `kind`, each with a valid control map, seed,
        ControlNet strength and prompts, names unique. `label` goes before a request's name in a message."""
        if not isinstance(requests, (list, tuple)) or not requests:
            raise ValueError(f"requests must be a non-empty list of {kind.__name__}, got {requests!r}")
        names = []
        for r in requests:
            if not isinstance(r, kind):
                raise ValueError(f"requests must hold {kind.__name__} objects, got {type(r).__name__}")
            names.append(r.name)
            check_unit_map(r.control, f"{label}{r.name!r}: control")
            if not isinstance(r.seed, (int, np.integer)) or not 0 <= int(r.seed) < 2**63:
                raise ValueError(f"{label}{r.name!r}: seed must be an integer in [0, 2**63), got {r.seed!r}")
            if not 0.0 <= float(r.strength) <= 2.0:
                raise ValueError(f"{label}{r.name!r}: strength must be in [0, 2], got {r.strength!r}")
            if not isinstance(r.prompt, str) or not isinstance(r.negative_prompt, str):
                raise ValueError(f"{label}{r.name!r}: prompt and negative_prompt must be strings")
        if len(set(names)) != len(names):
            raise ValueError(f"{label or 'request '}names must be unique, got {names}")

    @staticmethod
    def _check_settings(settings: RenderSettings):
        w, h = settings.width, settings.height
        if not (isinstance(w, int) and isinstance(h, int) and w >= 64 and h >= 64 and w % 8 == 0 and h % 8 == 0):
            raise ValueError(f"width and height must be multiples of 8, at least 64, got {w}x{h}")
        if not isinstance(settings.steps, int) or not 1 <= settings.steps <= 500:
            raise ValueError(f"steps must be an integer in 1..500, got {settings.steps!r}")
        if not 0.0 <= float(settings.guidance) <= 50.0:
            raise ValueError(f"guidance must be in [0, 50], got {settings.guidance!r}")
        if not 0.0 < float(settings.control_end) <= 1.0:
            raise ValueError(f"control_end must be in (0, 1], got {settings.control_end!r}")

    def render(self, requests: Sequence[RenderRequest], settings: RenderSettings,
               progress: Optional[ProgressCallback] = None) -> RenderResult:
        """Render each request (one layer each) under its depth map.

        Args:
            requests: the layers, each with its prompt, negative prompt, control map, seed and strength.
            settings: size, steps and guidance shared by the layers.
            progress: called as progress(label, step, total) after every denoising step; label is the layer
                name, or the names joined with "+" when the layers share one batched call.

        Returns:
            RenderResult with one RGB image per request (request order, settings size) and the manifest facts
            in info: model_info, "batching" ("batched" | "one_by_one"), "fallbacks", and per layer what its
            text encoder saw ("layers").

        Raises:
            ValueError: bad requests or settings.
            RenderMemoryError: out of memory even one layer at a time at the smallest fallback size.
        """
        self._check_inputs(requests, settings)
        with self._lock:
            return self._render(list(requests), settings, progress)

    def _render(self, requests: list[RenderRequest], settings: RenderSettings,
                progress: Optional[ProgressCallback]) -> RenderResult:
        start = time.perf_counter()
        cfg = self.uses_guidance(float(settings.guidance))
        encoded, layers_info = self._encode_requests(requests, [_isolated(r) for r in requests], cfg)
        encoding = time.perf_counter() - start
        self._pipeline_seconds = 0.0

        full = (settings.width, settings.height)
        fallbacks: list[str] = []
        images, batching = self._batched_or_one_by_one(requests, encoded, _guided(settings, settings.steps), cfg,
                                                       progress, layers_info, fallbacks)

        info = dict(self.model_info)
        info.update(
            batching=batching, fallbacks=fallbacks, steps=settings.steps, guidance=float(settings.guidance),
            classifier_free_guidance=cfg, size=list(full), layers=layers_info,
            timings={"encode": round(encoding, 4), "pipeline": round(self._pipeline_seconds, 4),
                     "total": round(time.perf_counter() - start, 4)},
        )
        return RenderResult(images=images, info=info)

    def _encode_requests(self, requests, texts, cfg: bool) -> tuple[list, dict]:
        """Encode each request's (prompt, negative) chunk by chunk; returns the encodings and, per layer, what
        its text encoder saw (for the manifest)."""
        encoded, layers_info = [], {}
        for r, (prompt, negative) in zip(requests, texts):
            # A whole scene's prompt (a plate, a harmonising pass) is the user's own text: all of it is conditioned.
            limit = WHOLE_PROMPT_CHUNKS if r.name in WHOLE_PROMPT_NAMES else None
            pos, pos_report = self._encode(prompt, limit=limit)
            neg, neg_report = self._encode(negative, negative=True) if cfg else (None, None)
            encoded.append((pos, neg))
            info = {
                "seed": int(r.seed), "strength": float(r.strength),
                "prompt": prompt, "negative_prompt": negative if cfg else None,
                "tokens": pos_report["tokens"], "chunks": pos_report["chunks"],
                "chunk_texts": pos_report["chunk_texts"], "truncated_tokens": pos_report["truncated_tokens"],
            }
            if neg_report is not None:
                info.update(negative_tokens=neg_report["tokens"], negative_chunks=neg_report["chunks"],
                            negative_truncated_tokens=neg_report["truncated_tokens"])
            for what, rep in (("prompt", pos_report), ("negative prompt", neg_report)):
                if rep is not None and rep["truncated_tokens"]:
                    logger.warning("layer %s: %d tokens of its %s beyond %d chunks were not conditioned",
                                   r.name, rep["truncated_tokens"], what, limit or self.max_prompt_chunks)
            layers_info[r.name] = info
        return encoded, layers_info

    # --------------------------------------------------------------- repaint

    def repaint(self, requests: Sequence[RepaintRequest], settings: RenderSettings,
                progress: Optional[ProgressCallback] = None) -> RenderResult:
        """Repaint existing pixels under each request's depth map: inpaint where its mask is 1, img2img without one.

        Runs diffusers' ControlNet img2img / inpaint pipelines (SD1.x/2.x or XL), made with `from_pipe` from the
        loaded ControlNet pipeline, so the UNet, VAE, text encoders and ControlNet are the same objects: nothing
        is loaded or copied twice. Requests of one kind (masked: inpaint; unmasked: img2img) and one `denoise` go
        through one batched call (the pipelines take one strength per call), with render's fallbacks when memory runs out; each keeps its own seed and
        ControlNet strength. Prompts are encoded chunk by chunk as in `render`, and used as given: the start
        pixels already set each picture's backdrop, so no isolation framing is added.

        Args:
            requests: the pictures, each with its start image (settings size), optional mask (1 = repaint),
                depth control, seed, denoise and ControlNet strength.
            settings: size, steps and guidance. A request runs int(steps * denoise) denoising steps.
            progress: called as progress(label, step, total) after every denoising step; label is the request
                name, or the names joined with "+" for a batched call.

        Returns:
            RenderResult with one RGB image per request (request order). Where a mask is 0 the pixels are the
            input's exactly; where it is soft the output is blended by it. info has model_info, "calls" (each
            pipeline call: layers, pipeline, denoise, batching), "fallbacks", "layers" and timings.

        Raises:
            ValueError: bad requests or settings.
            RenderMemoryError: out of memory even one picture at a time at the smallest fallback size.
        """
        self._check_repaint_inputs(requests, settings)
        with self._lock:
            return self._repaint(list(requests), settings, progress)

    def _check_repaint_inputs(self, requests, settings: RenderSettings):
        self._check_requests(requests, RepaintRequest, "")
        self._check_settings(settings)
        size = (settings.width, settings.height)
        for r in requests:
            if not isinstance(r.image, Image.Image) or r.image.mode != "RGB" or r.image.size != size:
                got = f"{r.image.mode} {r.image.size[0]}x{r.image.size[1]}" if isinstance(r.image, Image.Image) \
                    else type(r.image).__name__
                raise ValueError(f"{r.name!r}: image must be an RGB picture of {size[0]}x{size[1]}, got {got}")
            if r.mask is not None:
                check_unit_map(r.mask, f"{r.name!r}: mask", shape=(settings.height, settings.width))
            if not 0.0 < float(r.denoise) <= 1.0:
                raise ValueError(f"{r.name!r}: denoise must be in (0, 1], got {r.denoise!r}")
            if int(settings.steps * float(r.denoise)) < 1:
                raise ValueError(f"{r.name!r}: denoise {r.denoise} of {settings.steps} steps runs no step; "
                                 f"raise denoise to at least {1 / settings.steps:.3g} or use more steps")

    def repaint_pipeline(self, kind: str):
        """The ControlNet "img2img" or "inpaint" pipeline of this model family, sharing every component with the
        loaded pipeline (made once with from_pipe, then reused)."""
        pipe = self._repaint_pipes.get(kind)
        if pipe is None:
            from diffusers import (StableDiffusionControlNetImg2ImgPipeline, StableDiffusionControlNetInpaintPipeline,
                                   StableDiffusionXLControlNetImg2ImgPipeline,
                                   StableDiffusionXLControlNetInpaintPipeline)

            classes = {("sd15", "img2img"): StableDiffusionControlNetImg2ImgPipeline,
                       ("sd15", "inpaint"): StableDiffusionControlNetInpaintPipeline,
                       ("sdxl", "img2img"): StableDiffusionXLControlNetImg2ImgPipeline,
                       ("sdxl", "inpaint"): StableDiffusionXLControlNetInpaintPipeline}
            if (self.family, kind) not in classes:
                raise ValueError(f"repaint pipeline must be 'img2img' or 'inpaint', got {kind!r}")
            # from_pipe casts the new pipeline to `dtype` (float32 when none is given), and its modules are the
            # loaded pipeline's own: without the loaded dtype a float16 model would be cast to float32 in place.
            # from_pipe's .to(dtype) of modules already in that dtype changes nothing but warns once per module.
            # The decoder is handed over explicitly: from_pipe leaves out (then fails on) a component whose type
            # differs from the pipeline's type hint, as the tiny decoder's does.
            with _muted("diffusers.models.modeling_utils", "diffusers.pipelines.pipeline_utils"):
                pipe = classes[(self.family, kind)].from_pipe(self.pipe, dtype=self.pipe.unet.dtype, vae=self.pipe.vae)
            pipe.set_progress_bar_config(disable=True)
            self._repaint_pipes[kind] = pipe
        return pipe

    def _repaint(self, requests: list[RepaintRequest], settings: RenderSettings,
                 progress: Optional[ProgressCallback]) -> RenderResult:
        start = time.perf_counter()
        cfg = self.uses_guidance(float(settings.guidance))
        encoded, layers_info = self._encode_requests(requests, [(r.prompt, r.negative_prompt) for r in requests],
                                                     cfg)
        encoding = time.perf_counter() - start
        self._pipeline_seconds = 0.0
        fallbacks: list[str] = []
        # A request always goes through the same pipeline, whatever else is in the call, so that repainting one
        # picture alone gives what it got in the batch.
        groups: dict[tuple[str, float], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(("img2img" if r.mask is None else "inpaint", float(r.denoise)), []).append(i)
        images: list[Optional[Image.Image]] = [None] * len(requests)
        calls = []
        for (kind, denoise), members in groups.items():
            group = [requests[i] for i in members]
            pipe = self.repaint_pipeline(kind)
            runs = min(int(settings.steps * denoise), settings.steps)  # diffusers' get_timesteps
            out, batching = self._batched_or_one_by_one(
                group, [encoded[i] for i in members], _guided(settings, runs), cfg, progress, layers_info, fallbacks,
                pipe=pipe, inputs=functools.partial(_repaint_inputs, kind=kind, denoise=denoise))
            for i, image in zip(members, out):
                images[i] = _keep_unmasked(image, requests[i])
            calls.append({"layers": [r.name for r in group], "pipeline": type(pipe).__name__, "denoise": denoise,
                          "batching": batching})
            for r in group:
                layers_info[r.name].update(denoise=denoise, masked=r.mask is not None,
                                           repainted_fraction=1.0 if r.mask is None else round(float(
                                               np.asarray(r.mask, dtype=np.float32).mean()), 6))
        multi = [c for c in calls if len(c["layers"]) > 1]
        info = dict(self.model_info)
        info.update(
            calls=calls, fallbacks=fallbacks, steps=settings.steps, guidance=float(settings.guidance),
            classifier_free_guidance=cfg, size=[settings.width, settings.height], layers=layers_info,
            batching="batched" if multi and all(c["batching"] == "batched" for c in multi) else "one_by_one",
            timings={"encode": round(encoding, 4), "pipeline": round(self._pipeline_seconds, 4),
                     "total": round(time.perf_counter() - start, 4)},
        )
        return RenderResult(images=images, info=info)

    def _batched_or_one_by_one(self, requests, encoded, settings, cfg, progress, layers_info, fallbacks, *,
                               pipe=None, inputs=None) -> tuple[list[Image.Image], str]:
        """All requests in one pipeline call where memory allows, else one by one (then smaller).

        Returns (RGB images at the settings size in request order, "batched" | "one_by_one")."""
        full = (settings.width, settings.height)
        images: Optional[list[Image.Image]] = None
        batching = "one_by_one"
        if self.batch != "one_by_one" and len(requests) > 1:
            try:
                images, k = self._call(requests, encoded, settings, full, cfg, progress, pipe=pipe, inputs=inputs)
                batching = "batched"
                for r in requests:
                    layers_info[r.name].update(padded_to_chunks=k, render_size=list(full))
            except (RuntimeError, MemoryError) as exc:
                if not (isinstance(exc, MemoryError) or _is_out_of_memory(exc)):
                    raise
                self._free_memory()
                message = (f"out of memory rendering {len(requests)} layers in one batch at {full[0]}x{full[1]}; "
                           f"rendering them one by one")
                if self.batch == "batched":
                    raise RenderMemoryError(f"{message} is disabled (batch='batched'); use batch='auto'") from None
                logger.warning(message)
                fallbacks.append(message)
        if images is None:
            images = self._one_by_one(requests, encoded, settings, cfg, progress, layers_info, fallbacks, pipe=pipe,
                                      inputs=inputs)
        return images, batching

    def _one_by_one(self, requests, encoded, settings, cfg, progress, layers_info, fallbacks, *, pipe=None,
                    inputs=None) -> list[Image.Image]:
        full = (settings.width, settings.height)
        ladder = [(full, False), (full, True)] + [
            ((max(64, int(full[0] * s) // 64 * 64), max(64, int(full[1] * s) // 64 * 64)), True)
            for s in FALLBACK_SCALES
        ]
        if self._device.type == "cpu":  # VAE tiling/slicing are for accelerators; on CPU only smaller helps
            ladder = [(sz, False) for sz, savers in ladder if sz != full or not savers]
        ladder = list(dict.fromkeys(ladder))  # small sizes can round to the same one
        level = 0
        images = []
        for request, enc in zip(requests, encoded):
            while True:
                size, savers = ladder[level]
                if savers and not self._memory_savers:
                    self._enable_memory_savers()
                try:
                    (image,), k = self._call([request], [enc], settings, size, cfg, progress, pipe=pipe,
                                             inputs=inputs)
                    break
                except (RuntimeError, MemoryError) as exc:
                    if not (isinstance(exc, MemoryError) or _is_out_of_memory(exc)):
                        raise
                    self._free_memory()
                    level += 1
                    if level >= len(ladder):
                        raise RenderMemoryError(
                            f"out of memory rendering layer {request.name!r} even at {size[0]}x{size[1]} one "
                            f"layer at a time on {self._device}; use a smaller size or the lcm-sd15 preset"
                        ) from None
                    nxt, nxt_savers = ladder[level]
                    savers = " with VAE slicing/tiling and model CPU offload" if nxt_savers else ""
                    message = (f"out of memory rendering layer {request.name!r} at {size[0]}x{size[1]}; retrying at "
                               f"{nxt[0]}x{nxt[1]}{savers}")
                    logger.warning(message)
                    fallbacks.append(message)
            if image.size != full:
                image = image.resize(full, Image.LANCZOS)
            layers_info[request.name].update(padded_to_chunks=k, render_size=list(size))
            images.append(image)
        return images

    def _call(self, requests, encoded, settings: RenderSettings, size, cfg: bool, progress, *, pipe=None,
              inputs=None):
        """One pipeline call for `requests` at `size`. Returns (RGB images, chunks per prompt).

        pipe: the pipeline to call (default: the loaded ControlNet pipeline); inputs(requests, width, height,
        controls) -> the image keyword arguments of that pipeline (default: the control images as `image`)."""
        import torch

        width, height = size
        self._apply_tiling(width * height)
        controls = [_control_image(np.asarray(r.control, dtype=np.float32), width, height) for r in requests]
        if inputs is None:
            images = {"image": controls if len(controls) > 1 else controls[0]}
        else:
            images = inputs(requests, width, height, controls)
        kwargs, k = self._batch_conditioning(encoded, cfg)
        generators = [torch.Generator("cpu").manual_seed(int(r.seed)) for r in requests]
        label = "+".join(r.name for r in requests)

        pipe = pipe or self.pipe
        ticks = (_StepTicks(pipe, label, progress, self.progress_interval, len(requests), size)
                 if progress is not None else contextlib.nullcontext())

        def on_step_end(pipe, step, timestep, callback_kwargs):
            if progress is not None:
                ticks.step_done(step + 1, pipe.num_timesteps)
            return callback_kwargs

        strengths = [float(r.strength) for r in requests]
        scale = 1.0
        if len(set(strengths)) == 1:
            scale = strengths[0]  # one strength for all: the pipeline's own scale does it, no hook needed
        else:
            self._scaler.strengths = torch.tensor(strengths, dtype=torch.float32)
        guidance = float(settings.guidance)
        embedded = self.few_step and pipe is not self.pipe
        called = time.perf_counter()
        try:
            with ticks, (_guidance_embedding(self.pipe, pipe.unet, guidance) if embedded else contextlib.nullcontext()):
                out = pipe(
                    **images, height=height, width=width,
                    # a repaint pipeline would run classifier-free guidance on a few-step model: 1 turns it off,
                    # and the model's guidance embedding carries `guidance` instead (see _guidance_embedding)
                    num_inference_steps=settings.steps, guidance_scale=1.0 if embedded else guidance,
                    controlnet_conditioning_scale=scale, control_guidance_end=float(settings.control_end),
                    generator=generators, output_type="pil",
                    callback_on_step_end=on_step_end, **kwargs,
                )
                if progress is not None:
                    ticks.finish(pipe.num_timesteps)
        finally:
            self._scaler.strengths = None
            self._pipeline_seconds += time.perf_counter() - called
        return [img.convert("RGB") for img in out.images], k

    def _apply_tiling(self, pixels: int):
        vae = self.pipe.vae
        if self.vae_tiling == "auto":
            on = self._memory_savers or (self._device.type != "cpu" and pixels > TILING_PIXELS)
        else:
            on = bool(self.vae_tiling)
        if on and not getattr(vae, "use_tiling", False):
            vae.enable_tiling()
        elif not on and getattr(vae, "use_tiling", False):
            vae.disable_tiling()

    def _enable_memory_savers(self):
        """After an out-of-memory: decode in slices and tiles, and keep only the running model on the GPU.

        They stay on for this backend's later renders: the device has shown it is short of memory."""
        self._memory_savers = True
        self.pipe.vae.enable_slicing()
        if self._device.type == "cuda" and self.model_info.get("placement") == str(self._device):
            self.pipe.enable_model_cpu_offload(device=self._device)
            self.model_info["placement"] = "model_cpu_offload"
            logger.warning("out of GPU memory: model CPU offload is on from now on")

    def _free_memory(self):
        import torch

        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        elif self._device.type == "mps":
            torch.mps.empty_cache()


def _repaint_inputs(requests, width: int, height: int, controls, *, kind: str, denoise: float) -> dict:
    """The image keyword arguments of one img2img / inpaint call at width x height."""
    starts = [r.image if r.image.size == (width, height) else r.image.resize((width, height), Image.LANCZOS)
              for r in requests]
    kwargs = {"image": starts, "control_image": controls, "strength": denoise}
    if kind == "inpaint":
        kwargs["mask_image"] = [_unit_image(np.asarray(r.mask, dtype=np.float32), width, height) for r in requests]
    return kwargs


def _unit_image(values: np.ndarray, width: int, height: int) -> Image.Image:
    img = Image.fromarray(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8), "L")
    return img if img.size == (width, height) else img.resize((width, height), Image.BILINEAR)


def _keep_unmasked(image: Image.Image, request: RepaintRequest) -> Image.Image:
    """The repainted picture where the mask is 1, the input's own pixels where it is 0, blended between.

    The VAE round trip shifts every pixel a little, and the inpaint pipelines binarise the mask; the promise to the
    caller is that what it asked to keep is kept exactly."""
    if request.mask is None:
        return image
    m = np.asarray(request.mask, dtype=np.float32)[..., None]
    start = np.asarray(request.image, dtype=np.float32)
    out = np.asarray(image, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(start + (out - start) * m), 0, 255).astype(np.uint8), "RGB")


def _import_diffusers():
    """diffusers' classes used here, imported without transformers' torchvision-fallback notices.

    Without torchvision (CPU installs), transformers announces that CLIPImageProcessor & co. fall back to their
    PIL versions as diffusers' pipeline modules import them; the PIL versions are exactly what is wanted here,
    so those import-time notices are muted.
    """
    with _muted("transformers.utils.import_utils"):
        from diffusers import (ControlNetModel, DiffusionPipeline, StableDiffusionControlNetPipeline,
                               StableDiffusionXLControlNetPipeline, UNet2DConditionModel)
    return (ControlNetModel, DiffusionPipeline, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline,
            UNet2DConditionModel)


@contextlib.contextmanager
def _muted(*names: str):
    """Loggers `names` show errors only, for the duration."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


@contextlib.contextmanager
def _guidance_embedding(pipe, unet, guidance: float):
    """For the duration, `unet` (a few-step model's) gets the guidance embedding of `guidance` on every call.

    diffusers' ControlNet text-to-image pipelines give a few-step (LCM-distilled) UNet its guidance as an embedding
    (`timestep_cond`) and skip classifier-free guidance for it; their img2img and inpaint pipelines do neither: at
    guidance > 1 they run classifier-free guidance on a model distilled without it (twice the work, wrong pictures,
    and a crash for prompts past 77 tokens, whose negative they encode in one piece), and the embedding is never
    passed. Called with guidance 1, those pipelines leave guidance to this hook, which computes the embedding as
    the text-to-image pipeline does (`pipe.get_guidance_scale_embedding(guidance - 1)`)."""
    import torch

    dim = unet.config.time_cond_proj_dim

    def add_embedding(module, args, kwargs):
        if kwargs.get("timestep_cond") is None:
            sample = args[0] if args else kwargs["sample"]
            w = torch.full((sample.shape[0],), guidance - 1.0)
            kwargs["timestep_cond"] = pipe.get_guidance_scale_embedding(w, embedding_dim=dim).to(
                device=sample.device, dtype=sample.dtype)
        return args, kwargs

    handle = unet.register_forward_pre_hook(add_embedding, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _is_tiny(vae) -> bool:
    return type(vae).__name__ == "AutoencoderTiny"


def load_tiny_decoder(family: str, dtype, local_only: bool):
    """The family's tiny decoder (TINY_DECODERS, an AutoencoderTiny), cache first like every other model."""
    from diffusers import AutoencoderTiny

    src = parse_model_source(TINY_DECODERS[family], "tiny decoder")
    with _muted("diffusers.configuration_utils"):  # TAESD's config.json also records its decoder's channels
        return load_pretrained(AutoencoderTiny.from_pretrained, src, "tiny decoder", local_only, dtype=dtype)


def _detect_family(index: dict, unet_config: dict) -> str:
    """SD1.x/2.x ("sd15") or SDXL ("sdxl"), read from the model's own files, never from its name."""
    te2 = index.get("text_encoder_2")
    if isinstance(te2, (list, tuple)) and te2 and te2[0] is not None:
        return "sdxl"
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd15"


def _check_controlnet_fits(cn_config: dict, unet_config: dict, cn_src: ModelSource, model_src: ModelSource,
                           family: str):
    cn_dim, unet_dim = cn_config.get("cross_attention_dim"), unet_config.get("cross_attention_dim")
    cn_xl = cn_config.get("addition_embed_type") == "text_time"
    if cn_dim != unet_dim or cn_xl != (family == "sdxl"):
        raise ValueError(
            f"controlnet {cn_src.label!r} (cross_attention_dim {cn_dim}) does not fit model {model_src.label!r} "
            f"({family}, cross_attention_dim {unet_dim}); use a depth ControlNet for {family} such as "
            f"{DEPTH_CONTROLNETS[family]}")


def _swap_scheduler(pipe, name: str):
    from diffusers import DPMSolverMultistepScheduler, LCMScheduler

    if name == "dpmpp_2m":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                                 solver_order=2, use_karras_sigmas=True)
    elif name == "lcm":
        if not isinstance(pipe.scheduler, LCMScheduler):
            pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    else:
        raise ValueError(f"unknown scheduler {name!r}")


__all__ = ["DECODERS", "DEPTH_CONTROLNETS", "DiffusersBackend", "ISOLATION_NEGATIVE", "ISOLATION_PROMPT", "PRESETS",
           "Preset", "RenderMemoryError", "TINY_DECODERS", "load_tiny_decoder"]
