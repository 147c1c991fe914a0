"""Export a LayerStack: layered PSD, OpenRaster (.ora), and a ZIP of PNGs + manifest; 16-bit depth PNGs.

Every file is written atomically: into a temp file in the same folder, renamed over the target only when
complete (``atomic_path``). A failed export leaves neither a half-written file nor a stray temp file.

- PSD (psd-tools): an RGBA document (an RGB one would turn each layer's alpha into a user mask), one pixel
  layer per stack layer, back to front, then a hidden group ``depth`` holding each layer's depth map as a
  grey layer ("depth <name>"), and the stack's composite as the merged image. Names are set after the
  layer is created because psd-tools cannot save a non-ASCII name passed at creation.
- OpenRaster, per the spec (https://www.openraster.org/baseline/file-layout-spec.html): a ZIP whose first
  entry is ``mimetype`` (stored, uncompressed, ``image/openraster``), then ``stack.xml`` (top layer first),
  ``data/*.png``, ``mergedimage.png`` and ``Thumbnails/thumbnail.png`` (at most 256 px). The depth maps go
  in a hidden sub-stack named ``depth``, like the PSD.
- ZIP: ``layers/<name>.png`` (RGBA), ``depth/<name>.png`` (16-bit grey), ``composite.png``, ``manifest.json``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
import secrets
import threading
import time
import zipfile
import zlib
from collections import OrderedDict
from importlib import metadata
from pathlib import Path
from typing import Iterator, Mapping, Optional, Union
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from .images import check_unit_map, depth_from_levels16, depth_levels16
from .stack import LayerStack

__all__ = [
    "DEPTH_GROUP", "atomic_path", "export_ora", "export_psd", "export_zip", "load_depth_png16",
    "package_versions", "png_bytes", "save_depth_png16", "save_png",
]

DEPTH_GROUP = "depth"
"""Name of the hidden group (PSD) / sub-stack (ORA) holding the depth maps."""
ORA_MIMETYPE = b"image/openraster"
THUMBNAIL_SIDE = 256
PNG_LEVEL = 3
"""zlib level of the PNGs written: close to the default's size at about half its time."""

PathLike = Union[str, os.PathLike]

# Distributions worth recording to reproduce a stack; the heavy ones are listed only when installed.
PACKAGES = (
    "numpy", "pillow", "scipy", "psd-tools", "imageio", "imageio-ffmpeg", "rembg", "pymatting",
    "onnxruntime", "pyora", "torch", "diffusers", "transformers", "accelerate", "safetensors", "gradio",
)


# --------------------------------------------------------------------------------------------- files

@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Write a file atomically: yields a temp path in the target's folder, renamed onto ``path`` on success.

    Args:
        path: the file to create or replace. Its folder must exist and be writable.

    Returns:
        A context manager yielding the temp path (same suffix as ``path``, so writers that pick the
        format from the name still work). If the block raises, the temp file is removed and ``path`` is
        left as it was.
    """
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise ValueError(f"not a file path: {str(path)!r}")
    folder = path.parent
    if not folder.exists():
        raise ValueError(f"output folder does not exist: {str(folder)!r}")
    if not folder.is_dir():
        raise ValueError(f"output folder is not a folder: {str(folder)!r}")
    if path.is_dir():
        raise ValueError(f"output path is a folder: {str(path)!r}")
    tmp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}"
    try:
        # O_EXCL: never clobber another writer's temp file; 0o666 lets the umask decide, like a plain open().
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise ValueError(f"output folder is not writable: {str(folder)!r} ({exc.strerror})") from exc
    done = False
    try:
        yield tmp
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


def _check_stack(stack) -> LayerStack:
    if not isinstance(stack, LayerStack):
        raise ValueError(f"stack must be a LayerStack, got {type(stack).__name__}")
    return stack


def _check_suffix(path: PathLike, suffix: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise ValueError(f"expected a {suffix} file name, got {str(path)!r}")
    return path


_PNG_CACHE: "OrderedDict[tuple, bytes]" = OrderedDict()
_PNG_CACHE_SIZE = 24
_PNG_LOCK = threading.Lock()
_PNG_WRITERS = 0


@contextlib.contextmanager
def png_encodings_kept() -> Iterator[None]:
    """Keep PNG encodings (png_bytes) while writes are under way; forget them when the last one ends.

    A long-running server would otherwise hold the last 24 encodings (tens of MB per large stack) for good.
    """
    global _PNG_WRITERS
    with _PNG_LOCK:
        _PNG_WRITERS += 1
    try:
        yield
    finally:
        with _PNG_LOCK:
            _PNG_WRITERS -= 1
            if _PNG_WRITERS == 0:
                _PNG_CACHE.clear()


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding of an image, remembered for the last few images encoded.

    The same layer and composite go into the layer folder, the ORA and the ZIP; encoding is most of the
    cost of those writes. Entries are keyed by the pixels themselves (a CRC of them), so an image changed
    in place is encoded afresh.

    Args:
        image: any PIL image PNG can hold (RGBA, RGB, L, I;16, ...).

    Returns:
        The PNG file's bytes.
    """
    key = (image.mode, image.size, zlib.crc32(image.tobytes()))
    with _PNG_LOCK:
        data = _PNG_CACHE.get(key)
        if data is not None:
            _PNG_CACHE.move_to_end(key)
            return data
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    data = buffer.getvalue()
    with _PNG_LOCK:
        _PNG_CACHE[key] = data
        while len(_PNG_CACHE) > _PNG_CACHE_SIZE:
            _PNG_CACHE.popitem(last=False)
    return data


def save_png(image: Image.Image, path: PathLike) -> Path:
    """Write an image as PNG atomically (encoded once even when several exports store it).

    Args:
        image: a PIL image.
        path: a ``.png`` file.

    Returns:
        The path written.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
    path = _check_suffix(path, ".png")
    data = png_bytes(image)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _file_stems(names) -> list[str]:
    """Safe, unique file names for layer names (letters of any script, digits, - and _ are kept)."""
    stems: list[str] = []
    for name in names:
        stem = re.sub(r"[^\w\-]+", "_", name, flags=re.UNICODE).strip("._") or "layer"
        candidate, k = stem, 2
        while candidate.lower() in (s.lower() for s in stems):
            candidate, k = f"{stem}_{k}", k + 1
        stems.append(candidate)
    return stems


# --------------------------------------------------------------------------------------------- depth PNG

def _check_depth(depth) -> np.ndarray:
    return check_unit_map(depth, "depth")


def _depth_image16(depth: np.ndarray) -> Image.Image:
    return Image.fromarray(depth_levels16(depth))  # uint16 -> mode "I;16"


def save_depth_png16(depth: np.ndarray, path: PathLike) -> Path:
    """Save a depth map as a 16-bit greyscale PNG (0 = far, 65535 = near), atomically.

    Args:
        depth: float (H, W) in [0, 1], 1 = near.
        path: a ``.png`` file.

    Returns:
        The path written.
    """
    path = _check_suffix(path, ".png")
    data = png_bytes(_depth_image16(_check_depth(depth)))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def load_depth_png16(path: PathLike) -> np.ndarray:
    """Read a depth PNG written by ``save_depth_png16`` (8-bit greyscale PNGs are read too).

    Args:
        path: the PNG file.

    Returns:
        float32 (H, W) in [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"depth file not found: {str(path)!r}")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                return depth_from_levels16(np.asarray(image))
            elif mode in ("L", "P", "RGB", "RGBA", "LA"):
                array = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
            else:
                raise ValueError(f"unsupported depth image mode {mode!r} in {str(path)!r}")
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable depth image: {str(path)!r} ({exc})") from exc
    return np.clip(array, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------- PSD

def export_psd(stack: LayerStack, path: PathLike, *, composite: Optional[Image.Image] = None) -> Path:
    """Write the stack as a layered Photoshop document.

    Args:
        stack: layers back to front.
        path: a ``.psd`` file.
        composite: the flattened image, if already computed (else ``stack.composite()``).

    Returns:
        The path written.
    """
    stack = _check_stack(stack)
    path = _check_suffix(path, ".psd")
    merged = np.asarray(_check_composite(composite, stack), dtype=np.float32) / 255.0
    from psd_tools import PSDImage  # only when a PSD is written

    psd = PSDImage.new("RGBA", stack.size)
    for index, layer in enumerate(stack):
        pixel = psd.create_pixel_layer(layer.rgba, name=f"layer {index}")
        pixel.name = layer.name
    group = psd.create_group(name=DEPTH_GROUP)
    for index, layer in enumerate(stack):
        grey = Image.fromarray(np.round(layer.depth * 255.0).astype(np.uint8), "L").convert("RGB")
        pixel = group.create_pixel_layer(grey, name=f"depth {index}")
        pixel.name = f"depth {layer.name}"
    group.visible = False
    with atomic_path(path) as tmp:
        _save_psd(psd, merged, tmp)
    return path


def _save_psd(psd, merged: np.ndarray, path: Path) -> None:
    """Save with ``merged`` (float (H, W, 3) in [0, 1]) as the document's merged image.

    ``PSDImage.save`` re-composites every layer to make that image, which costs more than all the rest of
    the export; the stack's own composite is the same picture (the background is opaque, every layer
    "normal" at full opacity), so it is stored directly through the same encoder save() uses. Should
    psd-tools' internals move, plain ``save()`` is used.
    """
    from psd_tools.api import numpy_io

    record = getattr(psd, "_record", None)
    image_data = getattr(record, "image_data", None)
    if not (hasattr(numpy_io, "encode_image_data") and hasattr(image_data, "set_data")):
        psd.save(str(path))
        return
    alpha = np.ones(merged.shape[:2] + (1,), np.float32)
    image_data.set_data(numpy_io.encode_image_data(psd, merged, alpha), record.header)
    with open(path, "wb") as f:
        record.write(f)


# --------------------------------------------------------------------------------------------- ORA

def export_ora(stack: LayerStack, path: PathLike, *, composite: Optional[Image.Image] = None) -> Path:
    """Write the stack as an OpenRaster file (opens in Krita, GIMP, MyPaint).

    Args:
        stack: layers back to front.
        path: a ``.ora`` file.
        composite: the flattened image, if already computed (else ``stack.composite()``).

    Returns:
        The path written.
    """
    stack = _check_stack(stack)
    path = _check_suffix(path, ".ora")
    merged = _check_composite(composite, stack)
    width, height = stack.size
    root = ElementTree.Element("image", {"version": "0.0.5", "w": str(width), "h": str(height),
                                         "xres": "72", "yres": "72"})
    top = ElementTree.SubElement(root, "stack", {"name": "root"})
    stems = _file_stems(stack.names)
    # stack.xml lists the topmost element first: the hidden depth stack, then the layers front to back.
    depth_stack = ElementTree.SubElement(top, "stack", {
        "name": DEPTH_GROUP, "visibility": "hidden", "opacity": "1.000", "x": "0", "y": "0",
        "composite-op": "svg:src-over", "isolation": "isolate"})
    entries: list[tuple[str, bytes]] = []
    for layer, stem in reversed(list(zip(stack, stems))):
        src = f"data/depth/{stem}.png"
        grey = Image.fromarray(np.round(layer.depth * 255.0).astype(np.uint8), "L")
        entries.append((src, png_bytes(grey)))
        ElementTree.SubElement(depth_stack, "layer", {
            "name": f"depth {layer.name}", "src": src, "x": "0", "y": "0", "opacity": "1.000",
            "visibility": "visible", "composite-op": "svg:src-over"})
    for layer, stem in reversed(list(zip(stack, stems))):
        src = f"data/{stem}.png"
        entries.append((src, png_bytes(layer.rgba)))
        ElementTree.SubElement(top, "layer", {
            "name": layer.name, "src": src, "x": "0", "y": "0", "opacity": "1.000",
            "visibility": "visible", "composite-op": "svg:src-over"})
    ElementTree.indent(root)
    xml = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    thumbnail = merged.copy()
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.LANCZOS)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            # The mimetype entry must come first and be stored so its text sits at a fixed offset
            # (file-type sniffing reads it without unzipping).
            _write_entry(archive, "mimetype", ORA_MIMETYPE, zipfile.ZIP_STORED)
            _write_entry(archive, "stack.xml", xml, zipfile.ZIP_DEFLATED)
            for name, data in entries:
                _write_entry(archive, name, data, zipfile.ZIP_STORED)  # PNGs are compressed already
            _write_entry(archive, "mergedimage.png", png_bytes(merged), zipfile.ZIP_STORED)
            _write_entry(archive, "Thumbnails/thumbnail.png", png_bytes(thumbnail), zipfile.ZIP_STORED)
    return path


def _write_entry(archive: zipfile.ZipFile, name: str, data: bytes, compression: int) -> None:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _check_composite(composite, stack: LayerStack) -> Image.Image:
    if composite is None:
        return stack.composite()
    if not isinstance(composite, Image.Image):
        raise ValueError(f"composite must be a PIL image, got {type(composite).__name__}")
    if composite.size != stack.size:
        raise ValueError(f"composite size {composite.size} does not match the stack {stack.size}")
    return composite.convert("RGB")


# --------------------------------------------------------------------------------------------- ZIP

def export_zip(stack: LayerStack, manifest: Mapping, path: PathLike, *,
               composite: Optional[Image.Image] = None, extras: Mapping[str, bytes] = {}) -> Path:
    """Write the stack as a ZIP of PNGs plus its manifest.

    Args:
        stack: layers back to front.
        manifest: JSON-serialisable facts to reproduce the stack (prompt, plan, seeds, backend, versions...),
            written as ``manifest.json`` unchanged.
        path: a ``.zip`` file.
        composite: the flattened image, if already computed (else ``stack.composite()``).
        extras: more files to store, by name in the archive (e.g. layers.depthpair.depth_pair_files).

    Returns:
        The path written. Inside: ``layers/<name>.png`` (RGBA), ``depth/<name>.png`` (16-bit grey,
        65535 = near), ``composite.png``, the extras, ``manifest.json``.
    """
    stack = _check_stack(stack)
    path = _check_suffix(path, ".zip")
    if not isinstance(manifest, Mapping):
        raise ValueError(f"manifest must be a dict, got {type(manifest).__name__}")
    try:
        manifest_text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"manifest is not JSON-serialisable: {exc}") from exc
    merged = _check_composite(composite, stack)
    stems = _file_stems(stack.names)
    clash = sorted(set(extras) & ({"composite.png", "manifest.json"} | {f"{d}/{s}.png" for s in stems
                                                                        for d in ("layers", "depth")}))
    if clash:
        raise ValueError(f"extra ZIP entries clash with the stack's own files: {clash}")
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for layer, stem in zip(stack, stems):
                _write_entry(archive, f"layers/{stem}.png", png_bytes(layer.rgba), zipfile.ZIP_STORED)
            for layer, stem in zip(stack, stems):
                depth = _depth_image16(_check_depth(layer.depth))
                _write_entry(archive, f"depth/{stem}.png", png_bytes(depth), zipfile.ZIP_STORED)
            _write_entry(archive, "composite.png", png_bytes(merged), zipfile.ZIP_STORED)
            for name, data in extras.items():
                _write_entry(archive, name, data, zipfile.ZIP_STORED)  # images, compressed already
            _write_entry(archive, "manifest.json", manifest_text.encode("utf-8"), zipfile.ZIP_DEFLATED)
    return path


# --------------------------------------------------------------------------------------------- versions

def package_versions() -> dict[str, str]:
    """Versions of Python and of the installed packages a stack depends on (nothing is imported).

    Returns:
        {"python": "3.11.7", "numpy": "...", ...}; packages that are not installed are left out.
    """
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
