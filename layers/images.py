"""Opening user-supplied images safely: a clear ValueError instead of a crash or a memory blow-up."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_IMAGE_PIXELS = 40_000_000
"""Largest image (width x height) accepted from a user: 40 MP covers an 8K photo, refuses decompression bombs."""

ImageSource = Union[str, os.PathLike, Image.Image]


def open_image(source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS, what: str = "image") -> Image.Image:
    """Open and fully load an image, refusing anything that is not a sane image.

    Args:
        source: a path, or an already opened PIL image (checked for size only).
        max_pixels: the largest width x height accepted.
        what: what the image is for, used in error messages ("depth map", "reference image").

    Returns:
        The loaded PIL image (pixels read, file closed).

    Raises:
        ValueError: missing file, not a file, not an image, truncated, or more than `max_pixels` pixels.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, what, "the image")
        return source
    path = Path(source)
    if not path.exists():
        raise ValueError(f"{what} not found: {path}")
    if not path.is_file():
        raise ValueError(f"{what} is not a file: {path}")
    try:
        # The header is read before the pixels, so a bomb is refused without decoding it.
        with Image.open(path) as img:
            _check_pixels(img.size, max_pixels, what, path.name)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
            return img.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ValueError(f"{what} is not an image: {path.name}") from None
        # Pillow refuses the largest bombs before we see their size; its message carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "too many pixels"
        raise ValueError(f"{what} {path.name} is too large to open safely: {size}; the limit is "
                         f"{max_pixels / 1e6:.0f} MP") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{what} {path.name} could not be read: {exc}") from None


def _check_pixels(size: tuple[int, int], max_pixels: int, what: str, name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"{what} {name} has an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ValueError(f"{what} {name} is {w}x{h} = {w * h / 1e6:.0f} MP; the limit is {max_pixels / 1e6:.0f} MP")


def check_unit_map(values, what: str, *, shape: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Check a per-pixel map (depth, prior, alpha): 2-D, numeric, finite, in [0, 1].

    Args:
        values: array-like (H, W).
        what: what the map is, for messages ("depth map", "midground prior").
        shape: the (height, width) it must have, if known.

    Returns:
        The map as float32, clipped to [0, 1] (values a rounding error outside are accepted).

    Raises:
        ValueError: naming `what` and the problem.
    """
    d = np.asarray(values)
    if d.ndim != 2 or min(d.shape) < 1:
        raise ValueError(f"{what} must be a 2-D array (H, W), got shape {d.shape}")
    if shape is not None and d.shape != tuple(shape):
        raise ValueError(f"{what} shape is {d.shape}, expected {tuple(shape)} (height, width)")
    if not np.issubdtype(d.dtype, np.number) or np.issubdtype(d.dtype, np.complexfloating):
        raise ValueError(f"{what} must be numeric, got dtype {d.dtype}")
    d = d.astype(np.float32, copy=False)
    if not np.isfinite(d).all():
        raise ValueError(f"{what} has NaN or infinite values")
    lo, hi = float(d.min()), float(d.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{what} values must be in [0, 1], got [{lo:.3g}, {hi:.3g}]")
    return np.clip(d, 0.0, 1.0)
