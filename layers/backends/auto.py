"""What `--backend auto` renders with on this machine, and which preset `--backend diffusers` takes on a CPU.

`auto` means: the model when it serves this machine at once, else the draft renderer with one line saying why and
how to opt in. The model serves at once when there is an accelerator (CUDA, MPS, a Hugging Face ZeroGPU Space), or
when its weights are already on this machine. Deciding never touches the network: a laptop with no GPU and an
empty cache starts in draft mode immediately instead of downloading gigabytes or waiting on hub retries.

Without an accelerator, `--backend diffusers` with no `--model` takes the few-step preset (hyper-sd15: SD1.5 with
Hyper-SD's unified LoRA fused in, 1 step of TCD, no classifier-free guidance), in bfloat16 where the CPU computes it
natively, decoding with the tiny decoder (TAESD) where the full VAE would take a third of the stack's time: 25 steps
of the full SD1.5 preset in float32 are many minutes per stack on a CPU. The other few-step SD1.5 preset, lcm-sd15
(4 steps), renders the same way on a CPU. `--model sd15` still picks the full preset (float32 and the full VAE
unless --dtype / --decoder say otherwise).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from ..models import ModelSource, cached_files, parse_model_source
from .base import ModelUnavailableError
from .diffusers import DEFAULT_PRESET, PRESETS, TINY_DECODERS

CPU_PRESET = "hyper-sd15"
"""The preset `--backend diffusers` takes without an accelerator (and `auto` looks for in the cache first)."""
CPU_PRESETS = (CPU_PRESET, "lcm-sd15")
"""The few-step SD1.5 presets, which render on a CPU in its native bfloat16 and decode with the tiny decoder; `auto`
looks for them in the cache in this order (then for the full sd15)."""
CPU_PRESET_DOWNLOAD_GB = 5.7
"""One-time download of the hyper-sd15 preset with its tiny decoder: 1,346,305,627 float32 parameters (SD1.5 UNet
859.5M, CLIP-L text encoder 123.1M, SD1.5 depth ControlNet 361.3M, TAESD 2.4M; the model's own VAE is not fetched),
counted from the published configs by bench/bench_cpu_stack.py, x 4 bytes of safetensors = 5.39 GB, and the LoRA
file (Hyper-SD15-1step-lora.safetensors, 269 MB as the hub lists it): 5.65 GB. (lcm-sd15: 5.39 GB.)"""
PLATE_DOWNLOAD_GB = 0.3
"""What the plate composition fetches besides (once): Depth Anything V2 Small (24,785,089 parameters, 0.1 GB) and
rembg's isnet-general-use matting model (~170 MB)."""
CPU_STACK_SECONDS = (50, 60)
"""How long (seconds, fastest to slowest measured) a 512x768 hyper-sd15 stack as `generate --backend diffusers`
makes it on a CPU (plate composition: plate, depth estimate, layers from the plate, harmonising; 1 step, bfloat16,
tiny decoder) on 2 idle cores, for an example prompt:
bench/bench_cpu_stack.py measured 50.7 s cold and 51.7 s warm (94.8 and 97.3 CPU-seconds) on 2 cores of an AMD EPYC
with AVX512-BF16 and no AMX, with nothing else running (2026-12-04), where lcm-sd15 at 4 steps took 90.9 s (172.8
CPU-seconds) in the same run (lcm-sd15 had taken 77-89 s on 2 idle AMX cores, the development machine's CPU on
2026-12-02); run again on another host of the same kind with nothing else running, 58.4 s cold and 57.5 s warm
(106 CPU-seconds) beside lcm-sd15's 105.3 s. Where the CPU has no native bfloat16 the preset renders in float32,
slower still."""
FULL_DECODER_EXTRA_SECONDS = 90
"""What `--decoder full` adds to a stack, whatever its steps (the plate composition encodes three pictures and decodes
five): lcm-sd15's took 175.2 s instead of 88.1 s in one run, about 150 CPU-seconds more in another (305.6 against
155.2; the full VAE takes 45 CPU-s to decode the 3-layer batch where the tiny decoder takes 3.8,
bench/bench_cpu_speedups.py)."""

DRAFT_PREFIX = "Draft mode: procedural layout preview, no model weights loaded"


def accelerator() -> Optional[str]:
    """The accelerator torch would render on ("cuda", "mps"), or None. Imports torch only where one may exist.

    A ZeroGPU Space (SPACES_ZERO_GPU set) counts as CUDA: its GPU is attached per request, not at start.
    """
    if os.environ.get("SPACES_ZERO_GPU"):
        return "cuda"
    if sys.platform.startswith("linux") and not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")):
        return None  # no NVIDIA/ROCm/WSL GPU device: skip the seconds torch takes to import just to say so
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else None


def cpu_dtype() -> str:
    """The dtype the CPU default preset renders in: bfloat16 where the CPU multiplies it natively (AMX or
    AVX512-BF16: 4x float32's speed measured on such a CPU), else float32 (bfloat16 emulated is slower)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    native = any(getattr(cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return "bfloat16" if native else "float32"


def weights_cached(model: str, controlnet: Optional[str] = None, decoder: str = "full") -> bool:
    """Whether `model` (a preset, hub id or folder), its depth ControlNet, its LoRA and `decoder` load without a
    download."""
    preset = PRESETS.get(model)
    try:
        src = parse_model_source(preset.model if preset else model, "model")
        cn = controlnet or (preset.controlnet if preset else None)
        cn_src = parse_model_source(cn, "controlnet") if cn else None
    except ModelUnavailableError:
        return False
    lora = preset.lora if preset else None
    tiny = decoder == "tiny"  # auto takes it on its own only for the CPU presets, SD1.5 models
    return (cached_files(src, pipeline=True, without=("vae",) if tiny else ())
            and (cn_src is None or cached_files(cn_src, pipeline=False))
            and (lora is None or cached_files(ModelSource(lora.repo, None, False, lora.file), pipeline=False))
            and (not tiny or cached_files(parse_model_source(TINY_DECODERS["sd15"], "tiny decoder"), pipeline=False)))


def cpu_cost() -> str:
    """What the model costs on this kind of machine, in the words of the notices."""
    return (f"the {CPU_PRESET} preset downloads once (about {CPU_PRESET_DOWNLOAD_GB:g} GB, and "
            f"{PLATE_DOWNLOAD_GB:g} GB of depth and matting models) and renders a 512x768 stack in about "
            f"{CPU_STACK_SECONDS[0]}-{CPU_STACK_SECONDS[1]} s on 2 idle CPU cores, more on a busy machine")


def _cpu_options(options: dict, model: str) -> dict:
    picked = dict(options, model=model)
    if model in CPU_PRESETS:
        picked.setdefault("dtype", cpu_dtype())
        picked.setdefault("decoder", "tiny")
    return picked


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
    if not on_cpu:
        return "diffusers", options, None
    if name == "diffusers":
        picked = _cpu_options(options, options.get("model") or CPU_PRESET)
        if options.get("model"):
            return "diffusers", picked, None
        other = ("--decoder full decodes with the model's VAE (sharper, about "
                 f"{FULL_DECODER_EXTRA_SECONDS} s more per stack)" if picked["decoder"] == "tiny" else
                 f"--decoder tiny decodes about {FULL_DECODER_EXTRA_SECONDS} s faster")
        notice = (f"No GPU here: rendering on the CPU with the few-step {CPU_PRESET} preset "
                  f"({PRESETS[CPU_PRESET].step_words()}, {picked['dtype']}, {picked['decoder']} decoder; "
                  f"{cpu_cost()}); {other}; --model {DEFAULT_PRESET} takes the full preset "
                  f"({PRESETS[DEFAULT_PRESET].step_words()})")
        return "diffusers", picked, notice
    # auto on a CPU: the model only when nothing has to be downloaded (the full VAE when the tiny decoder is not)
    for model in [options["model"]] if options.get("model") else [*CPU_PRESETS, DEFAULT_PRESET]:
        picked = _cpu_options(options, model)
        # the preset's own decoder first, then the full VAE, unless one was asked for
        for decoder in dict.fromkeys([picked.get("decoder", "full"), options.get("decoder", "full")]):
            if weights_cached(model, options.get("controlnet"), decoder):
                return "diffusers", dict(picked, decoder=decoder) if "decoder" in picked else picked, None
    if options.get("model"):
        why = f"no GPU here, and {options['model']!r} is not downloaded yet"
    else:
        why = "no GPU here, and no model is downloaded yet"
    notice = (f"{DRAFT_PREFIX} ({why}). For real images on this CPU, start with --backend diffusers: "
              f"{cpu_cost()}.")
    return "draft", {}, notice


__all__ = ["CPU_PRESET", "CPU_PRESETS", "CPU_PRESET_DOWNLOAD_GB", "CPU_STACK_SECONDS", "FULL_DECODER_EXTRA_SECONDS",
           "PLATE_DOWNLOAD_GB", "accelerator", "choose", "cpu_dtype",
           "weights_cached"]
