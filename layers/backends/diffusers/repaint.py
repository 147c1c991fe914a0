"""Repainting pixels that exist: inpaint under a mask, img2img without one.

Through diffusers' ControlNet img2img / inpaint pipelines, made with `from_pipe` from the loaded pipeline (see
LoadingMixin.repaint_pipeline): the same modules, never a second copy of the weights; the same long-prompt encoding,
per-item strength and memory fallbacks as `render`.
"""
from __future__ import annotations

import functools
import time
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ...images import check_unit_map
from ..base import ProgressCallback, RenderResult, RenderSettings, RepaintRequest, scheduler_steps
from .hooks import _guided


class RepaintMixin:
    """DiffusersBackend's `repaint`: requests grouped by pipeline and denoise, each group one batched call."""

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
            settings: size, steps and guidance. A request runs int(steps * denoise) denoising steps, and at least
                one: where that rounds to none, its scheduler takes the fewest steps that give one at the same
                denoise (`scheduler_steps`), so a one-step model still repaints, from the noise level `denoise` asks.
            progress: called as progress(label, step, total) after every denoising step; label is the request
                name, or the names joined with "+" for a batched call.

        Returns:
            RenderResult with one RGB image per request (request order). Where a mask is 0 the pixels are the
            input's exactly; where it is soft the output is blended by it. info has model_info, "calls" (each
            pipeline call: layers, pipeline, denoise, the scheduler's steps, the steps run, batching), "fallbacks",
            "layers" (each with its steps_run) and timings.

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
            needed = scheduler_steps(settings.steps, float(r.denoise))
            if needed > self.max_steps:
                raise ValueError(f"{r.name!r}: denoise {r.denoise} runs a step only on a schedule of {needed} steps; "
                                 f"this model's scheduler takes at most {self.max_steps}: raise denoise to at least "
                                 f"{1 / self.max_steps:.3g}")

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
            steps = scheduler_steps(settings.steps, denoise)
            runs = min(int(steps * denoise), steps)  # diffusers' get_timesteps
            out, batching = self._batched_or_one_by_one(
                group, [encoded[i] for i in members], _guided(replace(settings, steps=steps), runs), cfg, progress,
                layers_info, fallbacks, pipe=pipe, inputs=functools.partial(_repaint_inputs, kind=kind, denoise=denoise))
            for i, image in zip(members, out):
                images[i] = _keep_unmasked(image, requests[i])
            calls.append({"layers": [r.name for r in group], "pipeline": type(pipe).__name__, "denoise": denoise,
                          "steps": steps, "steps_run": runs, "batching": batching})
            for r in group:
                layers_info[r.name].update(denoise=denoise, steps_run=runs, masked=r.mask is not None,
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
