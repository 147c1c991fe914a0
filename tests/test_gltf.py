"""stack.glb: what Khronos' validator, Blender and three.js make of it, and the camera's promise (the camera sees
exactly the composite)."""
from __future__ import annotations

import base64
import io
import math
import os

import numpy as np
import pygltflib
import pytest
from PIL import Image

from helpers import make_test_stack
from layers.gltf import CAMERA_YFOV, GlbSettings, card_distance, export_glb
from readers import NODE_MODULES, blender_objects, gltf_validate, launch_chromium, need_npm_package, psnr, \
    serve_folder

NAMES = ("фон", "中景", "前景 ✨")
SIZE = (160, 240)


@pytest.fixture(scope="module")
def stack():
    return make_test_stack(*SIZE, names=NAMES)


@pytest.fixture(scope="module")
def glbs(stack, tmp_path_factory):
    folder = tmp_path_factory.mktemp("glb")
    return {"flat": export_glb(stack, folder / "flat.glb"),
            "relief": export_glb(stack, folder / "relief.glb", settings=GlbSettings(relief=True))}


def world_vertices(gltf: pygltflib.GLTF2, node: pygltflib.Node) -> np.ndarray:
    primitive = gltf.meshes[node.mesh].primitives[0]
    accessor = gltf.accessors[primitive.attributes.POSITION]
    view = gltf.bufferViews[accessor.bufferView]
    data = gltf.binary_blob()[view.byteOffset: view.byteOffset + view.byteLength]
    return np.frombuffer(data, np.float32).reshape(-1, 3) + np.asarray(node.translation or [0, 0, 0], np.float32)


def test_one_named_mesh_per_layer_and_a_camera_that_sees_each_card_fill_the_frame(stack, glbs):
    gltf = pygltflib.GLTF2().load(str(glbs["flat"]))
    layer_nodes = [n for n in gltf.nodes if n.mesh is not None]
    assert [n.name for n in layer_nodes] == list(NAMES)
    assert [gltf.meshes[n.mesh].name for n in layer_nodes] == list(NAMES)
    (camera,) = gltf.cameras
    assert camera.type == "perspective"
    assert camera.perspective.aspectRatio == pytest.approx(SIZE[0] / SIZE[1])
    assert camera.perspective.yfov == pytest.approx(CAMERA_YFOV)
    (camera_node,) = [n for n in gltf.nodes if n.camera is not None]
    assert not camera_node.translation and not camera_node.rotation  # at the origin, looking down -Z
    assert gltf.materials[0].alphaMode == "OPAQUE" and {m.alphaMode for m in gltf.materials[1:]} == {"BLEND"}
    assert all("KHR_materials_unlit" in m.extensions for m in gltf.materials)

    tan = math.tan(camera.perspective.yfov / 2)
    distances = []
    for node, layer in zip(layer_nodes, stack):
        v = world_vertices(gltf, node)
        depth = -v[:, 2]
        distances.append(depth.mean())
        assert np.allclose(depth, card_distance(layer.nearness), rtol=1e-5)
        # Projected by the camera, the card's corners are the frame's corners.
        ndc_x = v[:, 0] / (depth * tan * camera.perspective.aspectRatio)
        ndc_y = v[:, 1] / (depth * tan)
        assert sorted(set(np.round(ndc_x, 5))) == [-1.0, 1.0] and sorted(set(np.round(ndc_y, 5))) == [-1.0, 1.0]
    assert distances[0] > distances[1] > distances[2], "nearer layers are nearer the camera"
    # Each texture is the layer's own RGBA, unchanged.
    for image, layer in zip(gltf.images, stack):
        view = gltf.bufferViews[image.bufferView]
        png = gltf.binary_blob()[view.byteOffset: view.byteOffset + view.byteLength]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(layer.rgba))


def test_relief_grids_follow_each_layers_depth_and_stay_on_the_cameras_rays(stack, glbs):
    gltf = pygltflib.GLTF2().load(str(glbs["relief"]))
    tan = math.tan(CAMERA_YFOV / 2)
    background = [n for n in gltf.nodes if n.mesh is not None][0]
    v = world_vertices(gltf, background)
    assert len(v) == 65 * 97, "64 x 96 quads on a portrait card"
    depth = -v[:, 2]
    ndc = np.stack([v[:, 0] / (depth * tan * SIZE[0] / SIZE[1]), v[:, 1] / (depth * tan)], axis=1)
    grid = ndc.reshape(97, 65, 2)
    # Every vertex is still where the camera sees its texel: a regular grid in the frame.
    assert np.allclose(grid[..., 0], np.linspace(-1, 1, 65)[None, :], atol=1e-4)
    assert np.allclose(grid[..., 1], np.linspace(1, -1, 97)[:, None], atol=1e-4)
    # The test background's depth map grows nearer towards the bottom: so does the relief.
    rows = depth.reshape(97, 65).mean(axis=1)
    assert rows[0] > rows[48] > rows[-1]


def test_khronos_validator_finds_no_errors_flat_and_relief(glbs):
    for kind, path in glbs.items():
        report = gltf_validate(path)
        issues = report["issues"]
        assert issues["numErrors"] == 0, (kind, issues["messages"])
        assert issues["numWarnings"] == 0, (kind, issues["messages"])
        assert report["info"]["drawCallCount"] == 3 and report["info"]["totalVertexCount"] > 0, report["info"]


def test_blender_imports_one_mesh_per_layer_and_the_camera(glbs):
    imported = blender_objects(*glbs.values())
    for kind, path in glbs.items():
        objects = imported[str(path)]
        meshes = [o for o in objects if o["type"] == "MESH"]
        assert sorted(o["name"] for o in meshes) == sorted(NAMES), (kind, objects)
        assert [o["name"] for o in objects if o["type"] == "CAMERA"] == ["camera"], (kind, objects)
        if kind == "relief":
            assert all(o["vertices"] == 65 * 97 for o in meshes), objects


_THREE_PAGE = """<!doctype html><html><body style="margin:0;background:#000">
<script type="importmap">{"imports": {"three": "./three/build/three.module.js",
                                      "three/addons/": "./three/examples/jsm/"}}</script>
<script type="module">
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
const [W, H] = [WIDTH, HEIGHT];
const renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
renderer.setPixelRatio(1);
renderer.setSize(W, H);
document.body.appendChild(renderer.domElement);
window.render = (file) => new Promise((resolve) => new GLTFLoader().load(file, (gltf) => {
  const camera = gltf.cameras[0];
  gltf.scene.background = new THREE.Color(0, 0, 0);
  gltf.scene.updateMatrixWorld(true);
  renderer.render(gltf.scene, camera);
  const meshes = [];
  gltf.scene.traverse((o) => { if (o.isMesh) meshes.push(o.name); });
  resolve({ png: renderer.domElement.toDataURL("image/png"), meshes, camera: camera.type });
}, undefined, (err) => resolve({ error: String(err) })));
</script></body></html>"""


def test_threejs_renders_the_composite_from_the_glb_camera(stack, glbs, tmp_path):
    three = need_npm_package("three")
    os.symlink(three, tmp_path / "three")
    for kind, path in glbs.items():
        (tmp_path / f"{kind}.glb").write_bytes(path.read_bytes())
    (tmp_path / "index.html").write_text(_THREE_PAGE.replace("WIDTH", str(SIZE[0])).replace("HEIGHT", str(SIZE[1])))
    composite = np.asarray(stack.composite())
    with serve_folder(tmp_path) as url, launch_chromium() as browser:
        page = browser.new_page(viewport={"width": SIZE[0] + 40, "height": SIZE[1] + 40})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/index.html")
        page.wait_for_function("typeof window.render === 'function'", timeout=30000)
        for kind in glbs:
            out = page.evaluate(f"window.render('{kind}.glb')")
            assert "error" not in out, out
            assert out["camera"] == "PerspectiveCamera" and len(out["meshes"]) == 3, out
            rendered = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["png"].split(",", 1)[1])))
                                  .convert("RGB"))
            Image.fromarray(rendered).save(tmp_path / f"three_{kind}.png")
            assert rendered.shape == composite.shape
            score = psnr(rendered, composite)
            assert score >= 30.0, f"{kind}: three.js render vs composite.png: {score:.1f} dB"
        assert not errors, errors


def test_bad_settings_and_paths_are_refused_and_nothing_is_written(stack, tmp_path):
    with pytest.raises(ValueError, match="columns"):
        GlbSettings(columns=0)
    with pytest.raises(ValueError, match="rows"):
        GlbSettings(rows=5000)
    with pytest.raises(ValueError, match=r"\.glb"):
        export_glb(stack, tmp_path / "stack.gltf")
    with pytest.raises(ValueError, match="does not exist"):
        export_glb(stack, tmp_path / "missing" / "stack.glb")
    assert list(tmp_path.iterdir()) == []
