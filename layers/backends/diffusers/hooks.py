"""Hooks around one pipeline call: per-item ControlNet strength, the idle ControlNet skipped, progress within the
steps and the decoding, and a few-step model's guidance embedding in the repaint pipelines.

Each is installed on the models a pipeline runs (forward hooks, a wrapped forward) rather than written into a copy
of diffusers' pipeline code, so the stock pipelines run unchanged.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import replace

from ..base import DENOISE_SHARE, ProgressCallback, RenderSettings
from .presets import _is_tiny

PROGRESS_INTERVAL = 0.5
"""Least seconds between two progress reports within a step (whole steps are always reported)."""


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
    tile = getattr(vae, "tile_latent_min_size", 0)
    overlap = int(tile * (1 - getattr(vae, "tile_overlap_factor", 0.25)))
    if tile <= 0 or overlap <= 0:
        return 1
    latent_w, latent_h = size[0] // scale, size[1] // scale
    if latent_h <= tile and latent_w <= tile:
        return 1
    return -(-latent_h // overlap) * -(-latent_w // overlap)


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
