"""Where model weights come from: a local folder or the Hugging Face hub, cache first.

Every loader of weights (the diffusers backend, the depth estimator) goes through this module, so there is one
rule for offline use, one one-line error when weights cannot be had, and one place that talks to the hub.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .backends.base import ModelUnavailableError

DOWNLOAD_PATTERNS = "--include '*.json' --include '*.txt' --include '*model.safetensors'"
"""Only what from_pretrained reads (configs, tokenizer, safetensors weights), not the repos' .ckpt copies."""

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_ID_SUBFOLDER = re.compile(r"([A-Za-z0-9][\w.-]*/[\w.-]+)/([\w.-]+(?:/[\w.-]+)*)")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local folder, or a hub id (optionally a subfolder of a hub repo)."""

    location: str
    subfolder: Optional[str]
    is_folder: bool

    @property
    def label(self) -> str:
        return self.location if not self.subfolder else f"{self.location}/{self.subfolder}"


def parse_model_source(text: str, what: str) -> ModelSource:
    """Read a user's model argument: an existing folder, a hub id "org/name", or "org/name/subfolder".

    Args:
        text: what the user wrote (--model, --controlnet, --depth-model).
        what: the kind of model, for messages ("model", "controlnet", "depth model").

    Returns:
        The ModelSource.

    Raises:
        ModelUnavailableError: a path that is not an existing folder.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} must be a preset name, a Hugging Face id or a folder, got {text!r}")
    text = text.strip()
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource(str(path), None, True)
    looks_like_path = text.startswith(("/", ".", "~")) or path.exists() or "\\" in text
    if not looks_like_path:
        if _HUB_ID.fullmatch(text):
            return ModelSource(text, None, False)
        m = _HUB_ID_SUBFOLDER.fullmatch(text)
        if m:
            return ModelSource(m.group(1), m.group(2), False)
    if path.exists():
        raise ModelUnavailableError(f"{what} {text!r} is a file, not a folder: pass the folder the model was saved "
                                    f"in (save_pretrained), or a Hugging Face id")
    raise ModelUnavailableError(f"{what} folder {text!r} does not exist; pass a folder saved with save_pretrained "
                                f"or a Hugging Face id")


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set. Read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hf_home() -> str:
    return os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")


def unavailable_message(src: ModelSource, what: str, offline: bool, exc: Optional[BaseException]) -> str:
    """The one-line ModelUnavailableError message: which model, why, and how to fetch it ahead of time."""
    if src.is_folder:
        reason = str(exc).strip().splitlines()[0][:200] if exc is not None and str(exc).strip() else "unreadable"
        return (f"{what} folder {src.location!r} cannot be loaded ({reason}); it must hold a model saved with "
                f"save_pretrained, e.g. `hf download <id> --local-dir {src.location}`")
    where = "not in the local Hugging Face cache and HF_HUB_OFFLINE=1" if offline else \
        "not in the local Hugging Face cache and could not be downloaded"
    return (f"{what} {src.label!r} is {where}; fetch it ahead with `hf download {src.location} {DOWNLOAD_PATTERNS}` "
            f"(`huggingface-cli download {src.location}` with huggingface_hub < 1.0) into HF_HOME={_hf_home()}, "
            f"or pass a local folder")


def load_pretrained(loader, src: ModelSource, what: str, local_only: bool, **kwargs):
    """Call a from_pretrained-like loader on `src`, cache first: a cached model never touches the network.

    Args:
        loader: e.g. ControlNetModel.from_pretrained; called as loader(location, local_files_only=..., **kwargs).
        src: where the model is.
        what: the kind of model, for messages.
        local_only: never download (HF_HUB_OFFLINE or local_files_only=True).
        **kwargs: passed to the loader (dtype=, subfolder= is added for "org/name/subfolder").

    Returns:
        Whatever the loader returns.

    Raises:
        ModelUnavailableError: one line naming the model and how to fetch it.
    """
    if src.subfolder:
        kwargs["subfolder"] = src.subfolder
    attempts = (True,) if (src.is_folder or local_only) else (True, False)
    # Missing files are OSErrors in diffusers/transformers/huggingface_hub; a folder with a broken or foreign
    # config is a ValueError in transformers ("Unrecognized model").
    caught = (OSError, ValueError) if src.is_folder else (OSError,)
    error: Optional[Exception] = None
    for local in attempts:
        try:
            with warnings.catch_warnings():
                # diffusers still passes this deprecated argument to huggingface_hub: noise for every hub id
                warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
                return loader(src.location, local_files_only=local, **kwargs)
        except caught as exc:
            error = exc
    raise ModelUnavailableError(unavailable_message(src, what, local_only, error)) from error


__all__ = ["DOWNLOAD_PATTERNS", "ModelSource", "ModelUnavailableError", "hub_offline", "load_pretrained",
           "parse_model_source", "unavailable_message"]
