"""Render layers with Stable Diffusion (1.x/2.x or XL) and a depth ControlNet through diffusers.

One pipeline is loaded in the constructor and reused for every layer and request. The three layers of a
scene go through one pipeline call (a batch of three prompts, three control images, three generators);
when the accelerator runs out of memory the same layers are rendered one by one, then smaller.

Three things the stock pipeline call does not do, and how this package does them:
- Per-layer ControlNet strength in one batch. `controlnet_conditioning_scale` is one float for a single
  ControlNet (a list only for several ControlNets), so when the layers' strengths differ the backend passes
  1.0 and a forward hook on the ControlNet multiplies each batch item's residuals by that item's strength
  (see `hooks._ResidualScaler`). That is the same product the ControlNet itself computes
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

Where each part lives:
- presets.py: the named model + ControlNet pairs (PRESETS) with their schedulers and few-step LoRAs, and the decoders
  (DECODERS, TINY_DECODERS);
- loading.py: building the pipeline (from_pretrained, a preset's LoRA fused in, the tiny decoder, dtype, device,
  offload) and the repaint pipelines (from_pipe);
- prompts.py: the isolation framing and long-prompt encoding;
- render.py: `render`, the batched pipeline call and its out-of-memory fallbacks;
- repaint.py: `repaint`;
- hooks.py: what runs inside a pipeline call (per-item strength, the idle ControlNet skipped, progress within
  steps, a few-step model's guidance embedding);
- backend.py: DiffusersBackend, the one class, made of the parts above.
"""
from __future__ import annotations

from .backend import DiffusersBackend
from .hooks import _IdleControlNet
from .loading import _import_diffusers, load_tiny_decoder
from .presets import DECODERS, DEFAULT_PRESET, DEPTH_CONTROLNETS, PRESETS, SCHEDULERS, TINY_DECODERS, Lora, Preset
from .prompts import ISOLATION_NEGATIVE, ISOLATION_PROMPT, _isolated
from .render import RenderMemoryError, _control_image

__all__ = ["DECODERS", "DEPTH_CONTROLNETS", "DiffusersBackend", "ISOLATION_NEGATIVE", "ISOLATION_PROMPT", "Lora",
           "PRESETS", "Preset", "RenderMemoryError", "SCHEDULERS", "TINY_DECODERS", "load_tiny_decoder"]
