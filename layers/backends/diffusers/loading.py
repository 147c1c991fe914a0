"""Building the pipeline: the model's family read from its own files, the ControlNet that fits it, the decoder,
dtype, device and placement (whole, or with CPU offload), and the repaint pipelines made from it with `from_pipe`.

torch and diffusers are imported here only when a model loads.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Self

from ...models import ModelSource, hub_offline, load_pretrained, parse_model_source
from .hooks import PROGRESS_INTERVAL, _ResidualScaler, _skip_idle_controlnet
from .presets import DECODERS, DEFAULT_PRESET, DEPTH_CONTROLNETS, PRESETS, TINY_DECODERS, Lora, _is_tiny
from .prompts import _Encoded

logger = logging.getLogger(__package__)  # the whole backend logs under the package's name

BATCH_MODES = ("auto", "batched", "one_by_one")
OFFLOAD_MODES = ("auto", "none", "model", "sequential")
CHANNELS_LAST_MODELS = ("unet", "controlnet")
"""The models kept in channels-last memory layout on a CPU: one UNet + ControlNet step of the 3-layer batch at
512x768 in bfloat16 takes 15% less CPU time so (bench/bench_cpu_speedups.py, README "Benchmarks"). The tiny
decoder is too (a third of its CPU time); the full VAE gains nothing from it and stays contiguous."""


class LoadingMixin:
    """DiffusersBackend's construction (see DiffusersBackend for the arguments) and its pipelines."""

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
        # The LoRA file is found (or fetched) before any weights load: a missing one fails at once.
        lora_file = _lora_file(preset.lora, local_only) if preset is not None and preset.lora else None

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
        if lora_file is not None:
            _fuse_lora(pipe, lora_file, preset.lora)
        if preset is not None and preset.scheduler:
            _swap_scheduler(pipe, preset.scheduler)

        self._setup(pipe, model_label=model_src.label, controlnet_label=cn_src.label, preset=preset_name,
                    family=family, batch=batch, offload=offload, vae_tiling=vae_tiling,
                    max_prompt_chunks=max_prompt_chunks, device=dev, lora_fused=lora_file is not None)

    @classmethod
    def from_pipeline(cls, pipe, *, model: str = "custom", controlnet: str = "custom", batch: str = "auto",
                      vae_tiling="auto", max_prompt_chunks: int = 4, preset: Optional[str] = None) -> Self:
        """Wrap a ControlNet pipeline built elsewhere (already on its device) in this backend.

        Args:
            pipe: a StableDiffusionControlNetPipeline or StableDiffusionXLControlNetPipeline with one ControlNet.
            model, controlnet: names recorded in model_info.
            batch, vae_tiling, max_prompt_chunks: as in the constructor.
            preset: sample as this preset does (its scheduler, swapped into `pipe`, its eta, few-step flag and
                defaults); the weights, and any LoRA, are `pipe`'s own. None: the pipeline as it is.

        Returns:
            A DiffusersBackend rendering with `pipe`.
        """
        from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

        cls._check_options(batch, "none", vae_tiling, max_prompt_chunks)
        if not isinstance(pipe.controlnet, ControlNetModel):
            raise ValueError(f"pipe.controlnet must be one ControlNetModel, got {type(pipe.controlnet).__name__}")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)} or None, got {preset!r}")
        family = "sdxl" if isinstance(pipe, StableDiffusionXLControlNetPipeline) else "sd15"
        if preset is not None and PRESETS[preset].scheduler:
            _swap_scheduler(pipe, PRESETS[preset].scheduler)
        self = cls.__new__(cls)
        self._setup(pipe, model_label=model, controlnet_label=controlnet, preset=preset, family=family, batch=batch,
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
               max_prompt_chunks, device, lora_fused: bool = False):
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
        self._kept_encodings: OrderedDict = OrderedDict()
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
        preset_spec = PRESETS[preset] if preset is not None else None
        # An LCM UNet carries its guidance as an embedding (time_cond_proj_dim) and never runs classifier-free
        # guidance; a few-step LoRA adds none: it runs without CFG where its guidance is 0 or 1, as distilled.
        self.guidance_embedding = pipe.unet.config.get("time_cond_proj_dim") is not None
        self.few_step = self.guidance_embedding or (preset_spec is not None and preset_spec.few_step)
        self.eta = preset_spec.eta if preset_spec is not None else None
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
            "guidance_embedding": self.guidance_embedding,
            "text_encoder_max_tokens": int(tok.model_max_length),
            "max_prompt_chunks": max_prompt_chunks,
        }
        if self.eta is not None:
            self.model_info["eta"] = self.eta
        if preset_spec is not None and preset_spec.lora is not None and lora_fused:
            self.model_info["lora"] = preset_spec.lora.info()
        if preset_spec is not None:
            self.defaults = preset_spec.defaults()
        elif self.guidance_embedding:  # an LCM-distilled model, of the lcm-sd15 preset's kind
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
    """Put the scheduler `name` (one of presets.SCHEDULERS) in, built from the model's own scheduler config."""
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler, TCDScheduler

    config = pipe.scheduler.config
    if name == "dpmpp_2m":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                                 use_karras_sigmas=True)
    elif name == "lcm":
        if not isinstance(pipe.scheduler, LCMScheduler):
            pipe.scheduler = LCMScheduler.from_config(config)
    elif name == "tcd":
        pipe.scheduler = TCDScheduler.from_config(config)
    elif name == "euler_trailing":
        pipe.scheduler = EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing")
    else:
        raise ValueError(f"unknown scheduler {name!r}")


def _lora_file(lora: Lora, local_only: bool) -> str:
    """The local path of `lora`'s file: from the hub cache, else downloaded (cache first, as every model loads).

    Raises:
        ModelUnavailableError: one line naming the file and how to fetch it.
    """
    src = ModelSource(lora.repo, None, False, lora.file)

    def locate(repo: str, *, local_files_only: bool, cache_dir: str) -> str:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo, lora.file, cache_dir=cache_dir, local_files_only=local_files_only)

    return load_pretrained(locate, src, "LoRA", local_only)


def _fuse_lora(pipe, path: str, lora: Lora) -> None:
    """Load the LoRA at `path` into the pipeline's UNet (and text encoder, where the file has keys for it), fuse it
    into their weights at `lora.scale`, then drop the adapter layers: the models are plain again, and a step costs
    what it costs without the LoRA."""
    # a UNet-only file (as the few-step LoRAs are) makes diffusers say it found nothing for the text encoder
    with _muted("diffusers.loaders.lora_base"):
        pipe.load_lora_weights(path)
        pipe.fuse_lora(lora_scale=float(lora.scale))
        pipe.unload_lora_weights()
