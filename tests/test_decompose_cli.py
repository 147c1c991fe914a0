"""python -m layers decompose / regenerate on a decomposed stack: the files, the round trip, every bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layers.cli import main
from layers.pipeline import OUTPUT_NAMES, load_result, regenerate_layer, write_outputs


def files_under(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """The motorcycle at half size, its disparity as a 16-bit PNG (value / 256 = px) and as .npy."""
    from skimage import data

    root = tmp_path_factory.mktemp("picture")
    left, _, disparity = data.stereo_motorcycle()
    img = Image.fromarray(left).resize((370, 250), Image.BILINEAR)
    img.save(root / "moto.png")
    disp = np.where(np.isfinite(disparity), disparity, 0)[::2, ::2][:250, :370]
    Image.fromarray((disp * 256).astype(np.uint16)).save(root / "disp.png")
    np.save(root / "disp.npy", disp.astype(np.float32))
    return root


@pytest.fixture(scope="module")
def decomposed(picture, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(["decompose", "--image", str(picture / "moto.png"), "--depth-map", str(picture / "disp.png"),
                 "--out", str(out), "--backend", "draft", "--frames", "4"])
    assert code == 0
    return out


def test_decompose_writes_the_same_files_as_generate(decomposed, picture):
    out = decomposed
    for name in OUTPUT_NAMES.values():
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "picture" and manifest["plan"] is None
    assert [layer["name"] for layer in manifest["layers"]] == ["background", "midground", "foreground"]
    assert len(manifest["thresholds"]) == 2
    assert manifest["options"]["displacement"] == 1.0  # per-pixel parallax by default for a picture
    for layer in manifest["layers"]:
        assert (out / layer["file"]).is_file() and (out / layer["depth_file"]).is_file()
    # The layers composite back to the picture.
    composite = np.asarray(Image.open(out / "composite.png"), np.float64)
    original = np.asarray(Image.open(picture / "moto.png"), np.float64)
    mse = max(np.mean((composite - original) ** 2), 1e-12)
    assert 10 * np.log10(255 ** 2 / mse) >= 40.0
    # A filled background: its depth PNG holds depth behind the motorcycle too (16-bit, no holes).
    depth = np.asarray(Image.open(out / "depth/background.png"))
    assert depth.dtype == np.uint16 and depth.max() < 65535 * 0.3


def test_layers_auto_and_npy_depth(picture, tmp_path, capsys):
    out = tmp_path / "auto"
    code = main(["decompose", "--image", str(picture / "moto.png"), "--depth-map", str(picture / "disp.npy"),
                 "--out", str(out), "--backend", "draft", "--layers", "auto", "--no-video"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["render"]["decompose"]["layer_count"] == "auto"
    assert len(manifest["layers"]) == len(manifest["thresholds"]) + 1 >= 2
    assert not (out / "parallax.mp4").exists()


def test_depth_map_of_another_size_is_resized_and_said(picture, tmp_path, capsys):
    Image.open(picture / "disp.png").resize((185, 125)).save(tmp_path / "small.png")
    code = main(["decompose", "--image", str(picture / "moto.png"), "--depth-map", str(tmp_path / "small.png"),
                 "--out", str(tmp_path / "o"), "--backend", "draft", "--no-video"])
    assert code == 0
    assert "resized" in capsys.readouterr().err


class SeedPainter:
    """A real Repainter: fills each mask with a colour drawn from the request's seed."""

    name = "seed-painter"

    def repaint(self, requests, settings, progress=None):
        from layers.backends.base import RenderResult

        images = []
        for req in requests:
            arr = np.asarray(req.image.convert("RGB")).copy()
            arr[req.mask > 0.5] = np.random.default_rng(req.seed).integers(0, 256, 3)
            images.append(Image.fromarray(arr))
        return RenderResult(images=images, info={"backend": self.name})


def test_regenerate_repaints_one_layer_and_keeps_the_others_byte_identical(decomposed, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(decomposed, out)
    before = {p: (out / p).read_bytes() for p in ("layers/midground.png", "layers/foreground.png",
                                                  "depth/background.png", "layers/background.png")}
    # Offline there is nothing to re-inpaint with: one line, exit 2, nothing changed.
    assert main(["regenerate", "--from", str(out), "--layer", "background", "--backend", "draft"]) == 2
    assert "model mode" in capsys.readouterr().err
    assert all((out / p).read_bytes() == data for p, data in before.items())
    # Model mode (a real Repainter): the background's hidden part changes, nothing else does.
    result = regenerate_layer(load_result(out), "background", SeedPainter(), seed=11)
    write_outputs(result, out)
    for p in ("layers/midground.png", "layers/foreground.png", "depth/background.png"):
        assert (out / p).read_bytes() == before[p], p
    new_bg = np.asarray(Image.open(out / "layers/background.png").convert("RGB"))
    old_bg = np.asarray(Image.open(decomposed / "layers/background.png").convert("RGB"))
    changed = (new_bg != old_bg).any(-1)
    assert changed.any()
    reloaded = load_result(out)
    from layers.decompose import hidden_mask

    assert not changed[~hidden_mask(reloaded.stack, "background")].any()  # what shows is untouched
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["render"]["decompose"]["seeds"]["background"] == 11
    assert main(["regenerate", "--from", str(out), "--layer", "sky", "--backend", "draft"]) == 2
    assert "no layer named 'sky'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bad_cases(picture, tmp_path_factory) -> dict:
    """Every bad input, built once."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "not_image.png").write_text("this is not a png")
    data = (picture / "moto.png").read_bytes()
    (tmp / "truncated.png").write_bytes(data[: len(data) // 3])
    Image.new("1", (20_000, 20_000)).save(tmp / "bomb.png")
    Image.new("RGB", (300, 20), (9, 9, 9)).save(tmp / "tiny.png")
    Image.open(picture / "moto.png").convert("RGBA").save(tmp / "rgba.png")
    Image.open(picture / "moto.png").convert("CMYK").save(tmp / "cmyk.jpg")
    Image.open(picture / "disp.png").save(tmp / "grey16.png")
    Image.new("L", (370, 250), 128).save(tmp / "flat.png")
    img, depth = ["--image", picture / "moto.png"], ["--depth-map", picture / "disp.png"]
    return {
        "not an image": (["--image", tmp / "not_image.png", *depth], "not an image"),
        "truncated": (["--image", tmp / "truncated.png", *depth], "could not be read"),
        "decompression bomb": (["--image", tmp / "bomb.png", *depth], "too large"),
        "too small": (["--image", tmp / "tiny.png", *depth], "at least"),
        "rgba": (["--image", tmp / "rgba.png", *depth], "transparency"),
        "cmyk": (["--image", tmp / "cmyk.jpg", *depth], "CMYK"),
        "16-bit": (["--image", tmp / "grey16.png", *depth], "16-bit"),
        "constant depth": ([*img, "--depth-map", tmp / "flat.png"], "nothing to separate"),
        "depth not an image": ([*img, "--depth-map", tmp / "not_image.png"], "not an image"),
        "missing image": (["--image", tmp / "nope.png", *depth], "not found"),
        "nine layers": ([*img, *depth, "--layers", "9"], "2..6"),
        "no depth and no estimator": ([*img, "--depth-model", str(tmp / "no-such-model")], "--depth-map"),
    }


@pytest.mark.parametrize("case", ["not an image", "truncated", "decompression bomb", "too small", "rgba", "cmyk",
                                  "16-bit", "constant depth", "depth not an image", "missing image", "nine layers",
                                  "no depth and no estimator"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, bad_cases, tmp_path, capsys):
    args, needle = bad_cases[case]
    before = files_under(tmp_path)
    code = main(["decompose", *map(str, args), "--out", str(tmp_path / "out"), "--backend", "draft"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert files_under(tmp_path) == before


def test_generated_stacks_take_per_pixel_parallax_as_an_option(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", "--prompt", "a hall with two figures", "--width", "128", "--height", "192",
                 "--out", str(out), "--backend", "draft", "--frames", "3", "--displacement", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["displacement"] == 1.0 and (out / "parallax.mp4").stat().st_size > 0
    assert main(["generate", "--prompt", "a hall", "--out", str(tmp_path / "bad"), "--backend", "draft",
                 "--displacement", "2"]) == 2
    assert "displacement" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("change, needle", [
    (lambda m: m["layers"][1].update(name="../../pwned"), "manifest layers must be background, midground, foreground"),
    (lambda m: m["layers"][0].update(file="/etc/passwd"), "must be a path inside the folder"),
    (lambda m: m.update(width="wide"), "'width' must be a whole number"),
    (lambda m: m.pop("height"), "needs its height as a whole number"),
    (lambda m: m.update(plan={"layers": []}), "must have no plan"),
])
def test_a_tampered_picture_stack_is_refused_in_one_line(decomposed, tmp_path, capsys, change, needle):
    import shutil

    out = tmp_path / "received"
    shutil.copytree(decomposed, out)
    manifest = json.loads((out / "manifest.json").read_text())
    change(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["regenerate", "--from", str(out), "--layer", "background", "--backend", "draft"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not list(tmp_path.parent.rglob("pwned*"))


def _paint_red_on_the_bike(layer_png: Path) -> float:
    """Share of the motorcycle's area (known disparity >= 35 px, eroded) where a layer shows its red paint."""
    from scipy import ndimage
    from skimage import data

    disparity = data.stereo_motorcycle()[2][::2, ::2][:250, :370]
    bike = ndimage.binary_erosion(np.nan_to_num(disparity, nan=0.0, posinf=0.0) >= 35, iterations=3)
    rgb = np.asarray(Image.open(layer_png).convert("RGB"), np.int32)
    red = (rgb[..., 0] > rgb[..., 1] + 40) & (rgb[..., 0] > rgb[..., 2] + 40)
    return float(red[bike].mean())


def test_unknown_zero_keeps_the_bike_out_of_the_background(picture, decomposed, tmp_path, capsys):
    # disp.png stores 0 where Middlebury has no disparity (7% of the pixels, many on the bike's edges).
    out = tmp_path / "unknown"
    code = main(["decompose", "--image", str(picture / "moto.png"), "--depth-map", str(picture / "disp.png"),
                 "--unknown-zero", "--out", str(out), "--backend", "draft", "--no-video"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "% of the pixels are unknown (0 or not finite); filled from the nearest known depth" in err
    # Read as far (the default), the unknown pixels on the bike become background and its fill carries the
    # bike's red paint behind the bike; read as unknown, the background behind the bike holds almost none.
    ghosts = _paint_red_on_the_bike(decomposed / "layers/background.png")
    clean = _paint_red_on_the_bike(out / "layers/background.png")
    assert ghosts > 0.03 and clean < 0.01, (ghosts, clean)


def test_unknown_zero_needs_a_depth_map(picture, tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["decompose", "--image", str(picture / "moto.png"), "--unknown-zero", "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "--unknown-zero applies to a given depth map" in capsys.readouterr().err


def test_matte_model_closed_form_is_the_offline_matte_by_name(picture, decomposed, tmp_path):
    # "closed-form" names the offline matte everywhere a matte model is chosen (generate, the studio, decompose).
    out = tmp_path / "cf"
    assert main(["decompose", "--image", str(picture / "moto.png"), "--depth-map", str(picture / "disp.png"),
                 "--out", str(out), "--backend", "draft", "--frames", "4", "--matte-model", "closed-form"]) == 0
    for name in ("background", "midground", "foreground"):
        assert (out / f"layers/{name}.png").read_bytes() == (decomposed / f"layers/{name}.png").read_bytes()
