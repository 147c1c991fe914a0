"""The new outputs of every stack: stack.glb, parallax.html and the ZIP's image + depth pair; choosing outputs with
--formats; the scene depth's definition."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pygltflib
import pytest
from PIL import Image

from helpers import make_test_stack
from layers.depthpair import depth_pair_files, scene_depth
from layers.export import export_zip
from layers.pipeline import EXPORT_FORMATS, GenerateOptions, load_result
from layers.stack import LayerStack, StackLayer
from test_cli import SEED_002, files_under, run_cli, sha


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("formats") / "all"
    proc = run_cli("generate", "--prompt-file", SEED_002, "--out", out, "--backend", "draft", "--seed", "2",
                   "--width", "128", "--height", "192", "--frames", "4")
    assert proc.returncode == 0, proc.stderr
    return out


def test_every_stack_gets_a_glb_a_web_page_and_a_depth_pair_by_default(generated):
    assert {"stack.glb", "parallax.html", "stack.psd", "stack.ora", "stack.zip", "parallax.mp4"} <= \
        files_under(generated)
    manifest = json.loads((generated / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["options"]["formats"] == list(EXPORT_FORMATS)
    assert manifest["files"]["glb"] == "stack.glb" and manifest["files"]["html"] == "parallax.html"
    gltf = pygltflib.GLTF2().load(str(generated / "stack.glb"))
    assert [n.name for n in gltf.nodes if n.mesh is not None] == ["background", "midground", "foreground"]
    html = (generated / "parallax.html").read_text(encoding="utf-8")
    assert html.count('<img class="lc-plane" src="data:image/png;base64,') == 3


def test_zip_holds_the_composite_and_its_depth_near_white_same_size(generated):
    result = load_result(generated)
    with zipfile.ZipFile(generated / "stack.zip") as z:
        names = set(z.namelist())
        assert {"composite.jpg", "composite_depth.jpg", "scene_depth.png"} <= names
        photo = Image.open(io.BytesIO(z.read("composite.jpg")))
        depth_jpg = Image.open(io.BytesIO(z.read("composite_depth.jpg")))
        depth16 = Image.open(io.BytesIO(z.read("scene_depth.png")))
        depth16.load()
    with Image.open(generated / "composite.png") as composite:
        assert photo.size == depth_jpg.size == depth16.size == composite.size
        assert photo.format == depth_jpg.format == "JPEG" and depth_jpg.mode == "L"
        assert np.abs(np.asarray(photo, np.int16) - np.asarray(composite, np.int16)).mean() < 4
    assert depth16.mode.startswith("I;16") or depth16.mode == "I"
    expected = scene_depth(result.stack)
    assert np.abs(np.asarray(depth16, np.float64) / 65535 - expected).max() < 1e-4
    grey = np.asarray(depth_jpg, np.float32) / 255
    assert np.abs(grey - expected).mean() < 0.02
    # Near is white: where the foreground covers the frame the pair is brighter than where only the background shows.
    fg = result.stack["foreground"].alpha > 0.9
    only_bg = (result.stack["midground"].alpha < 0.05) & (result.stack["foreground"].alpha < 0.05)
    assert grey[fg].mean() > grey[only_bg].mean() + 0.2


def test_formats_choose_the_outputs_and_regenerate_keeps_the_choice(tmp_path):
    out = tmp_path / "web"
    proc = run_cli("generate", "--prompt", "a hall of mirrors, a dancer, glass shards in front", "--out", out,
                   "--backend", "draft", "--width", "128", "--height", "192", "--formats", "glb,html",
                   "--glb-relief")
    assert proc.returncode == 0, proc.stderr
    written = files_under(out)
    assert {"stack.glb", "parallax.html", "composite.png", "manifest.json"} <= written
    assert not {"stack.psd", "stack.ora", "stack.zip", "parallax.mp4"} & written
    gltf = pygltflib.GLTF2().load(str(out / "stack.glb"))
    assert gltf.accessors[0].count == 65 * 97, "--glb-relief: 64 x 96 quads"
    before = {name: sha(out / name) for name in ("stack.glb", "layers/background.png")}
    proc = run_cli("regenerate", "--from", out, "--layer", "foreground", "--seed", "9")
    assert proc.returncode == 0, proc.stderr
    assert not {"stack.psd", "stack.zip"} & files_under(out)
    assert sha(out / "stack.glb") != before["stack.glb"], "the GLB shows the new foreground"
    assert sha(out / "layers/background.png") == before["layers/background.png"]


def test_an_unknown_format_is_one_line_exit_2_and_nothing_written(tmp_path):
    out = tmp_path / "never"
    proc = run_cli("generate", "--prompt", "a hill", "--out", out, "--backend", "draft", "--formats", "glb,obj")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "'obj'" in proc.stderr
    assert not out.exists()
    with pytest.raises(ValueError, match="'gif'"):
        GenerateOptions(formats=("psd", "gif"))


def test_scene_depth_is_the_depth_maps_composited_by_alpha():
    h, w = 4, 6
    back = Image.new("RGBA", (w, h), (10, 10, 10, 255))
    front = np.zeros((h, w, 4), np.uint8)
    front[:, :3, 3] = 255  # left half opaque
    front[:, 3:, 3] = 128  # right half about half transparent
    stack = LayerStack([StackLayer("back", back, np.full((h, w), 0.2, np.float32), 0.2),
                        StackLayer("front", Image.fromarray(front, "RGBA"), np.full((h, w), 0.8, np.float32), 0.8)])
    depth = scene_depth(stack)
    assert np.allclose(depth[:, :3], 0.8)  # an opaque layer's depth wins
    a = 128 / 255
    assert np.allclose(depth[:, 3:], 0.8 * a + 0.2 * (1 - a))  # half transparent: mixed by alpha


def test_zip_extras_cannot_replace_the_stacks_own_files(tmp_path):
    stack = make_test_stack(32, 48)
    extras = depth_pair_files(stack)
    with pytest.raises(ValueError, match="composite.png"):
        export_zip(stack, {}, tmp_path / "s.zip", extras={**extras, "composite.png": b"x"})
    assert list(tmp_path.iterdir()) == []
    export_zip(stack, {}, tmp_path / "s.zip", extras=extras)
    with zipfile.ZipFile(tmp_path / "s.zip") as z:
        assert z.read("composite_depth.jpg") == extras["composite_depth.jpg"]
