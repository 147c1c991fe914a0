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
"""What a user may ask for: "auto" is diffusers when its weights load, else draft."""


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
    """Build the backend a user asked for, falling back from "auto" to draft when no weights are reachable.

    Args:
        name: "auto", or one of BACKEND_NAMES.
        **options: diffusers options (model=, controlnet=, ...); ignored by draft.

    Returns:
        (backend, notice): notice is a one-line message for the user when "auto" fell back to draft, else None.

    Raises:
        ValueError: unknown name; ModelUnavailableError when "diffusers" was asked for explicitly and cannot load.
    """
    if name not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if name == "draft":
        return get_backend("draft"), None
    if name == "diffusers":
        return get_backend("diffusers", **options), None
    try:
        return get_backend("diffusers", **options), None
    except (ModelUnavailableError, ImportError) as exc:
        notice = f"Draft mode: procedural layout preview, no model weights loaded ({exc})"
        return get_backend("draft"), notice


__all__ = ["BACKEND_CHOICES", "BACKEND_NAMES", "ModelUnavailableError", "resolve_backend", "Backend", "ProgressCallback", "RenderRequest", "RenderResult", "RenderSettings",
           "RepaintRequest", "Repainter", "get_backend"]
