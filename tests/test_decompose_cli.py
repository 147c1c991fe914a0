"""python -m layers decompose / regenerate on a decomposed stack: the files, the round trip, every bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layers.cli import main
from layers.pipeline import OUTPUT_NAMES, GenerateOptions, load_result, regenerate_layer, write_outputs


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


def test_regenerate_refills_or_repaints_one_layer_and_keeps_the_others_byte_identical(decomposed, tmp_path,
                                                                                      capsys):
    import shutil

    from layers.decompose import hidden_mask

    out = tmp_path / "copy"
    shutil.copytree(decomposed, out)
    before = {p: (out / p).read_bytes() for p in ("layers/midground.png", "layers/foreground.png",
                                                  "depth/background.png", "layers/background.png")}
    # Offline (no model named: the stack was filled offline): the texture fill again, with a new seed.
    assert main(["regenerate", "--from", str(out), "--layer", "background", "--seed", "5"]) == 0, \
        capsys.readouterr().err
    for p in ("layers/midground.png", "layers/foreground.png", "depth/background.png"):
        assert (out / p).read_bytes() == before[p], p
    refilled = np.asarray(Image.open(out / "layers/background.png").convert("RGB"))
    old_bg = np.asarray(Image.open(decomposed / "layers/background.png").convert("RGB"))
    hidden = hidden_mask(load_result(out).stack, "background")
    changed = (refilled != old_bg).any(-1)
    assert changed[hidden].mean() > 0.1 and not changed[~hidden].any()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["render"]["regenerated"][-1] == {"layer": "background", "seed": 5, "fill": "texture",
                                                     "backend": "offline"}
    assert manifest["render"]["decompose"]["seeds"]["background"] == 5
    # Model mode (a real Repainter): the background's hidden part changes, nothing else does.
    result = regenerate_layer(load_result(out), "background", SeedPainter(), seed=11)
    write_outputs(result, out)
    for p in ("layers/midground.png", "layers/foreground.png", "depth/background.png"):
        assert (out / p).read_bytes() == before[p], p
    new_bg = np.asarray(Image.open(out / "layers/background.png").convert("RGB"))
    changed = (new_bg != refilled).any(-1)
    assert changed.any()
    assert not changed[~hidden].any()  # what shows is untouched
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


def _paint_red_on_the_bike(layer_png: Path, paint: bool = False) -> float:
    """Share of the motorcycle's area (known disparity >= 35 px, eroded) where a layer shows its red paint
    (``paint``: its saturated red alone, not a red-brown)."""
    from scipy import ndimage
    from skimage import data

    disparity = data.stereo_motorcycle()[2][::2, ::2][:250, :370]
    bike = ndimage.binary_erosion(np.nan_to_num(disparity, nan=0.0, posinf=0.0) >= 35, iterations=3)
    rgb = np.asarray(Image.open(layer_png).convert("RGB"), np.int32)
    red = (rgb[..., 0] > rgb[..., 1] + 40) & (rgb[..., 0] > rgb[..., 2] + 40)
    if paint:
        red &= (rgb[..., 1] < 0.35 * rgb[..., 0]) & (rgb[..., 2] < 0.35 * rgb[..., 0])
    return float(red[bike].mean())


def test_unknown_zero_keeps_the_bike_out_of_the_background(picture, tmp_path, capsys):
    # disp.png stores 0 where Middlebury has no disparity (7% of the pixels, many on the bike's edges).
    runs = {}
    for name, extra in (("far", []), ("unknown", ["--unknown-zero"]), ("texture", ["--unknown-zero"])):
        out = runs[name] = tmp_path / name
        fill = ["--fill", "texture" if name == "texture" else "smooth"]
        code = main(["decompose", "--image", str(picture / "moto.png"), "--depth-map", str(picture / "disp.png"),
                     *extra, *fill, "--out", str(out), "--backend", "draft", "--no-video", "--formats", "zip"])
        err = capsys.readouterr().err
        assert code == 0, err
    assert "% of the pixels are unknown (0 or not finite); filled from the nearest known depth" in err
    # Read as far (the default), the unknown pixels on the bike become background and its fill carries the
    # bike's red paint behind the bike; read as unknown, the background behind the bike holds almost none.
    # (Smooth fills on both sides: the wall's orange-brown wood, which the texture fill continues, passes this
    # loose test of red too.)
    ghosts = _paint_red_on_the_bike(runs["far"] / "layers/background.png")
    clean = _paint_red_on_the_bike(runs["unknown"] / "layers/background.png")
    assert ghosts > 0.03 and clean < 0.01, (ghosts, clean)
    # The texture fill copies the wall's own pixels, never the bike's: its saturated paint (green and blue
    # under 0.35 of red; the wood's green is 0.4-0.7 of its red) stays out of the background behind the bike.
    assert _paint_red_on_the_bike(runs["texture"] / "layers/background.png", paint=True) < 0.005


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


def test_the_fill_is_a_choice_recorded_in_the_manifest_and_old_stacks_stay_smooth(picture, decomposed, tmp_path,
                                                                                  capsys):
    import shutil

    manifest = json.loads((decomposed / "manifest.json").read_text())
    assert manifest["options"]["fill"] == "texture" and manifest["render"]["decompose"]["fill"] == "texture"
    args = ["decompose", "--image", str(picture / "moto.png"), "--depth-map", str(picture / "disp.png"),
            "--backend", "draft", "--no-video", "--formats", "zip"]
    assert main(args + ["--out", str(tmp_path / "blur"), "--fill", "blur"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fill" in err[0] and "'blur'" in err[0] and not (tmp_path / "blur").exists()
    assert main(args + ["--out", str(tmp_path / "smooth"), "--fill", "smooth"]) == 0
    smooth = json.loads((tmp_path / "smooth" / "manifest.json").read_text())
    assert smooth["options"]["fill"] == "smooth" and smooth["render"]["decompose"]["fill"] == "smooth"
    assert "fill smooth" in capsys.readouterr().out

    # A stack written before the choice existed: its manifest names no fill, and its layers were filled smoothly.
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "smooth", old)
    data = json.loads((old / "manifest.json").read_text())
    del data["options"]["fill"]
    (old / "manifest.json").write_text(json.dumps(data))
    assert load_result(old).options.fill == "smooth"
    before = (old / "layers/background.png").read_bytes()
    assert main(["regenerate", "--from", str(old), "--layer", "background"]) == 2  # nothing to vary offline
    assert "filled smoothly, which has no seed" in capsys.readouterr().err
    assert (old / "layers/background.png").read_bytes() == before
    assert main(["regenerate", "--from", str(old), "--layer", "background", "--fill", "texture", "--seed", "3"]) == 0
    data = json.loads((old / "manifest.json").read_text())
    assert data["options"]["fill"] == "smooth"  # the stack's own, for its other layers
    assert data["render"]["regenerated"][-1] == {"layer": "background", "seed": 3, "fill": "texture",
                                                 "backend": "offline"}
    assert (old / "layers/background.png").read_bytes() != before


def test_the_studio_takes_the_fill_for_a_picture_and_a_prompt(picture, tmp_path):
    from layers.backends import get_backend
    from layers.studio import Studio

    studio = Studio(get_backend("draft"), output_root=tmp_path / "studio")
    run = studio.decompose(str(picture / "moto.png"), depth_map=str(picture / "disp.npy"), fill="smooth",
                           options=GenerateOptions(displacement=1.0, video=False, formats=("zip",)))
    assert run.result.options.fill == "smooth" and run.summary()["fill"] == "smooth"
    assert json.loads(run.files["manifest"].read_text())["options"]["fill"] == "smooth"
    for call in (lambda: studio.decompose(str(picture / "moto.png"), depth_map=str(picture / "disp.npy"),
                                          fill="blurry"),
                 lambda: studio.generate("a castle on a hill", fill="blurry")):
        with pytest.raises(ValueError, match="unknown fill 'blurry'"):
            call()
