"""Rendering layers: checks, one batched pipeline call, and the out-of-memory fallbacks.

The layers of a scene go through one pipeline call (a batch of prompts, control images and generators); when the
accelerator runs out of memory the same layers are rendered one by one, then with the memory savers, then smaller.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import time
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ...images import check_unit_map
from ..base import ProgressCallback, RenderRequest, RenderResult, RenderSettings
from .hooks import _StepTicks, _guidance_embedding, _guided
from .prompts import _isolated

logger = logging.getLogger(__package__)  # the whole backend logs under the package's name

FALLBACK_SCALES = (0.75, 0.5)
"""Side scales tried, one layer at a time, when even one full-size layer does not fit in memory."""
MAX_STEPS = 500
"""The most denoising steps a render or repaint runs."""
TILING_PIXELS = 1536 * 1536
"""Above this many pixels per image the VAE decodes in tiles on an accelerator (tiling="auto")."""


class RenderMemoryError(ValueError):
    """Out of accelerator memory even one layer at a time at the smallest fallback size."""


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



class RenderMixin:
    """DiffusersBackend's rendering: `render`, the request and settings checks repaint shares, and the pipeline call
    with its fallbacks (`_batched_or_one_by_one`), which repaint runs its own pipelines through."""

    def uses_guidance(self, guidance: float) -> bool:
        """Whether the pipeline runs classifier-free guidance (and so reads negative prompts) at `guidance`: above 1,
        as in diffusers, except for a UNet that embeds its guidance instead (LCM). A few-step LoRA's preset takes
        guidance 0: one UNet pass per step."""
        return guidance > 1.0 and not self.guidance_embedding

    def _check_inputs(self, requests, settings: RenderSettings):
        self._check_requests(requests, RenderRequest, "layer ")
        self._check_settings(settings)

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

    @property
    def max_steps(self) -> int:
        """The most denoising steps this model's scheduler runs: a few-step scheduler (LCM, TCD) picks its steps from
        the schedule it was distilled on (`original_inference_steps`, 50 for LCM); others up to 500."""
        original = self.pipe.scheduler.config.get("original_inference_steps")
        return int(min(MAX_STEPS, original)) if original else MAX_STEPS

    def _check_settings(self, settings: RenderSettings):
        w, h = settings.width, settings.height
        if not (isinstance(w, int) and isinstance(h, int) and w >= 64 and h >= 64 and w % 8 == 0 and h % 8 == 0):
            raise ValueError(f"width and height must be multiples of 8, at least 64, got {w}x{h}")
        if not isinstance(settings.steps, int) or not 1 <= settings.steps <= self.max_steps:
            raise ValueError(f"steps must be an integer in 1..{self.max_steps} for this model's scheduler, "
                             f"got {settings.steps!r}")
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
        embedded = self.guidance_embedding and pipe is not self.pipe
        # the preset's eta (TCD's gamma) where it has one; else the pipelines' own default
        extra = {"eta": self.eta} if self.eta is not None else {}
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
                    callback_on_step_end=on_step_end, **extra, **kwargs,
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
