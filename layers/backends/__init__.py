"""Rendering backends, by name.

`draft` paints a procedural layout offline; `diffusers` renders with Stable Diffusion + a depth ControlNet.
Backends are imported only when asked for, so torch is never imported for a draft.
"""
from __future__ import annotations

import importlib
from typing import Optional

from .base import (Backend, ModelUnavailableError, ProgressCallback, RenderRequest, RenderResult, RenderSettings,
                   RepaintRequest, Repainter)

_REGISTRY: dict[str, str] = {
    "draft": "layers.backends.draft:DraftBackend",
    "diffusers": "layers.backends.diffusers:DiffusersBackend",
}
BACKEND_NAMES: tuple[str, ...] = tuple(_REGISTRY)
BACKEND_CHOICES: tuple[str, ...] = ("auto",) + BACKEND_NAMES
"""What a user may ask for: "auto" is diffusers when it serves this machine at once (an accelerator, or weights
already downloaded), else draft (see layers.backends.auto)."""


def get_backend(name: str, **options) -> Backend:
    """Build the backend called `name`.

    Args:
        name: one of BACKEND_NAMES.
        **options: passed to the backend's constructor (e.g. model=, controlnet= for diffusers).

    Returns:
        A Backend instance.

    Raises:
        ValueError: unknown name (the message lists the choices).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    module_name, cls_name = _REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**options)


def resolve_backend(name: str = "auto", **options) -> tuple[Backend, Optional[str]]:
    """Build the backend a user asked for: "auto" decides without the network (see layers.backends.auto).

    Args:
        name: "auto", or one of BACKEND_NAMES.
        **options: diffusers options (model=, controlnet=, ...); ignored by draft.

    Returns:
        (backend, notice): notice is one line for the user (why "auto" draws drafts and how to opt in, or which
        preset "diffusers" took on a CPU), else None.

    Raises:
        ValueError: unknown name; ModelUnavailableError when "diffusers" was asked for explicitly and cannot load.
    """
    if name not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    from .auto import DRAFT_PREFIX, choose

    chosen, picked, notice = choose(name, options)
    if chosen == "draft":
        return get_backend("draft"), notice
    try:
        backend = get_backend("diffusers", **picked)
    except (ModelUnavailableError, ImportError) as exc:
        if name == "diffusers":
            raise
        return get_backend("draft"), f"{DRAFT_PREFIX} ({exc})"
    if picked.get("model") != options.get("model"):  # the manifest says the preset was chosen, not asked for
        backend.model_info["preset_chosen"] = "cpu default" if name == "diffusers" else "found in the local cache"
    return backend, notice


__all__ = ["BACKEND_CHOICES", "BACKEND_NAMES", "ModelUnavailableError", "resolve_backend", "Backend", "ProgressCallback", "RenderRequest", "RenderResult", "RenderSettings",
           "RepaintRequest", "Repainter", "get_backend"]
