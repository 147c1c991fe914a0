"""Where model weights come from: a local folder or the Hugging Face hub, cache first.

Every loader of weights (the diffusers backend, the depth estimator) goes through this module, so there is one
rule for offline use, one one-line error when weights cannot be had, and one place that talks to the hub.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit


class ModelUnavailableError(ValueError):
    """The model weights cannot be loaded (not cached and no hub access, or a bad folder).

    The message is one line naming the model id and how to fetch it ahead of time."""


logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_PROBE_SECONDS = 1.5
"""How long the reachability check waits for a connection to the hub (or its proxy) before calling it unreachable."""
WEIGHT_SUFFIXES = (".safetensors", ".bin")

LoadListener = Callable[[str], None]
"""listener(text): called with one line ("loading model ...", "downloading model ...") as weights load."""
_LISTENERS: list[LoadListener] = []
_LAST_LINE = ""
REACHABILITY_TTL_SECONDS = 300.0
"""How long an answer of the reachability check is kept (a long-running studio asks again after this)."""
_REACHABILITY: dict[tuple[str, int], tuple[float, Optional[str]]] = {}
_REACHABILITY_LOCK = threading.Lock()

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
    file: Optional[str] = None
    """One file of a hub repo (a LoRA's safetensors) rather than a model saved with save_pretrained."""

    @property
    def label(self) -> str:
        label = self.location if not self.subfolder else f"{self.location}/{self.subfolder}"
        return f"{label}/{self.file}" if self.file else label


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


def hub_cache() -> str:
    """The hub cache folder, read at call time like hub_offline (HF_HUB_CACHE, else HF_HOME/hub)."""
    return os.environ.get("HF_HUB_CACHE") or os.path.join(_hf_home(), "hub")


def hub_endpoint() -> str:
    """The hub's address: HF_ENDPOINT (a mirror) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")


def hub_unreachable_reason(timeout: float = HUB_PROBE_SECONDS) -> Optional[str]:
    """Why the hub cannot be reached from here, or None when it can. Opens no more than one TCP connection.

    The check connects to the endpoint's host and port (or to the proxy that urllib would use for it, from
    HTTPS_PROXY / HTTP_PROXY / NO_PROXY) and gives up after `timeout` seconds, name lookup included. The answer
    is kept per address for REACHABILITY_TTL_SECONDS (one command's whole run): the hub client itself retries for
    half a minute before it says the same thing.

    Args:
        timeout: seconds to wait for the connection.

    Returns:
        None when a connection opened; else a short reason ("connection refused", "no answer within 1.5 s").
    """
    endpoint = hub_endpoint()
    url = urlsplit(endpoint)
    scheme = url.scheme or "https"
    host, port = url.hostname or "", url.port or (443 if scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        purl = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = purl.hostname or "", purl.port or (443 if purl.scheme == "https" else 80)
    key = (host, port)
    with _REACHABILITY_LOCK:
        known = _REACHABILITY.get(key)
        if known is not None and time.monotonic() - known[0] < REACHABILITY_TTL_SECONDS:
            return known[1]
    outcome: list[Optional[str]] = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:  # refused, unreachable network, failed name lookup, timeout
            outcome.append((exc.strerror or str(exc) or type(exc).__name__).lower())

    # Name lookup has no timeout of its own (it can hang for many seconds with no network): bound it too.
    worker = threading.Thread(target=connect, daemon=True, name="hub-reachability")
    worker.start()
    worker.join(timeout + 0.2)
    reason = outcome[0] if outcome else f"no answer within {timeout:g} s"
    with _REACHABILITY_LOCK:
        _REACHABILITY[key] = (time.monotonic(), reason)
    return reason


def add_load_listener(listener: LoadListener) -> None:
    """Also send the "loading ..." / "downloading ..." lines to `listener` (e.g. the studio's page)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


def remove_load_listener(listener: LoadListener) -> None:
    """Stop sending lines to `listener`."""
    if listener in _LISTENERS:
        _LISTENERS.remove(listener)


def announce(text: str) -> None:
    """Send one "loading ..." / "downloading ..." line to the log and every listener."""
    global _LAST_LINE
    if text == _LAST_LINE:  # a model's config and weights load one after the other: one line for both
        return
    _LAST_LINE = text
    logger.info(text)
    for listener in list(_LISTENERS):
        listener(text)


def _no_agent_lookup() -> None:
    """Keep a cached load off the network: huggingface_hub (2.x) fetches a list of "agent harnesses" from the hub
    to label its user agent on the first request it builds, even for local_files_only loads (up to 3 s, plus
    name lookup, on a machine with no route out). The user agent's extras are telemetry; they are left out unless
    the user set HF_HUB_DISABLE_TELEMETRY themselves."""
    if "HF_HUB_DISABLE_TELEMETRY" in os.environ:
        return
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_TELEMETRY = True


def cached_files(src: ModelSource, *, pipeline: bool, without: tuple[str, ...] = ()) -> bool:
    """Whether `src`'s weights are on this machine (a folder, or complete in the hub cache). Never networked.

    Args:
        src: the model.
        pipeline: a diffusers pipeline (model_index.json, each component's config and weights in a subfolder),
            else one model (config.json and its weights); a source with a `file` is that one file.
        without: pipeline components that will be loaded from elsewhere (e.g. "vae" under a tiny decoder).

    Returns:
        True when loading it needs no download.
    """
    if src.is_folder:
        return True
    from huggingface_hub import try_to_load_from_cache

    if src.file:
        return isinstance(try_to_load_from_cache(src.location, src.file, cache_dir=hub_cache()), str)
    name = "model_index.json" if pipeline else "config.json"
    found = try_to_load_from_cache(src.location, f"{src.subfolder}/{name}" if src.subfolder else name,
                                   cache_dir=hub_cache())
    if not isinstance(found, str):
        return False
    root = Path(found).parent
    folders = [root]
    if pipeline:
        try:
            index = json.loads((root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        folders = [root / key for key in ("unet", "vae", "text_encoder", "text_encoder_2")
                   if key not in without and isinstance(index.get(key), list) and index[key][0] is not None]
    return all((f / "config.json").is_file() and any(p.name.endswith(WEIGHT_SUFFIXES) for p in f.iterdir())
               for f in folders)


def unavailable_message(src: ModelSource, what: str, offline: bool, exc: Optional[BaseException],
                        unreachable: Optional[str] = None) -> str:
    """The one-line ModelUnavailableError message: which model, why, and how to fetch it ahead of time."""
    if src.is_folder:
        reason = str(exc).strip().splitlines()[0][:200] if exc is not None and str(exc).strip() else "unreadable"
        return (f"{what} folder {src.location!r} cannot be loaded ({reason}); it must hold a model saved with "
                f"save_pretrained, e.g. `hf download <id> --local-dir {src.location}`")
    if offline:
        where = "not in the local Hugging Face cache and HF_HUB_OFFLINE=1"
    elif unreachable:
        where = f"not in the local Hugging Face cache and the hub {hub_endpoint()} cannot be reached ({unreachable})"
    else:
        where = "not in the local Hugging Face cache and could not be downloaded"
    if src.file:
        return (f"{what} {src.label!r} is {where}; fetch it ahead with `hf download {src.location} {src.file}` "
                f"(`huggingface-cli download {src.location} {src.file}` with huggingface_hub < 1.0) into "
                f"HF_HOME={_hf_home()}")
    return (f"{what} {src.label!r} is {where}; fetch it ahead with `hf download {src.location} {DOWNLOAD_PATTERNS}` "
            f"(`huggingface-cli download {src.location}` with huggingface_hub < 1.0) into HF_HOME={_hf_home()}, "
            f"or pass a local folder")


def require_hub(src: ModelSource, what: str) -> None:
    """Before a download of `src`: ModelUnavailableError at once, in one line, when the hub cannot be reached."""
    reason = hub_unreachable_reason()
    if reason is not None:
        raise ModelUnavailableError(unavailable_message(src, what, False, None, unreachable=reason))
    announce(f"downloading {what} {src.label} from {hub_endpoint()} into {hub_cache()} (once; a dropped connection "
             f"resumes)")


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
    if not src.is_folder:
        kwargs.setdefault("cache_dir", hub_cache())
        _no_agent_lookup()
    announce(f"loading {what} {src.label}")
    attempts = (True,) if (src.is_folder or local_only) else (True, False)
    # Missing files are OSErrors in diffusers/transformers/huggingface_hub; a folder with a broken or foreign
    # config is a ValueError in transformers ("Unrecognized model").
    caught = (OSError, ValueError) if src.is_folder else (OSError,)
    error: Optional[Exception] = None
    for local in attempts:
        if not local:
            require_hub(src, what)
        try:
            with warnings.catch_warnings():
                # diffusers still passes this deprecated argument to huggingface_hub: noise for every hub id
                warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
                return loader(src.location, local_files_only=local, **kwargs)
        except caught as exc:
            error = exc
    raise ModelUnavailableError(unavailable_message(src, what, local_only, error)) from error


__all__ = ["DOWNLOAD_PATTERNS", "LoadListener", "ModelSource", "ModelUnavailableError", "add_load_listener", "announce",
           "cached_files", "hub_cache", "hub_endpoint", "hub_offline", "hub_unreachable_reason", "load_pretrained",
           "parse_model_source", "remove_load_listener", "require_hub", "unavailable_message"]
