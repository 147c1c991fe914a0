"""Inputs as an attacker or a careless user gives them: a picture shows as its camera meant, a .npy depth map is
checked from its header before anything is allocated, and every odd file gets one clear line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from layers.cli import main
from layers.pipeline import GenerateOptions

ROOT = Path(__file__).resolve().parents[1]
ORIENTATION = 0x0112
PEAK = ("import re, sys; from layers.cli import main; rc = main(sys.argv[1:]); "
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
        "print('peak', int(hwm) // 1024, file=sys.stderr); sys.exit(rc)")


def cli_peak(*args) -> tuple[int, list[str], int]:
    """The CLI in a fresh process: exit code, its error lines, and its peak resident memory in MB."""
    proc = subprocess.run([sys.executable, "-c", PEAK, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, lines[:-1], int(lines[-1].split()[1])


def decompose(tmp_path, capsys, image, depth=None, *extra) -> tuple[int, list[str]]:
    args = ["decompose", "--image", str(image), "--out", str(tmp_path / "out"), "--backend", "draft", "--no-video"]
    code = main(args + (["--depth-map", str(depth)] if depth is not None else []) + list(extra))
    return code, capsys.readouterr().err.strip().splitlines()


def scene(width: int = 120, height: int = 80) -> tuple[Image.Image, np.ndarray]:
    """A picture with a near red block at its top-left corner (as displayed), and its depth map (1 = near)."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[...] = (60, 110, 190)
    rgb[: height // 3, : width // 3] = (220, 40, 30)
    depth = np.full((height, width), 0.15, np.float32)
    depth[: height // 3, : width // 3] = 0.9
    return Image.fromarray(rgb), depth


def npy_header(path: Path, shape, dtype="<f4", data: bytes = b"") -> Path:
    """A .npy file whose header declares `shape` (followed by `data` only: nothing like the bytes it announces)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
        f.write(data)
    return path


# --- EXIF orientation ---------------------------------------------------------------------------------------------

def test_a_photo_with_exif_orientation_is_decomposed_as_it_displays(tmp_path, capsys):
    shown, depth = scene(80, 120)  # as the photo displays: portrait, the red block top-left
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # how a camera held upright stores it: landscape...
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # ...with "rotate 90° clockwise to display"
    stored.save(tmp_path / "photo.jpg", quality=95, exif=exif)
    with Image.open(tmp_path / "photo.jpg") as img:
        assert img.size == (120, 80) and ImageOps.exif_transpose(img).size == (80, 120)
    Image.fromarray((depth * 255).astype(np.uint8)).save(tmp_path / "depth.png")  # made from the displayed photo

    code, lines = decompose(tmp_path, capsys, tmp_path / "photo.jpg", tmp_path / "depth.png", "--layers", "2")
    assert code == 0, lines
    assert not [line for line in lines if "resized" in line], "the depth map fits the photo as it displays"
    with Image.open(tmp_path / "out" / "composite.png") as img:
        composite = np.asarray(img.convert("RGB"), np.int16)
    assert composite.shape == (120, 80, 3)
    assert tuple(composite[10, 10]) == pytest.approx((220, 40, 30), abs=12), "the red block top-left, as shown"
    assert tuple(composite[100, 60]) == pytest.approx((60, 110, 190), abs=12)
    with Image.open(tmp_path / "out" / "layers" / "foreground.png") as fg:
        assert fg.getpixel((10, 10))[3] == 255 and fg.getpixel((60, 100))[3] == 0


def test_a_depth_png_with_exif_orientation_is_turned_like_its_photo(tmp_path):
    """A depth map saved by a camera beside its photo carries the same orientation: read as it displays."""
    from layers.decompose import load_depth
    from layers.depth import load_depth_map

    _, depth = scene(80, 120)
    levels = Image.fromarray((depth * 65535).astype(np.uint16))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    levels.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "depth.png", exif=exif)
    for loaded in (load_depth(tmp_path / "depth.png"), load_depth_map(tmp_path / "depth.png")):
        assert loaded.shape == (120, 80)
        assert loaded[10, 10] > loaded[100, 60]


# --- .npy depth maps ----------------------------------------------------------------------------------------------

def test_a_npy_header_declaring_ten_billion_pixels_is_refused_before_any_allocation(tmp_path):
    Image.new("RGB", (64, 48), (90, 120, 200)).save(tmp_path / "pic.png")
    npy_header(tmp_path / "huge.npy", (100_000, 100_000), data=b"\0" * 64)
    code, lines, peak = cli_peak("decompose", "--image", tmp_path / "pic.png", "--depth-map", tmp_path / "huge.npy",
                                 "--out", tmp_path / "out", "--backend", "draft")
    assert code == 2 and lines == [
        "error: depth map huge.npy is too large: 100000x100000 pixels (1e+04 MP), more than the limit of 40 MP "
        "(set LAYERCAKE_MAX_UPLOAD_PIXELS to change it)"], lines
    assert peak < 400, f"peak {peak} MB"
    assert not (tmp_path / "out").exists()


def test_a_100_mp_npy_is_held_to_the_pixel_limit_like_a_png(tmp_path, capsys):
    Image.new("RGB", (64, 48), (90, 120, 200)).save(tmp_path / "pic.png")
    path = npy_header(tmp_path / "big.npy", (10_000, 10_000), dtype="|u1")
    with open(path, "r+b") as f:  # a real, complete file (sparse on disk): 100 MB of pixels
        f.truncate(path.stat().st_size + 10_000 * 10_000)
    code, lines = decompose(tmp_path, capsys, tmp_path / "pic.png", path)
    assert code == 2 and lines == [
        "error: depth map big.npy is too large: 10000x10000 pixels (100 MP), more than the limit of 40 MP "
        "(set LAYERCAKE_MAX_UPLOAD_PIXELS to change it)"], lines


BAD_NPY = {
    "an .npz renamed .npy": "depth map d.npy is a .npz archive, not a .npy array: save one array with numpy.save",
    "a pickle": "depth map d.npy holds Python objects, not numbers",
    "3-D": "depth map d.npy must be a 2-D numeric array (H, W), got float32 (4, 5, 3)",
    "text": "depth map d.npy is not a .npy array",
    "cut short": "depth map d.npy is cut short: its header announces 80x60 float32 values",
    "complex": "depth map d.npy must be a 2-D numeric array (H, W), got complex64 (60, 80)",
}


def _bad_npy(case: str, path: Path) -> None:
    if case == "an .npz renamed .npy":
        np.savez(path.with_suffix(".npz"), depth=np.ones((60, 80), np.float32))
        path.with_suffix(".npz").rename(path)
    elif case == "a pickle":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif case == "3-D":
        np.save(path, np.ones((4, 5, 3), np.float32))
    elif case == "text":
        path.write_text("0.1 0.2\n0.3 0.4\n")
    elif case == "cut short":
        npy_header(path, (60, 80), data=b"\0" * 100)
    elif case == "complex":
        np.save(path, np.ones((60, 80), np.complex64))


@pytest.mark.parametrize("case", list(BAD_NPY))
def test_a_bad_npy_is_one_clear_line_in_the_cli_and_the_studio(case, tmp_path, capsys):
    from layers.backends import get_backend
    from layers.studio import Studio

    scene(80, 60)[0].save(tmp_path / "pic.png")
    _bad_npy(case, tmp_path / "d.npy")
    code, lines = decompose(tmp_path, capsys, tmp_path / "pic.png", tmp_path / "d.npy")
    assert code == 2 and lines == [f"error: {BAD_NPY[case]}"], lines
    studio = Studio(get_backend("draft"), output_root=tmp_path / "studio")
    with pytest.raises(ValueError) as info:
        studio.decompose(str(tmp_path / "pic.png"), depth_map=str(tmp_path / "d.npy"))
    assert str(info.value) == BAD_NPY[case]


def test_the_studio_holds_a_npy_upload_to_its_own_pixel_limit(tmp_path):
    from layers.backends import get_backend
    from layers.studio import Studio, StudioLimits

    scene(80, 60)[0].save(tmp_path / "pic.png")
    np.save(tmp_path / "d.npy", np.ones((100, 120), np.float32))
    studio = Studio(get_backend("draft"), output_root=tmp_path / "studio",
                    limits=StudioLimits(max_upload_pixels=10_000))
    with pytest.raises(ValueError, match=r"depth map d.npy is too large: 120x100 pixels \(0.012 MP\), more than the "
                                         r"limit of 0.01 MP"):
        studio.decompose(str(tmp_path / "pic.png"), depth_map=str(tmp_path / "d.npy"))


def test_depth_of_plus_minus_1e308_splits_cleanly_without_warnings(tmp_path, capsys):
    picture, depth = scene(120, 80)
    picture.save(tmp_path / "pic.png")
    extreme = np.where(depth > 0.5, 1e308, -1e308).astype(np.float64)
    np.save(tmp_path / "d.npy", extreme)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        code, lines = decompose(tmp_path, capsys, tmp_path / "pic.png", tmp_path / "d.npy", "--layers", "2")
    assert code == 0, lines
    assert not [line for line in lines if "constant" in line or "Warning" in line], lines
    with Image.open(tmp_path / "out" / "layers" / "foreground.png") as fg:
        assert fg.getpixel((10, 10))[3] == 255 and fg.getpixel((100, 70))[3] == 0


# --- odd files ------------------------------------------------------------------------------------------------------

def test_an_animated_gif_is_refused_in_one_line(tmp_path, capsys):
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("L", (64, 48), 128).save(tmp_path / "depth.png")
    code, lines = decompose(tmp_path, capsys, tmp_path / "anim.gif", tmp_path / "depth.png")
    assert code == 2 and lines == ["error: image anim.gif is animated (several frames): save the frame you want as "
                                   "a still image"], lines
    code, lines = decompose(tmp_path, capsys, tmp_path / "depth.png", tmp_path / "anim.gif")
    assert code == 2 and len(lines) == 1 and "depth map anim.gif is animated" in lines[0], lines
    frames[0].save(tmp_path / "still.gif")  # one frame: a picture like any other
    code, lines = decompose(tmp_path, capsys, tmp_path / "still.gif", tmp_path / "depth.png")
    assert code == 2 and "constant" in lines[-1], "read, then refused only for its flat depth map"


@pytest.mark.parametrize("option", ["--image", "--depth-map", "--prompt-file"])
def test_a_named_pipe_is_called_what_it_is_and_never_read(tmp_path, option):
    fifo = tmp_path / ("in.txt" if option == "--prompt-file" else "in.png")
    os.mkfifo(fifo)
    Image.new("RGB", (64, 48)).save(tmp_path / "pic.png")
    if option == "--prompt-file":
        args = ["generate", "--prompt-file", fifo, "--out", tmp_path / "out", "--backend", "draft"]
        what = "prompt file"
    else:
        args = ["decompose", "--image", fifo if option == "--image" else tmp_path / "pic.png", "--out",
                tmp_path / "out", "--backend", "draft"] + (["--depth-map", fifo] if option == "--depth-map" else [])
        what = "image" if option == "--image" else "depth map"
    proc = subprocess.run([sys.executable, "-m", "layers", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # reading the pipe would block: the timeout would fail the test
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {what} is not a file: {fifo} (a named pipe)", \
        proc.stderr


def test_a_one_gigabyte_prompt_file_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "prompt.txt"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # sparse: no gigabyte on the disk
    code, lines, peak = cli_peak("plan", "--prompt-file", big)
    assert code == 2 and lines == [f"error: prompt file {big} is 1073741824 bytes; a prompt is at most 20000 "
                                   f"characters"], lines
    assert peak < 300, f"peak {peak} MB: the file was read whole"


def test_a_job_files_named_pipe_is_called_what_it_is(tmp_path):
    from layers.jobs import read_jobs

    os.mkfifo(tmp_path / "jobs.jsonl")
    with pytest.raises(ValueError, match=r"job file is not a file: .*jobs.jsonl \(a named pipe\)"):
        read_jobs(tmp_path / "jobs.jsonl")
    os.mkfifo(tmp_path / "pic.png")
    (tmp_path / "ok.jsonl").write_text(json.dumps({"image": "pic.png"}) + "\n")
    listed = read_jobs(tmp_path / "ok.jsonl")
    assert [o.reason for o in listed.invalid] == [f"image is not a file: {tmp_path / 'pic.png'} (a named pipe)"]


def test_an_npz_is_not_mistaken_for_a_zip_of_ours(tmp_path):
    """The .npz check reads the file's first bytes, not its name: a real zip named .npy is the same refusal."""
    from layers.decompose import load_depth

    with zipfile.ZipFile(tmp_path / "d.npy", "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(ValueError, match="is a .npz archive, not a .npy array"):
        load_depth(tmp_path / "d.npy")


# --- the work budget of an upload ----------------------------------------------------------------------------------

def test_an_upload_over_the_work_budget_is_decomposed_at_it_and_the_run_says_so(tmp_path):
    from layers.backends import get_backend
    from layers.studio import Studio, StudioLimits

    picture, depth = scene(300, 200)
    picture.save(tmp_path / "pic.png")
    with_unknown = (depth * 255).astype(np.uint8)
    with_unknown[150:, 200:] = 0  # a patch a stereo matcher left unknown, inside the far band
    Image.fromarray(with_unknown).save(tmp_path / "depth.png")
    studio = Studio(get_backend("draft"), output_root=tmp_path / "studio",
                    limits=StudioLimits(max_work_pixels=20_000))
    run = studio.decompose(str(tmp_path / "pic.png"), depth_map=str(tmp_path / "depth.png"), layers="2",
                           unknown_zero=True, options=GenerateOptions(video=False, displacement=1.0))
    width, height = run.result.stack.size
    assert (width, height) == (173, 115) and width * height <= 20_000
    notices = run.summary()["notices"]
    assert notices[0] == ("image is 300x200 (0.06 MP): worked at 173x115 (0.0199 MP), the limit for one picture "
                          "(LAYERCAKE_MAX_WORK_PIXELS)")
    assert not [n for n in notices if "resized" in n], "the depth map is sampled with its picture"
    assert any("unknown" in n for n in notices), "0 still read as unknown: sampled, never blended"
    fg = run.result.stack["foreground"].alpha
    assert fg[10, 10] > 0.95 and fg[100, 160] < 0.05, "the near block top-left, the rest behind"

    Image.fromarray(np.tile(np.linspace(0, 255, 600, dtype=np.uint8), (400, 1))).save(tmp_path / "big_depth.png")
    run = studio.decompose(str(tmp_path / "pic.png"), depth_map=str(tmp_path / "big_depth.png"), layers="2",
                           options=GenerateOptions(video=False, displacement=1.0))
    notices = run.summary()["notices"]
    assert notices[0].startswith("image is 300x200 (0.06 MP): worked at 173x115")
    assert notices[1] == "depth map is 600x400, the image 300x200: depth map resized", notices


def test_the_work_budget_comes_from_the_environment_and_is_checked():
    from layers.studio import StudioLimits

    assert StudioLimits.from_env({}).max_work_pixels == 8_000_000
    assert StudioLimits.from_env({"LAYERCAKE_MAX_WORK_PIXELS": "2e6"}).max_work_pixels == 2_000_000
    with pytest.raises(ValueError, match="LAYERCAKE_MAX_WORK_PIXELS must be a number"):
        StudioLimits.from_env({"LAYERCAKE_MAX_WORK_PIXELS": "lots"})
    with pytest.raises(ValueError, match="LAYERCAKE_MAX_WORK_PIXELS must be a whole number of pixels"):
        StudioLimits.from_env({"LAYERCAKE_MAX_WORK_PIXELS": "0"})
