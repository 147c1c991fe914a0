"""What `--backend auto` renders with on this machine, and which preset `--backend diffusers` takes on a CPU.

`auto` means: the model when it serves this machine at once, else the draft renderer with one line saying why and
how to opt in. The model serves at once when there is an accelerator (CUDA, MPS, a Hugging Face ZeroGPU Space), or
when its weights are already on this machine. Deciding never touches the network: a laptop with no GPU and an
empty cache starts in draft mode immediately instead of downloading gigabytes or waiting on hub retries.

Without an accelerator, `--backend diffusers` with no `--model` takes the few-step preset (lcm-sd15, 4 steps):
25 steps of the full SD1.5 preset are minutes per stack on a CPU. `--model sd15` still picks the full preset.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from ..models import cached_files, parse_model_source
from .base import ModelUnavailableError
from .diffusers import DEFAULT_PRESET, PRESETS

CPU_PRESET = "lcm-sd15"
"""The preset `--backend diffusers` takes without an accelerator (and `auto` looks for in the cache)."""
CPU_PRESET_DOWNLOAD_GB = 5.7
"""One-time download of the lcm-sd15 preset: 1,427,596,347 float32 parameters (LCM UNet 859.6M, CLIP-L text
encoder 123.1M, VAE 83.7M, SD1.5 depth ControlNet 361.3M), counted from the published configs by
bench/bench_cpu_stack.py, x 4 bytes of safetensors."""
CPU_STACK_SECONDS = 150
"""A 512x768 lcm-sd15 stack (3 layers, 4 steps, matting, composite) on a 2-core CPU, measured with
bench/bench_cpu_stack.py."""

DRAFT_PREFIX = "Draft mode: procedural layout preview, no model weights loaded"


def accelerator() -> Optional[str]:
    """The accelerator torch would render on ("cuda", "mps"), or None. Imports torch only where one may exist.

    A ZeroGPU Space (SPACES_ZERO_GPU set) counts as CUDA: its GPU is attached per request, not at start.
    """
    if os.environ.get("SPACES_ZERO_GPU"):
        return "cuda"
    if sys.platform.startswith("linux") and not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")):
        return None  # no NVIDIA/ROCm/WSL GPU device: skip the seconds torch takes to import just to say so
    if sys.platform == "win32" or sys.platform == "darwin" or sys.platform.startswith("linux"):
        try:
            import torch
        except ImportError:
            return None
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
    return None


def weights_cached(model: str, controlnet: Optional[str] = None) -> bool:
    """Whether `model` (a preset, hub id or folder) and its depth ControlNet load without a download."""
    preset = PRESETS.get(model)
    try:
        src = parse_model_source(preset.model if preset else model, "model")
        cn = controlnet or (preset.controlnet if preset else None)
        cn_src = parse_model_source(cn, "controlnet") if cn else None
    except ModelUnavailableError:
        return False
    return cached_files(src, pipeline=True) and (cn_src is None or cached_files(cn_src, pipeline=False))


def cpu_cost() -> str:
    """What the model costs on this kind of machine, in the words of the notices."""
    return (f"the {CPU_PRESET} preset downloads once (about {CPU_PRESET_DOWNLOAD_GB:g} GB) and renders a 512x768 "
            f"stack in about {CPU_STACK_SECONDS} s on a 2-core CPU")


def choose(name: str, options: dict) -> tuple[str, dict, Optional[str]]:
    """The backend to build for what the user asked, without touching the network.

    Args:
        name: "auto", "draft" or "diffusers".
        options: the diffusers options the user gave (model=, controlnet=, device=, ...).

    Returns:
        (backend name, its options, notice): notice is one line for the terminal and the page, or None.
    """
    if name == "draft":
        return "draft", {}, None
    on_cpu = options.get("device") in (None, "cpu") and (options.get("device") == "cpu" or accelerator() is None)
    if name == "diffusers":
        if on_cpu and not options.get("model"):
            notice = (f"No GPU here: rendering on the CPU with the few-step {CPU_PRESET} preset "
                      f"({PRESETS[CPU_PRESET].steps} steps; {cpu_cost()}); --model {DEFAULT_PRESET} takes the full "
                      f"preset ({PRESETS[DEFAULT_PRESET].steps} steps)")
            return "diffusers", dict(options, model=CPU_PRESET), notice
        return "diffusers", options, None
    # auto
    if not on_cpu:
        return "diffusers", options, None
    if options.get("model"):
        if weights_cached(options["model"], options.get("controlnet")):
            return "diffusers", options, None
        why = f"no GPU here, and {options['model']!r} is not downloaded yet"
    else:
        for preset in (CPU_PRESET, DEFAULT_PRESET):
            if weights_cached(preset, options.get("controlnet")):
                return "diffusers", dict(options, model=preset), None
        why = "no GPU here, and no model is downloaded yet"
    notice = (f"{DRAFT_PREFIX} ({why}). For real images on this CPU, start with --backend diffusers: "
              f"{cpu_cost()}.")
    return "draft", {}, notice


__all__ = ["CPU_PRESET", "CPU_PRESET_DOWNLOAD_GB", "CPU_STACK_SECONDS", "accelerator", "choose", "weights_cached"]
