"""Opening user-supplied images safely: a clear ValueError instead of a crash or a memory blow-up.

A picture is read as it displays: its EXIF orientation is applied (a phone stores a portrait photo as a landscape
one plus "turn it"). That holds for every image read here, depth maps included: a depth map saved beside its photo
with the photo's orientation is turned with it, and one without a tag is taken as stored. A `.npy` depth map has no
orientation; its header (shape, type) is checked against the pixel limit before anything is allocated.
"""
from __future__ import annotations

import os
import re
import stat
import warnings
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_IMAGE_PIXELS = 40_000_000
"""Default largest image (width x height) read: 40 MP covers an 8K photo, refuses decompression bombs."""
PIXEL_LIMIT_VAR = "LAYERCAKE_MAX_UPLOAD_PIXELS"
"""Environment variable that sets the pixel limit of every image read (uploads, depth maps, stack layers)."""
PIXEL_LIMIT_RANGE = (1, 2 * Image.MAX_IMAGE_PIXELS)
"""What the limit may be set to: at most the size Pillow itself still opens (about 179 MP), so that one limit,
ours, decides and says so in its own words."""

ImageSource = Union[str, os.PathLike, Image.Image]


MAX_WORK_PIXELS = 8_000_000
"""Default largest picture an upload is decomposed at (width x height): a larger one (up to the pixel limit) is
scaled down to this first, so one request's memory stays bounded (bench/bench_upload_memory.py: under 3 GB peak
for a 39.9 MP upload). 8 MP is a 4K frame."""
WORK_LIMIT_VAR = "LAYERCAKE_MAX_WORK_PIXELS"
"""Environment variable that sets the size an uploaded picture is decomposed at."""


def pixel_limit(env: Mapping[str, str] = os.environ) -> int:
    """The largest image (width x height) read anywhere: LAYERCAKE_MAX_UPLOAD_PIXELS, else MAX_IMAGE_PIXELS.

    The one place the limit is read; every loader asks here when no limit is passed.

    Raises:
        ValueError: the variable is not a number or is out of PIXEL_LIMIT_RANGE.
    """
    return _pixels_from(env, PIXEL_LIMIT_VAR, MAX_IMAGE_PIXELS)


def work_limit(env: Mapping[str, str] = os.environ) -> int:
    """The largest picture an upload is worked on at: LAYERCAKE_MAX_WORK_PIXELS, else MAX_WORK_PIXELS.

    Raises:
        ValueError: the variable is not a number or is out of PIXEL_LIMIT_RANGE.
    """
    return _pixels_from(env, WORK_LIMIT_VAR, MAX_WORK_PIXELS)


def _pixels_from(env: Mapping[str, str], var: str, default: int) -> int:
    text = env.get(var, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{var} must be a number, got {text!r}") from None
    lo, hi = PIXEL_LIMIT_RANGE
    if not (lo <= value <= hi and value == int(value)):
        raise ValueError(f"{var} must be a whole number of pixels in {lo}..{hi}, got {text!r}")
    return int(value)


def fit_pixels(image: Image.Image, max_pixels: int, what: str = "image") -> tuple[Image.Image, Optional[str]]:
    """The image scaled down (aspect kept) to at most `max_pixels`, and a line saying so; unchanged (and None)
    when it is within.

    Args:
        image: the loaded image.
        max_pixels: the work budget (work_limit()).
        what: what the image is, for the line.

    Returns:
        (image, notice or None).
    """
    w, h = image.size
    if w * h <= max_pixels:
        return image, None
    size = fitted_size((w, h), max_pixels)
    # reducing_gap: a cheap integer reduction first, then a Lanczos pass; memory stays near the two images.
    smaller = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return smaller, (f"{what} is {w}x{h} ({_mp(w * h)}): worked at {size[0]}x{size[1]} ({_mp(size[0] * size[1])}), "
                     f"the limit for one picture ({WORK_LIMIT_VAR})")


def fitted_size(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """(width, height) scaled by one factor to at most `max_pixels` pixels, each side at least 1."""
    w, h = size
    scale = min(1.0, (max_pixels / float(w * h)) ** 0.5)
    fw, fh = max(1, int(w * scale)), max(1, int(h * scale))
    while fw * fh > max_pixels and (fw > 1 or fh > 1):  # a float's rounding: one row or column less
        fw, fh = (fw - 1, fh) if fw * h >= fh * w else (fw, fh - 1)
    return fw, fh


def sample_nearest(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A per-pixel map (H, W) sampled to `size` (width, height) by nearest pixel: values kept exactly (a 0 meaning
    "unknown" is not blended into its neighbours), any dtype, memory of the result only."""
    h, w = values.shape[:2]
    rows = (np.arange(size[1]) * h // size[1]).astype(np.intp)
    cols = (np.arange(size[0]) * w // size[0]).astype(np.intp)
    return values[rows[:, None], cols[None, :]]


def open_image(source: ImageSource, *, max_pixels: Optional[int] = None, what: str = "image") -> Image.Image:
    """Open and fully load an image, refusing anything that is not a sane image.

    The size is read from the file's header and checked before a single pixel is decoded.

    Args:
        source: a path, or an already opened PIL image (returned as it is: its pixels are already in memory).
        max_pixels: the largest width x height accepted; None = pixel_limit().
        what: what the image is for, used in error messages ("depth map", "reference image").

    Returns:
        The loaded PIL image (pixels read, file closed).

    Raises:
        ValueError: missing file, not a file, not an image, truncated, or more than `max_pixels` pixels.
    """
    if isinstance(source, Image.Image):
        return source
    limit = pixel_limit() if max_pixels is None else int(max_pixels)
    path = check_file(source, what)
    try:
        with warnings.catch_warnings():
            # Our limit decides; Pillow's own warning would only add lines to the one-line error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                check_pixels(img.size, limit, what, path.name)
                # A camera's MPO holds the photo first and previews after it: the photo is the picture.
                if getattr(img, "is_animated", False) and img.format != "MPO":
                    raise ValueError(f"{what} {path.name} is animated (several frames): save the frame you want as "
                                     f"a still image")
                img.load()
                return ImageOps.exif_transpose(img) if _turned(img) else img.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ValueError(f"{what} {path.name} is not an image") from None
        # Pillow refuses the very largest before their size is known to us; its message carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = _mp(int(found.group(1))) if found else "too many pixels"
        raise ValueError(f"{what} {path.name} is too large: {size}, more than the limit of {_mp(limit)} "
                         f"(set {PIXEL_LIMIT_VAR} to change it)") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{what} {path.name} could not be read: {exc}") from None


def _turned(img: Image.Image) -> bool:
    """Whether the image's EXIF orientation asks for it to be turned or mirrored to display."""
    try:
        return img.getexif().get(_ORIENTATION, 1) not in (1, None)
    except (OSError, ValueError, SyntaxError):  # an unreadable EXIF block: the pixels as stored
        return False


_ORIENTATION = 0x0112


def check_file(source, what: str) -> Path:
    """`source` as a Path once it is a regular file; ValueError saying what it is otherwise.

    Checked without opening it: a named pipe would block its reader.
    """
    path = Path(source)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ValueError(f"{what} cannot be read: {path} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device")
        raise ValueError(f"{what} is not a file: {path} ({kind})")
    return path


def read_npy(source, *, max_pixels: Optional[int] = None, what: str = "depth map") -> np.ndarray:
    """Read a 2-D numeric ``.npy`` array, its header checked before a byte of data is allocated.

    Args:
        source: the file.
        max_pixels: the largest width x height accepted; None = pixel_limit() (the same limit as an image's).
        what: what the array is, for messages.

    Returns:
        The array (H, W) in the file's own type (a (H, W, 1) array loses its last axis).

    Raises:
        ValueError: one line: not a file, not a .npy array (a .npz archive named .npy says so), Python objects,
            not 2-D numeric, over the pixel limit, or cut short.
    """
    limit = pixel_limit() if max_pixels is None else int(max_pixels)
    path = check_file(source, what)
    name = path.name
    with open(path, "rb") as f:
        start = f.read(6)
        if start.startswith(b"PK\x03\x04"):
            raise ValueError(f"{what} {name} is a .npz archive, not a .npy array: save one array with numpy.save")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            raise ValueError(f"{what} {name} is not a .npy array") from None
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        try:
            shape, fortran, dtype = read_header(f, max_header_size=10_000)
        except (ValueError, OSError, SyntaxError, TypeError):
            raise ValueError(f"{what} {name} has a damaged .npy header") from None
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{what} {name} holds Python objects, not numbers")
    flat = shape[:2] if len(shape) == 3 and shape[2] == 1 else shape
    if len(flat) != 2 or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"{what} {name} must be a 2-D numeric array (H, W), got {dtype} {tuple(shape)}")
    check_pixels((flat[1], flat[0]), limit, what, name)
    if path.stat().st_size < offset + int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{what} {name} is cut short: its header announces {flat[1]}x{flat[0]} {dtype} values")
    array = np.fromfile(path, dtype=dtype, count=int(np.prod(shape)), offset=offset)
    return array.reshape(flat, order="F" if fortran else "C")


def check_pixels(size: tuple[int, int], max_pixels: int, what: str, name: str) -> None:
    """Refuse an empty image or one of more than max_pixels pixels, in one sentence naming it."""
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"{what} {name} has an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ValueError(f"{what} {name} is too large: {w}x{h} pixels ({_mp(w * h)}), more than the limit of "
                         f"{_mp(max_pixels)} (set {PIXEL_LIMIT_VAR} to change it)")


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} MP"


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


def depth_levels16(depth: np.ndarray) -> np.ndarray:
    """The one rounding of a [0, 1] depth map to the 16-bit levels its PNG stores (0 = far, 65535 = near)."""
    return np.round(depth * 65535.0).astype(np.uint16)


def depth_from_levels16(levels) -> np.ndarray:
    """16-bit depth levels -> float32 (H, W) in [0, 1], as a 16-bit depth PNG is read back."""
    return np.clip(np.asarray(levels, dtype=np.float64) / 65535.0, 0.0, 1.0).astype(np.float32)


def as_stored16(depth) -> np.ndarray:
    """A depth map exactly as its 16-bit PNG gives it back, so work done on it now is the same as work done later
    on the map read from its file.

    Args:
        depth: float (H, W) in [0, 1], 1 = near.

    Returns:
        float32 (H, W) in [0, 1].
    """
    return depth_from_levels16(depth_levels16(check_unit_map(depth, "depth")))

