"""Filling unknown pixels from known ones.

- ``push_pull`` (``pushpull.py``): a smooth multi-scale fill, vectorised; what a depth map behind an occluder
  is completed with, and the ``"smooth"`` colour fill.
- ``texture_fill`` (``texture.py``, kernels in ``patchmatch.py``): coarse-to-fine PatchMatch with votes,
  copying texture and structure from the source pixels only; the ``"texture"`` colour fill (the default).
"""
from __future__ import annotations

from .pushpull import push_pull
from .texture import TextureSettings, texture_fill

__all__ = ["FILLS", "TextureSettings", "check_fill", "push_pull", "texture_fill"]

FILLS: tuple[str, ...] = ("texture", "smooth")
"""How a layer's colour is completed behind nearer layers: patches of its own texture, or a smooth blend."""


def check_fill(fill) -> str:
    """The fill's name, or a ValueError naming the choices."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")
    return fill
