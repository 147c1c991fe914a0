"""Depth from a reference image: a monocular depth estimator -> float32 (H, W) in [0, 1], 1 = near.

The default is transformers' depth-estimation pipeline with Depth Anything V2 (small). Any transformers
depth model works (a hub id or a folder saved with save_pretrained). The controlnet_aux detectors (MiDaS,
ZoeDepth, LeReS) are optional: that package needs a torchvision matching torch, which CPU-only installs
here do not have, so it is an extra for CUDA hosts.

Relative models (Depth Anything, DPT/MiDaS) predict inverse depth, larger = nearer, which is already this
project's convention; metric models (Depth Anything metric, ZoeDepth, GLPN, Depth Pro) predict distance,
larger = farther, and are inverted. The map is then stretched to [0, 1] (min -> 0, max -> 1).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from .models import ModelUnavailableError
from .models import hub_cache, hub_offline, load_pretrained, parse_model_source, require_hub, unavailable_message

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
ESTIMATORS: tuple[str, ...] = ("transformers", "midas", "zoe", "leres")
AUX_DEFAULT_MODEL = "lllyasviel/Annotators"
"""Where controlnet_aux keeps its detector weights (used when `model` is left at the transformers default)."""
AUX_MISSING = "controlnet_aux is not installed; pip install -r requirements-extra.txt on a CUDA host"

METRIC_MODEL_TYPES = frozenset({"zoedepth", "glpn", "depth_pro", "prompt_depth_anything"})
"""transformers model types whose output is a distance (larger = farther)."""

_ESTIMATORS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def estimate_depth(image: Union[Image.Image, np.ndarray, str, Path], *, model: str = DEFAULT_DEPTH_MODEL,
                   estimator: str = "transformers", device: Optional[str] = None,
                   local_files_only: Optional[bool] = None) -> np.ndarray:
    """Estimate a depth map of `image`, in this project's convention.

    Args:
        image: a PIL image, an RGB/grey array (uint8, or float in [0, 1]), or a path.
        model: for "transformers", a depth-estimation model id or folder; for the controlnet_aux estimators,
            their weights repository or folder (left at the default: lllyasviel/Annotators).
        estimator: "transformers", or "midas", "zoe", "leres" (controlnet_aux, where it imports).
        device: "cuda", "cpu", ...; None picks CUDA when there is one.
        local_files_only: never download; None follows HF_HUB_OFFLINE.

    Returns:
        float32 (H, W) in [0, 1], 1 = near, at the image's size. A map with no relief at all is all 0.

    Raises:
        ValueError: unknown estimator, unreadable image, or controlnet_aux asked for where it does not import.
        ModelUnavailableError: the weights are not reachable (one line naming the id and how to fetch it).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown depth estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    rgb = _as_rgb(image)
    local_only = hub_offline() if local_files_only is None else bool(local_files_only)
    dev = _device_name(device)
    if estimator == "transformers":
        depth_pipe, near_is_high = _transformers_estimator(model, dev, local_only)
        out = depth_pipe(rgb)
        raw = out["predicted_depth"].detach().float().cpu().numpy()
    else:
        detector = _aux_estimator(estimator, AUX_DEFAULT_MODEL if model == DEFAULT_DEPTH_MODEL else model, dev,
                                  local_only)
        # controlnet_aux returns ControlNet-ready maps: white = near.
        raw = np.asarray(detector(rgb, output_type="pil").convert("L"), dtype=np.float32)
        near_is_high = True
    return _normalise(np.squeeze(raw), rgb.size, near_is_high)


def _as_rgb(image) -> Image.Image:
    if isinstance(image, (str, Path)):
        from .images import open_image

        image = open_image(image, what="reference image")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or arr.size == 0:
            raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = np.clip(np.nan_to_num(arr.astype(np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, an array or a path, got {type(image).__name__}")
    if image.width < 2 or image.height < 2:
        raise ValueError(f"image is too small for depth estimation: {image.width}x{image.height}")
    return image.convert("RGB")


def _device_name(device: Optional[str]) -> str:
    if device is not None:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _normalise(raw: np.ndarray, size: tuple[int, int], near_is_high: bool) -> np.ndarray:
    """Raw estimator output -> float32 (H, W) in [0, 1], 1 = near, at `size` (width, height)."""
    raw = np.nan_to_num(raw.astype(np.float32))
    if raw.shape != (size[1], size[0]):
        raw = np.asarray(Image.fromarray(raw, "F").resize(size, Image.BICUBIC), dtype=np.float32)
    lo, hi = float(raw.min()), float(raw.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros((size[1], size[0]), np.float32)
    depth = (raw - lo) / (hi - lo)
    if not near_is_high:
        depth = 1.0 - depth
    return np.clip(depth, 0.0, 1.0).astype(np.float32)


def _depth_network(auto_class):
    """auto_class.from_pretrained, with its look-up of a PEFT adapter kept to the load's own cache and offline flag.

    Where peft is installed (diffusers' LoRA loading needs it), transformers' Auto classes ask the hub for a hub id's
    adapter_config.json without the load's local_files_only and cache_dir: a cached model would wait on the network
    (retrying for half a minute where there is none)."""
    def load(location, *, local_files_only: bool, **kwargs):
        adapter = {"local_files_only": local_files_only, "cache_dir": kwargs.get("cache_dir")}
        return auto_class.from_pretrained(location, local_files_only=local_files_only, adapter_kwargs=adapter,
                                          **kwargs)

    return load


def _transformers_estimator(model: str, device: str, local_only: bool):
    """The depth-estimation pipeline for `model` on `device`, loaded once; and whether larger = nearer."""
    key = ("transformers", model, device)
    with _LOCK:
        if key in _ESTIMATORS:
            return _ESTIMATORS[key]
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation, pipeline

        src = parse_model_source(model, "depth model")
        net = load_pretrained(_depth_network(AutoModelForDepthEstimation), src, "depth model", local_only)
        # The PIL processors need no torchvision (absent or broken on CPU-only installs) and, for one image,
        # cost nothing next to the network.
        processor = load_pretrained(AutoImageProcessor.from_pretrained, src, "depth model", local_only, backend="pil")
        config = net.config
        metric = (getattr(config, "depth_estimation_type", None) == "metric"
                  or getattr(config, "model_type", "") in METRIC_MODEL_TYPES)
        depth_pipe = pipeline("depth-estimation", model=net, image_processor=processor, device=device)
        _ESTIMATORS[key] = (depth_pipe, not metric)
        return _ESTIMATORS[key]


def _aux_estimator(estimator: str, model: str, device: str, local_only: bool):
    """A controlnet_aux depth detector, loaded once."""
    key = (estimator, model, device)
    with _LOCK:
        if key in _ESTIMATORS:
            return _ESTIMATORS[key]
        try:
            import controlnet_aux
        except ImportError:
            raise ValueError(AUX_MISSING) from None
        except (OSError, RuntimeError) as exc:  # installed, but its torchvision does not load (CUDA-only build)
            raise ValueError(f"controlnet_aux does not import here ({str(exc).splitlines()[0][:120]}); "
                             f"pip install -r requirements-extra.txt on a CUDA host") from None
        detector_cls = {"midas": controlnet_aux.MidasDetector, "zoe": controlnet_aux.ZoeDetector,
                        "leres": controlnet_aux.LeresDetector}[estimator]
        what = f"{estimator} depth model"
        src = parse_model_source(model, what)
        location = src.location
        try:
            if not src.is_folder:
                # controlnet_aux downloads on its own: hand it the cached snapshot folder when there is one, and
                # let it download only when the hub answers.
                from huggingface_hub import snapshot_download

                try:
                    location = snapshot_download(src.location, local_files_only=True, cache_dir=hub_cache())
                except OSError:
                    if local_only:
                        raise
                    require_hub(src, what)
            detector = detector_cls.from_pretrained(location)
        except OSError as exc:  # the hub client's "not cached" errors are OSErrors too
            raise ModelUnavailableError(unavailable_message(src, what, local_only, exc)) from exc
        if hasattr(detector, "to"):
            detector = detector.to(device)
        _ESTIMATORS[key] = detector
        return detector


__all__ = ["AUX_DEFAULT_MODEL", "DEFAULT_DEPTH_MODEL", "ESTIMATORS", "estimate_depth"]
