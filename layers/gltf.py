"""Export a LayerStack as a glTF 2.0 binary (``stack.glb``): one textured card per layer and a camera.

The scene, in glTF's units (metres) and axes (+Y up, the camera looks down -Z):

- a perspective camera at the origin, looking down -Z, vertical field of view ``2 * atan(1/2)`` (53.13°) and
  the stack's aspect ratio: at a distance ``d`` the camera sees a frame exactly ``d`` high and ``d * W / H`` wide;
- each layer is a card at distance ``card_distance(nearness)``: 1 m for nearness 1, 10 m for nearness 0, and
  linear in 1 / distance in between (so parallax, which goes as 1 / distance, is linear in nearness). A card is
  scaled by its distance to fill the frame exactly, so the camera sees the composite. Nearer layers are kept
  strictly nearer (at most 0.98 of the distance of the layer behind) so the stack order is the depth order;
- materials are unlit (``KHR_materials_unlit``) with the layer's RGBA PNG as base colour: alpha blended, opaque
  for a layer without transparency; double sided;
- ``relief=True``: each card is a grid (64 × 96 quads by default, the longer count along the longer side)
  whose vertices move along the camera's rays to the distance of the layer's own depth map, kept within half
  the gap to the neighbouring layers. Moving along a ray keeps every vertex where the camera sees it, so the
  camera still sees the composite, and any other viewpoint sees relief.

Written with pygltflib: a plain, typed model of the glTF 2.0 schema, so the camera, the unlit extension, the
alpha modes and the samplers are written exactly as the specification names them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from .export import _check_stack, _check_suffix, atomic_path, png_bytes
from .stack import LayerStack

__all__ = ["CAMERA_YFOV", "FAR_DISTANCE", "NEAR_DISTANCE", "GlbSettings", "card_distance", "card_distances",
           "export_glb"]

NEAR_DISTANCE = 1.0
"""Distance of a card of nearness 1, in metres."""
FAR_DISTANCE = 10.0
"""Distance of a card of nearness 0, in metres."""
CAMERA_YFOV = 2.0 * math.atan(0.5)
"""Vertical field of view, radians: the frame at distance d is d high."""
Z_NEAR, Z_FAR = 0.05, 100.0
_ORDER_GAP = 0.98

# glTF enums (the specification's WebGL constants).
_FLOAT, _USHORT, _UINT = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _CLAMP_TO_EDGE = 9729, 33071
_UNLIT = "KHR_materials_unlit"

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class GlbSettings:
    """How stack.glb is built."""

    relief: bool = False
    """Cards become grids displaced by each layer's depth map instead of flat quads."""
    columns: int = 64
    """Quads across the shorter side of a relief card, 1..1024."""
    rows: int = 96
    """Quads across the longer side of a relief card, 1..1024."""

    def __post_init__(self):
        for name, value in (("columns", self.columns), ("rows", self.rows)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
                raise ValueError(f"{name} must be a whole number 1..1024, got {value!r}")


def card_distance(nearness) -> np.ndarray:
    """Distance in metres from the camera of something of the given nearness (1 = near), linear in 1 / distance.

    Args:
        nearness: a float or array in [0, 1].

    Returns:
        float64 distance(s) in [NEAR_DISTANCE, FAR_DISTANCE].
    """
    n = np.clip(np.asarray(nearness, np.float64), 0.0, 1.0)
    return 1.0 / (1.0 / FAR_DISTANCE + (1.0 / NEAR_DISTANCE - 1.0 / FAR_DISTANCE) * n)


def card_distances(stack: LayerStack) -> list[float]:
    """Each layer's card distance, back to front, each strictly nearer than the one behind it."""
    out: list[float] = []
    for layer in stack:
        d = float(card_distance(layer.nearness))
        out.append(d if not out else min(d, out[-1] * _ORDER_GAP))
    return out


def export_glb(stack: LayerStack, path: PathLike, *, settings: GlbSettings = GlbSettings()) -> Path:
    """Write the stack as a glTF 2.0 binary: one mesh per layer, named after it, and the camera that sees the composite.

    Args:
        stack: layers back to front.
        path: a ``.glb`` file (written atomically).
        settings: flat cards or relief grids.

    Returns:
        The path written.
    """
    import pygltflib as g  # only when a GLB is written

    stack = _check_stack(stack)
    path = _check_suffix(path, ".glb")
    if not isinstance(settings, GlbSettings):
        raise ValueError(f"settings must be a GlbSettings, got {type(settings).__name__}")
    width, height = stack.size
    aspect = width / height
    distances = card_distances(stack)
    if settings.relief:
        short, long = settings.columns, settings.rows
        grid = (long, short) if width > height else (short, long)  # quads across, quads down
    else:
        grid = (1, 1)

    blob = bytearray()
    views: list = []

    def add_view(data: bytes, target=None) -> int:
        while len(blob) % 4:
            blob.append(0)
        views.append(g.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=target))
        blob.extend(data)
        return len(views) - 1

    accessors, meshes, materials, textures, images, nodes = [], [], [], [], [], []
    for index, (layer, distance) in enumerate(zip(stack, distances)):
        lo, hi = _relief_band(distances, index)
        positions, uvs, indices = _card_mesh(layer.depth if settings.relief else None, grid, aspect, distance, lo, hi)
        pos_view = add_view(positions.tobytes(), _ARRAY_BUFFER)
        accessors.append(g.Accessor(bufferView=pos_view, componentType=_FLOAT, count=len(positions), type="VEC3",
                                    min=positions.min(axis=0).tolist(), max=positions.max(axis=0).tolist()))
        uv_view = add_view(uvs.tobytes(), _ARRAY_BUFFER)
        accessors.append(g.Accessor(bufferView=uv_view, componentType=_FLOAT, count=len(uvs), type="VEC2"))
        index_type = _USHORT if len(positions) <= 65535 else _UINT
        index_data = indices.astype(np.uint16 if index_type == _USHORT else np.uint32)
        idx_view = add_view(index_data.tobytes(), _ELEMENT_ARRAY_BUFFER)
        accessors.append(g.Accessor(bufferView=idx_view, componentType=index_type, count=len(index_data),
                                    type="SCALAR"))
        image_view = add_view(png_bytes(layer.rgba))
        images.append(g.Image(bufferView=image_view, mimeType="image/png", name=layer.name))
        textures.append(g.Texture(sampler=0, source=index))
        opaque = layer.rgba.getextrema()[3][0] == 255
        materials.append(g.Material(
            name=layer.name,
            pbrMetallicRoughness=g.PbrMetallicRoughness(baseColorTexture=g.TextureInfo(index=index),
                                                        metallicFactor=0.0, roughnessFactor=1.0),
            alphaMode="OPAQUE" if opaque else "BLEND", doubleSided=True, extensions={_UNLIT: {}}))
        meshes.append(g.Mesh(name=layer.name, primitives=[g.Primitive(
            attributes=g.Attributes(POSITION=3 * index, TEXCOORD_0=3 * index + 1), indices=3 * index + 2,
            material=index)]))
        # The node sits at the card's centre (viewers sort transparent objects by their origin); the vertices are
        # relative to it.
        nodes.append(g.Node(name=layer.name, mesh=index, translation=[0.0, 0.0, -distance],
                            extras={"nearness": round(float(layer.nearness), 6), "distance": round(distance, 6)}))
    nodes.append(g.Node(name="camera", camera=0))

    gltf = g.GLTF2(
        asset=g.Asset(generator="Layercake", version="2.0"),
        scene=0,
        scenes=[g.Scene(name="stack", nodes=list(range(len(nodes))))],
        nodes=nodes, meshes=meshes, materials=materials, textures=textures, images=images,
        samplers=[g.Sampler(magFilter=_LINEAR, minFilter=_LINEAR, wrapS=_CLAMP_TO_EDGE, wrapT=_CLAMP_TO_EDGE)],
        cameras=[g.Camera(name="camera", type="perspective", perspective=g.Perspective(
            aspectRatio=aspect, yfov=CAMERA_YFOV, znear=Z_NEAR, zfar=Z_FAR))],
        accessors=accessors, bufferViews=views, buffers=[g.Buffer(byteLength=len(blob))],
        extensionsUsed=[_UNLIT],
    )
    gltf.set_binary_blob(bytes(blob))
    data = gltf.save_to_bytes()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            for chunk in data:
                f.write(chunk)
    return path


def _relief_band(distances: list[float], index: int) -> tuple[float, float]:
    """Nearest and farthest distance a layer's relief may reach: half way to its neighbours."""
    d = distances[index]
    far = (d + distances[index - 1]) / 2 if index > 0 else d * 1.5
    near = (d + distances[index + 1]) / 2 if index + 1 < len(distances) else max(d * 0.5, Z_NEAR * 4)
    return near, far


def _card_mesh(depth, grid: tuple[int, int], aspect: float, distance: float, near: float, far: float):
    """Vertices (x, y, z) relative to the card's centre (0, 0, -distance), texture coordinates and triangle indices.

    A vertex at image position (u, v) (0..1, v down) lies on the camera ray through that point of the frame, at
    `distance`, or with a depth map at the distance of the map's nearness there, clamped into [near, far].
    """
    nx, ny = grid
    u = np.linspace(0.0, 1.0, nx + 1)
    v = np.linspace(0.0, 1.0, ny + 1)
    uu, vv = np.meshgrid(u, v)
    if depth is None:
        dist = np.full(uu.shape, distance)
    else:
        small = Image.fromarray(np.asarray(depth, np.float32), "F").resize((nx + 1, ny + 1), Image.Resampling.BOX)
        dist = np.clip(card_distance(np.asarray(small, np.float64)), near, far)
    half_h = math.tan(CAMERA_YFOV / 2)
    positions = np.stack([(2 * uu - 1) * half_h * aspect * dist, (1 - 2 * vv) * half_h * dist, distance - dist],
                         axis=-1)
    uvs = np.stack([uu, vv], axis=-1)
    i = np.arange((nx + 1) * (ny + 1)).reshape(ny + 1, nx + 1)
    a, b, c, d = i[:-1, :-1], i[:-1, 1:], i[1:, :-1], i[1:, 1:]
    # Counter-clockwise seen from the camera: top-left, bottom-left, top-right; top-right, bottom-left, bottom-right.
    tris = np.stack([a, c, b, b, c, d], axis=-1).reshape(-1)
    return (positions.reshape(-1, 3).astype(np.float32), uvs.reshape(-1, 2).astype(np.float32),
            tris.astype(np.int64))
