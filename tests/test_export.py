"""Exports re-opened by other programs: PSD (psd-tools, ImageMagick), OpenRaster (pyora, zip + XML), ZIP;
16-bit depth PNGs; atomic writes; package versions."""
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

import layers.export as export
from helpers import figure_prior, make_test_stack
from layers.export import (atomic_path, export_ora, export_psd, export_zip, load_depth_png16, package_versions,
                           png_bytes, save_depth_png16, save_png)

W, H = 96, 144
NAMES = ("background", "midground", "foreground")
UNICODE_NAMES = ("fond ☁ lointain", "milieu — персонаж", "前景の瓦礫")


@pytest.fixture(scope="module")
def stack():
    return make_test_stack(W, H)


def full_layer_rgba(layer, size):
    """A psd-tools pixel layer as a full-canvas RGBA array (layers may be stored cropped to their bbox)."""
    canvas = np.zeros((size[1], size[0], 4), np.uint8)
    left, top, right, bottom = layer.bbox
    if right > left and bottom > top:
        canvas[top:bottom, left:right] = np.asarray(layer.topil().convert("RGBA"))
    return canvas


def folder_names(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# --------------------------------------------------------------------------------------------- PSD

def test_psd_layers_names_order_alpha_and_hidden_depth_group(stack, tmp_path):
    from psd_tools import PSDImage

    path = export_psd(stack, tmp_path / "stack.psd")
    assert path == tmp_path / "stack.psd"
    psd = PSDImage.open(path)
    assert psd.size == (W, H)
    top_level = list(psd)
    assert [layer.name for layer in top_level] == [*NAMES, "depth"]   # bottom to top = back to front
    assert [layer.kind for layer in top_level] == ["pixel", "pixel", "pixel", "group"]
    assert all(layer.visible for layer in top_level[:3])
    group = top_level[3]
    assert not group.visible
    assert [layer.name for layer in group] == [f"depth {name}" for name in NAMES]

    # Real transparency (not a mask): the figure's pixels are opaque, the rest of the midground is clear.
    mid = full_layer_rgba(top_level[1], psd.size)
    assert not top_level[1].has_mask()
    prior = figure_prior(W, H)
    assert mid[..., 3][prior > 0.9].min() == 255
    assert mid[..., 3][prior < 0.1].max() == 0
    assert np.array_equal(mid[..., 3], np.asarray(stack["midground"].rgba)[..., 3])
    background = full_layer_rgba(top_level[0], psd.size)
    assert background[..., 3].min() == 255

    # Depth maps are stored as grey layers.
    depth = full_layer_rgba(list(group)[2], psd.size)[..., :3].astype(float) / 255.0
    assert np.abs(depth[..., 0] - stack["foreground"].depth).max() <= 0.5 / 255 + 1e-6


def test_psd_uses_a_given_composite_as_its_merged_image(stack, tmp_path):
    from psd_tools import PSDImage

    flat = Image.new("RGB", (W, H), (9, 99, 199))
    psd = PSDImage.open(export_psd(stack, tmp_path / "stack.psd", composite=flat))
    assert psd.composite().convert("RGB").getpixel((5, 5)) == (9, 99, 199)


def test_psd_merged_image_is_the_stack_composite(stack, tmp_path):
    from psd_tools import PSDImage

    psd = PSDImage.open(export_psd(stack, tmp_path / "stack.psd"))
    expected = np.asarray(stack.composite()).astype(int)
    stored = np.asarray(psd.composite().convert("RGB")).astype(int)      # the saved merged image
    assert np.abs(stored - expected).max() <= 1
    redrawn = np.asarray(psd.composite(force=True).convert("RGB")).astype(int)  # from the layers
    assert np.abs(redrawn - expected).max() <= 2


def test_psd_keeps_unicode_layer_names(tmp_path):
    from psd_tools import PSDImage

    stack = make_test_stack(32, 48, names=UNICODE_NAMES)
    psd = PSDImage.open(export_psd(stack, tmp_path / "unicode.psd"))
    assert [layer.name for layer in psd][:3] == list(UNICODE_NAMES)
    assert [layer.name for layer in list(psd)[3]] == [f"depth {name}" for name in UNICODE_NAMES]


def require(program: str, package: str) -> str:
    """The path of a program the README's test command installs; a clear failure (not a skip) without it."""
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} is missing: install Debian's {package} (the README's test command does)")
    return found


def test_imagemagick_lists_the_psd_layers(stack, tmp_path):
    require("identify", "imagemagick")
    path = export_psd(stack, tmp_path / "stack.psd")
    out = subprocess.run(["identify", "-format", "%s|%l|%wx%h\n", str(path)], capture_output=True, text=True,
                         check=True, timeout=60).stdout.splitlines()
    rows = [line.split("|") for line in out if line]
    assert rows[0][2] == f"{W}x{H}"                    # [0] is the merged composite
    assert [row[1] for row in rows[1:4]] == list(NAMES)
    assert [row[1] for row in rows[4:]] == [f"depth {name}" for name in NAMES]


# --------------------------------------------------------------------------------------------- ORA

def test_ora_follows_the_layout_spec(stack, tmp_path):
    path = export_ora(stack, tmp_path / "stack.ora")
    raw = path.read_bytes()
    # mimetype: first entry, stored uncompressed, so its text sits at offset 38 for file-type sniffing.
    assert raw[30:38] == b"mimetype" and raw[38:54] == b"image/openraster"
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        assert infos[0].filename == "mimetype" and infos[0].compress_type == zipfile.ZIP_STORED
        assert archive.read("mimetype") == b"image/openraster"
        assert archive.testzip() is None
        names = set(archive.namelist())
        assert {"stack.xml", "mergedimage.png", "Thumbnails/thumbnail.png"} <= names
        root = ElementTree.fromstring(archive.read("stack.xml"))
        assert root.tag == "image" and (root.get("w"), root.get("h")) == (str(W), str(H))
        top = root.find("stack")
        children = list(top)
        # Topmost first: the hidden depth stack, then the layers front to back.
        assert children[0].tag == "stack" and children[0].get("name") == "depth"
        assert children[0].get("visibility") == "hidden"
        layers = [child for child in children if child.tag == "layer"]
        assert [layer.get("name") for layer in layers] == list(reversed(NAMES))
        for element in layers + list(children[0]):
            assert element.get("src") in names
            assert (element.get("x"), element.get("y")) == ("0", "0")
            assert float(element.get("opacity")) == 1.0 and element.get("visibility") == "visible"
            with Image.open(io.BytesIO(archive.read(element.get("src")))) as image:
                assert image.size == (W, H)
        mid_src = layers[1].get("src")
        with Image.open(io.BytesIO(archive.read(mid_src))) as image:
            assert image.mode == "RGBA"
            assert np.array_equal(np.asarray(image), np.asarray(stack["midground"].rgba))
        with Image.open(io.BytesIO(archive.read("mergedimage.png"))) as merged:
            assert merged.size == (W, H)
            assert np.abs(np.asarray(merged.convert("RGB")).astype(int)
                          - np.asarray(stack.composite())).max() <= 1
        with Image.open(io.BytesIO(archive.read("Thumbnails/thumbnail.png"))) as thumb:
            assert max(thumb.size) <= 256
            assert thumb.size[0] / thumb.size[1] == pytest.approx(W / H, rel=0.05)


def test_ora_opens_in_krita_and_flattens_to_our_composite(stack, tmp_path):
    """Krita itself (headless, on a virtual screen) opens the file and exports its flattened image."""
    krita = require("krita", "krita")
    xvfb_run = require("xvfb-run", "xvfb")
    path = export_ora(stack, tmp_path / "stack.ora")
    out = tmp_path / "from_krita.png"
    proc = subprocess.run([xvfb_run, "-a", krita, "--nosplash", str(path), "--export", "--export-filename", str(out)],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "QT_QPA_PLATFORM": "xcb"})
    assert out.exists(), f"Krita did not export the ORA (exit {proc.returncode}): {proc.stderr[-1500:]}"
    flat = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    ours = np.asarray(stack.composite(), dtype=np.int16)
    assert flat.shape == ours.shape
    assert np.abs(flat - ours).max() <= 2, "Krita's flattening matches ours; the hidden depth maps stay hidden"


def test_ora_reopens_in_pyora_with_names_order_and_pixels(tmp_path):
    from pyora import Project

    stack = make_test_stack(300, 450, names=UNICODE_NAMES)
    project = Project.load(str(export_ora(stack, tmp_path / "stack.ora")))
    assert project.dimensions == (300, 450)
    children = project.children
    assert [c.name for c in children] == ["depth", *reversed(UNICODE_NAMES)]
    assert children[0].is_group and not children[0].visible
    assert [c.name for c in children[0].children] == [f"depth {n}" for n in reversed(UNICODE_NAMES)]
    front = np.asarray(children[1].get_image_data())
    assert np.array_equal(front, np.asarray(stack[UNICODE_NAMES[2]].rgba))
    thumb = Project.extract_thumbnail(str(tmp_path / "stack.ora"), pil=True)
    assert max(thumb.size) == 256


# --------------------------------------------------------------------------------------------- ZIP

def test_zip_holds_layers_16bit_depth_composite_and_manifest(stack, tmp_path):
    manifest = {"prompt": "a hall of columns, a figure, débris ☄", "seed": 7, "layers": list(NAMES)}
    path = export_zip(stack, manifest, tmp_path / "stack.zip")
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted(
            [f"layers/{n}.png" for n in NAMES] + [f"depth/{n}.png" for n in NAMES]
            + ["composite.png", "manifest.json"])
        assert json.loads(archive.read("manifest.json").decode("utf-8")) == manifest
        for layer in stack:
            with Image.open(io.BytesIO(archive.read(f"layers/{layer.name}.png"))) as image:
                assert image.mode == "RGBA"
                assert np.array_equal(np.asarray(image), np.asarray(layer.rgba))
            with Image.open(io.BytesIO(archive.read(f"depth/{layer.name}.png"))) as image:
                assert image.mode.startswith("I;16") or image.mode == "I"
                depth = np.asarray(image, dtype=np.float64) / 65535.0
                assert np.abs(depth - layer.depth).max() <= 0.5 / 65535 + 1e-6
        with Image.open(io.BytesIO(archive.read("composite.png"))) as image:
            assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(stack.composite()))


def test_zip_uses_a_given_composite_and_safe_unique_file_names(tmp_path):
    stack = make_test_stack(32, 48, names=("sky/../../etc", "Sky", "sky"))
    composite = Image.new("RGB", (32, 48), (1, 2, 3))
    path = export_zip(stack, {}, tmp_path / "odd.zip", composite=composite)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert all(".." not in n and not n.startswith("/") for n in names)
        layer_files = [n for n in names if n.startswith("layers/")]
        assert len(set(n.lower() for n in layer_files)) == 3
        with Image.open(io.BytesIO(archive.read("composite.png"))) as image:
            assert image.getpixel((0, 0)) == (1, 2, 3)


def test_manifest_that_is_not_json_is_refused_before_writing(stack, tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        export_zip(stack, {"seeds": {1, 2}}, tmp_path / "x.zip")
    with pytest.raises(ValueError, match="JSON"):
        export_zip(stack, {"nearness": float("nan")}, tmp_path / "x.zip")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- depth PNG

def test_depth_png16_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    depth = rng.random((37, 53)).astype(np.float32)
    depth[0, 0], depth[0, 1] = 0.0, 1.0
    path = save_depth_png16(depth, tmp_path / "d.png")
    with Image.open(path) as image:
        assert image.mode.startswith("I;16") or image.mode == "I"
        assert image.size == (53, 37)
    back = load_depth_png16(path)
    assert back.dtype == np.float32 and back.shape == depth.shape
    assert np.abs(back - depth).max() <= 0.5 / 65535 + 1e-6
    assert back[0, 0] == 0.0 and back[0, 1] == 1.0


def test_depth_png16_reads_8bit_maps_and_refuses_bad_input(tmp_path):
    Image.fromarray(np.full((4, 5), 255, np.uint8), "L").save(tmp_path / "eight.png")
    assert load_depth_png16(tmp_path / "eight.png").min() == 1.0
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png"):
        load_depth_png16(tmp_path / "text.png")
    with pytest.raises(ValueError, match="not found"):
        load_depth_png16(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        save_depth_png16(np.full((4, 4), 2.0), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="2-D"):
        save_depth_png16(np.zeros((4, 4, 3)), tmp_path / "bad.png")


# --------------------------------------------------------------------------------------------- PNG

def test_png_is_encoded_once_and_re_encoded_when_the_pixels_change(tmp_path):
    image = make_test_stack(40, 60)["midground"].rgba.copy()
    first = png_bytes(image)
    assert png_bytes(image.copy()) is first          # same pixels: the stored encoding
    image.putpixel((0, 0), (1, 2, 3, 4))             # changed in place: encoded afresh
    changed = png_bytes(image)
    assert changed != first
    with Image.open(io.BytesIO(changed)) as back:
        assert back.getpixel((0, 0)) == (1, 2, 3, 4)
    path = save_png(image, tmp_path / "layer.png")
    assert path.read_bytes() == changed and folder_names(tmp_path) == ["layer.png"]
    with pytest.raises(ValueError, match=r"\.png"):
        save_png(image, tmp_path / "layer.jpg")


# --------------------------------------------------------------------------------------------- atomic writes

def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".bin" and tmp != target
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    assert folder_names(tmp_path) == ["out.bin"]
    assert (target.stat().st_mode & 0o777) == 0o666 & ~_umask()

    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"new"
    assert folder_names(tmp_path) == ["out.bin"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_psd_export_leaves_no_file_and_no_temp(stack, tmp_path, monkeypatch):
    def disk_full_halfway(psd, merged, path):
        path.write_bytes(b"8BPS" + b"\0" * 100)   # a half-written document ...
        raise OSError("No space left on device")  # ... then the disk fills up

    monkeypatch.setattr(export, "_save_psd", disk_full_halfway)
    with pytest.raises(OSError, match="No space"):
        export_psd(stack, tmp_path / "stack.psd")
    assert folder_names(tmp_path) == []


@pytest.mark.parametrize("kind", ["ora", "zip"])
def test_failed_archive_export_leaves_the_previous_file_and_no_temp(stack, tmp_path, monkeypatch, kind):
    target = tmp_path / f"stack.{kind}"
    target.write_bytes(b"previous export")
    real_writestr = zipfile.ZipFile.writestr
    calls = []

    def fail_on_third_entry(self, info, data, *args, **kwargs):
        calls.append(info)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return real_writestr(self, info, data, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail_on_third_entry)
    with pytest.raises(OSError, match="No space"):
        if kind == "ora":
            export_ora(stack, target)
        else:
            export_zip(stack, {}, target)
    assert target.read_bytes() == b"previous export"
    assert folder_names(tmp_path) == [target.name]


def test_missing_or_unusable_output_folder_is_a_clear_error(stack, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        export_psd(stack, tmp_path / "nowhere" / "stack.psd")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        export_ora(stack, tmp_path / "file" / "stack.ora")
    (tmp_path / "dir.zip").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        export_zip(stack, {}, tmp_path / "dir.zip")


def test_unwritable_output_folder_is_a_clear_error(stack, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            # Running as root: permissions do not stop us, so make creating the file fail the way a
            # read-only folder does.
            real_open = os.open

            def read_only(path, flags, *args, **kwargs):
                if Path(path).parent == locked and flags & os.O_CREAT:
                    raise PermissionError(13, "Permission denied", str(path))
                return real_open(path, flags, *args, **kwargs)

            monkeypatch.setattr(os, "open", read_only)
        with pytest.raises(ValueError, match="not writable.*locked.*Permission denied"):
            export_psd(stack, locked / "stack.psd")
        monkeypatch.undo()
        assert folder_names(locked) == []
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("call, message", [
    (lambda tmp: export_psd("not a stack", tmp / "a.psd"), "LayerStack"),
    (lambda tmp: export_psd(make_test_stack(8, 8), tmp / "a.png"), r"\.psd"),
    (lambda tmp: export_ora(make_test_stack(8, 8), tmp / "a.zip"), r"\.ora"),
    (lambda tmp: export_zip(make_test_stack(8, 8), {}, tmp / "a.ora"), r"\.zip"),
    (lambda tmp: export_zip(make_test_stack(8, 8), ["not", "a", "dict"], tmp / "a.zip"), "dict"),
    (lambda tmp: export_ora(make_test_stack(8, 8), tmp / "a.ora", composite=Image.new("RGB", (9, 9))), "size"),
])
def test_bad_export_arguments_are_refused(tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- versions

def test_package_versions_lists_installed_packages_without_importing_them():
    from importlib import metadata

    versions = package_versions()
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    for name in ("numpy", "pillow", "psd-tools", "imageio", "rembg", "onnxruntime"):
        assert versions[name] == metadata.version(name)
    code = ("import sys, layers.export as e; v = e.package_versions(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'rembg') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    assert out == "[]"
