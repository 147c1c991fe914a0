"""Reading a stack folder's manifest.json without trusting it: one schema, checked before anything is read.

A stack folder is shared (zipped, mailed, downloaded), so its manifest is user input. `read_manifest` checks it
whole before the caller opens a single layer file or writes anything:

- the file is at most MAX_MANIFEST_BYTES and nested at most MAX_NESTING deep (checked on the text, before parsing);
- it is a JSON object with the keys and types of MANIFEST_SCHEMA;
- its layers are our own names, once each, back to front: LAYER_NAMES matching the plan's for a stack made from
  a prompt; for a picture's stack (``"source": "picture"``, no plan, its size given) the names
  ``decompose.layer_names`` gives for 2..6 layers;
- every file it names is a relative path that resolves, symlinks followed, to a regular file inside the folder.

Paths written later come from our own layer names, never from the manifest.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .plan import LAYER_NAMES

MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""A real manifest is a few kB (the prompt is at most 20 000 characters); this leaves room and refuses a flood."""
MAX_NESTING = 16
"""Deepest nesting of objects and lists; ours is 4 deep."""
LAYER_FILE_KEYS = ("file", "depth_file", "prior_file")

_OBJECT, _LIST, _STR, _NUM, _INT = "object", "list", "text", "number", "whole number"

# key -> (kind, required). Only what is read back is required; the rest is informative and type-checked.
MANIFEST_SCHEMA: dict[str, tuple[str, bool]] = {
    "layercake": (_STR, False),
    "prompt": (_STR, False),
    "seed": (_INT, False),
    "width": (_INT, False),
    "height": (_INT, False),
    "plan": (_OBJECT, False),
    "source": (_STR, False),
    "options": (_OBJECT, True),
    "layers": (_LIST, True),
    "render": (_OBJECT, False),
    "depth_source": (_STR, False),
    "files": (_OBJECT, False),
}
LAYER_SCHEMA: dict[str, tuple[str, bool]] = {
    "name": (_STR, True),
    "file": (_STR, True),
    "depth_file": (_STR, True),
    "prior_file": (_STR, True),
    "nearness": (_NUM, True),
    "seed": (_INT, False),
}

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")


@dataclass(frozen=True)
class LayerFiles:
    """One layer's entry, checked: its name (one of our own) and its files, resolved inside the folder."""

    name: str
    image: Path
    depth: Path
    prior: Path
    nearness: float


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: the parsed JSON and its layers' files."""

    data: dict
    layers: tuple[LayerFiles, ...]


def read_manifest(folder, *, need_files: bool = True) -> Manifest:
    """Read and check `folder`/manifest.json (see the module docstring for what is checked).

    Args:
        folder: a stack folder.
        need_files: every file the manifest names must be there; False: a missing one is allowed (is this folder
            ours, though not complete), one leading outside the folder never is.

    Returns:
        The checked Manifest.

    Raises:
        ValueError: one line naming the first problem found.
    """
    root = Path(folder)
    path = root / MANIFEST_NAME
    if not path.is_file() or path.is_symlink():
        raise ValueError(f"{root} is not a Layercake output folder (no manifest.json)")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ValueError(f"{path} is {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} could not be read: {exc}") from None
    depth = nesting_depth(text)
    if depth > MAX_NESTING:
        raise ValueError(f"{path} is nested {depth} deep; a manifest is at most {MAX_NESTING} deep")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    return check_manifest(data, root, need_files=need_files)


def check_manifest(data: Any, folder, *, need_files: bool = True) -> Manifest:
    """Check parsed manifest data against the schema; resolve its layer files inside `folder` (which must be there,
    unless `need_files` is False)."""
    root = Path(folder)
    _check_fields(data, MANIFEST_SCHEMA, "manifest")
    layers = data["layers"]
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in layers]
    expected = _expected_names(data, len(names))
    if names != list(expected):
        raise ValueError(f"manifest layers must be {', '.join(expected)} (back to front), got "
                         f"{', '.join(repr(n) for n in names) or 'none'}")
    if data.get("source") != "picture":
        _check_plan_names(data)
    base = root.resolve()
    checked = []
    for entry in layers:
        _check_fields(entry, LAYER_SCHEMA, f"manifest layer {entry['name']}")
        nearness = float(entry["nearness"])
        if not 0.0 <= nearness <= 1.0:
            raise ValueError(f"manifest layer {entry['name']} nearness must be in [0, 1], got {nearness}")
        image, depth, prior = (inside(base, entry[key], f"manifest layer {entry['name']} {key}",
                                      must_exist=need_files) for key in LAYER_FILE_KEYS)
        checked.append(LayerFiles(name=entry["name"], image=image, depth=depth, prior=prior, nearness=nearness))
    return Manifest(data=data, layers=tuple(checked))


def _expected_names(data: dict, count: int) -> tuple[str, ...]:
    """The layer names a manifest must list: a prompt's three planned layers, or a picture's 2..6 bands."""
    if data.get("source") == "picture":
        from .decompose import MAX_LAYERS, MIN_LAYERS, layer_names

        if data.get("plan") is not None:
            raise ValueError("manifest of a picture's stack must have no plan")
        for key in ("width", "height"):
            if not _is(data.get(key), _INT) or data[key] < 1:
                raise ValueError(f"manifest of a picture's stack needs its {key} as a whole number")
        if not MIN_LAYERS <= count <= MAX_LAYERS:
            raise ValueError(f"manifest of a picture's stack must have {MIN_LAYERS}..{MAX_LAYERS} layers, got {count}")
        return layer_names(count)
    if not isinstance(data.get("plan"), dict):
        raise ValueError("manifest has no 'plan'")
    return LAYER_NAMES


def _check_plan_names(data: dict) -> None:
    plan_layers = data["plan"].get("layers")
    plan_names = [e.get("name") if isinstance(e, dict) else None for e in plan_layers] \
        if isinstance(plan_layers, list) else None
    if plan_names != list(LAYER_NAMES):
        raise ValueError(f"manifest plan layers must be {', '.join(LAYER_NAMES)}, got {plan_names!r}")


def inside(base: Path, relative: str, what: str, *, must_exist: bool = True) -> Path:
    """`relative` resolved under the folder `base` (already resolved), refused unless it stays inside it.

    No absolute path, no "..", no drive or backslash tricks; symlinks are followed and must land inside too; the
    target must be a regular file (or, with must_exist False, nothing yet).
    """
    rel = PurePosixPath(relative)
    if (not relative or "\\" in relative or "\0" in relative or rel.is_absolute() or ".." in rel.parts
            or re.match(r"^[A-Za-z]:", relative)):
        raise ValueError(f"{what} must be a path inside the folder, got {relative[:200]!r}")
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"{what} {relative[:200]!r} points outside the folder")
    if not target.is_file() and (must_exist or os.path.lexists(target)):
        raise ValueError(f"{what} {relative[:200]!r} is missing or not a file")
    return target


def nesting_depth(text: str) -> int:
    """Deepest nesting of [ and { in JSON text, counted outside strings (without parsing it)."""
    deepest = level = 0
    for ch in _BRACKETS.findall(_STRINGS.sub("", text)):
        if ch in "[{":
            level += 1
            deepest = max(deepest, level)
        elif ch in "]}":
            level -= 1
    return deepest


def _check_fields(obj: Any, schema: dict[str, tuple[str, bool]], what: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(obj).__name__}")
    for key, (kind, required) in schema.items():
        if key not in obj or (obj[key] is None and not required):  # a picture's stack has no prompt or seed
            if required:
                raise ValueError(f"{what} has no {key!r}")
            continue
        if not _is(obj[key], kind):
            raise ValueError(f"{what} {key!r} must be a {kind}, got {str(obj[key])[:80]!r}")


def _is(value: Any, kind: str) -> bool:
    if kind == _OBJECT:
        return isinstance(value, dict)
    if kind == _LIST:
        return isinstance(value, list)
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


__all__ = ["MANIFEST_NAME", "MAX_MANIFEST_BYTES", "MAX_NESTING", "LayerFiles", "Manifest", "check_manifest",
           "inside", "nesting_depth", "read_manifest"]
