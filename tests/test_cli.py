"""The command line as a user runs it: outputs, exit codes and one-line errors for bad input."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layers.cli import main

ROOT = Path(__file__).resolve().parents[1]
SEED_002 = ROOT / "seeds" / "002_velvet_planetarium.txt"
EXPECTED_FILES = {"composite.png", "stack.psd", "stack.ora", "stack.zip", "parallax.mp4", "manifest.json",
                  "layers/background.png", "layers/midground.png", "layers/foreground.png",
                  "depth/background.png", "depth/midground.png", "depth/foreground.png"}


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, exactly as `python -m layers ...`."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "layers", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env=full_env, timeout=300)


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "velvet"
    proc = run_cli("generate", "--prompt-file", SEED_002, "--out", out, "--backend", "draft", "--seed", "1",
                   "--width", "256", "--height", "384", "--frames", "12")
    assert proc.returncode == 0, proc.stderr
    return out


def test_generate_writes_every_output(generated):
    assert EXPECTED_FILES <= files_under(generated)
    assert not [p for p in generated.parent.iterdir() if p.name.endswith(".tmp")], "staging folder left behind"
    with Image.open(generated / "composite.png") as img:
        assert img.size == (256, 384) and img.mode == "RGB"
    for name in ("midground", "foreground"):
        with Image.open(generated / "layers" / f"{name}.png") as img:
            alpha = np.asarray(img.getchannel("A"))
        assert 0.02 < (alpha > 128).mean() < 0.8, f"{name} alpha should cover part of the frame"
    with Image.open(generated / "depth" / "midground.png") as img:
        assert img.mode.startswith("I"), "depth maps are 16-bit"


def test_generate_manifest_is_complete(generated):
    manifest = json.loads((generated / "manifest.json").read_text())
    for key in ("prompt", "plan", "seed", "backend", "width", "height", "layers", "versions", "options"):
        assert key in manifest, key
    assert manifest["prompt"] == SEED_002.read_text(encoding="utf-8")
    assert manifest["backend"] == "draft"
    assert [layer["name"] for layer in manifest["layers"]] == ["background", "midground", "foreground"]
    nearness = [layer["nearness"] for layer in manifest["layers"]]
    assert nearness == sorted(nearness), "layers are ordered back to front"
    assert len({layer["seed"] for layer in manifest["layers"]}) == 3
    assert "numpy" in manifest["versions"] and "pillow" in manifest["versions"]


def test_generate_prints_a_summary(tmp_path):
    proc = run_cli("generate", "--prompt", "a castle on a hill, two knights, falling leaves", "--out",
                   tmp_path / "o", "--backend", "draft", "--width", "192", "--height", "256", "--no-video")
    assert proc.returncode == 0, proc.stderr
    assert "draft stack 192x256" in proc.stdout
    assert "midground" in proc.stdout and "stack.psd" in proc.stdout
    assert "parallax.mp4" not in files_under(tmp_path / "o")


def test_same_seed_same_stack_and_new_seed_differs(tmp_path, generated):
    again = tmp_path / "again"
    other = tmp_path / "other"
    common = ["--prompt-file", SEED_002, "--backend", "draft", "--width", "256", "--height", "384", "--no-video"]
    assert main(["generate", *map(str, common), "--seed", "1", "--out", str(again)]) == 0
    assert main(["generate", *map(str, common), "--seed", "2", "--out", str(other)]) == 0
    for rel in ("composite.png", "layers/midground.png", "layers/foreground.png"):
        assert sha(again / rel) == sha(generated / rel), rel
    assert sha(other / "composite.png") != sha(generated / "composite.png")


def test_regenerate_one_layer_keeps_the_others(tmp_path, generated):
    import shutil

    work = tmp_path / "stack"
    shutil.copytree(generated, work)
    before = {rel: sha(work / rel) for rel in files_under(work)}
    proc = run_cli("regenerate", "--from", work, "--layer", "midground", "--seed", "777")
    assert proc.returncode == 0, proc.stderr
    after = {rel: sha(work / rel) for rel in files_under(work)}
    assert after["layers/background.png"] == before["layers/background.png"]
    assert after["layers/foreground.png"] == before["layers/foreground.png"]
    assert after["layers/midground.png"] != before["layers/midground.png"]
    assert after["composite.png"] != before["composite.png"]
    manifest = json.loads((work / "manifest.json").read_text())
    assert {layer["name"]: layer["seed"] for layer in manifest["layers"]}["midground"] == 777
    assert manifest["render"]["regenerated"][-1]["layer"] == "midground"


def test_plan_json_has_the_documented_fields():
    proc = run_cli("plan", "--prompt-file", ROOT / "seeds" / "001_archive_cradle.txt", "--seed", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert {"width", "height", "aspect", "style", "layers"} <= set(plan)
    assert plan["aspect"] == "2:3" and plan["width"] * 3 == plan["height"] * 2
    assert [layer["name"] for layer in plan["layers"]] == ["background", "midground", "foreground"]
    for layer in plan["layers"]:
        assert {"name", "prompt", "negative_prompt", "dropped", "seed"} <= set(layer)
        assert layer["prompt"].strip()


def test_plan_text_output():
    proc = run_cli("plan", "--prompt", "in the background a ruined cathedral; in the midground a knight")
    assert proc.returncode == 0, proc.stderr
    assert "[background]" in proc.stdout and "cathedral" in proc.stdout


# --- bad input: one line, exit 2, no traceback, nothing written -------------------------------------------------

def _bad_inputs(tmp: Path) -> dict[str, tuple[list, str]]:
    (tmp / "long.txt").write_text("x " * 10_001, encoding="utf-8")
    (tmp / "bell.txt").write_text("a hall\x07 with a bell", encoding="utf-8")
    (tmp / "latin1.txt").write_bytes("a caf\xe9 in the rain".encode("latin-1"))
    (tmp / "not_image.png").write_text("this is not a png")
    Image.new("1", (20_000, 20_000)).save(tmp / "bomb.png")
    (tmp / "a_file").write_text("occupied")
    ok = ["--prompt", "a hall with two figures"]
    return {
        "empty prompt": (["--prompt", ""], "empty"),
        "blank prompt": (["--prompt", "   \n "], "empty"),
        "long prompt": (["--prompt-file", tmp / "long.txt"], "20000"),
        "control character": (["--prompt-file", tmp / "bell.txt"], "U+0007"),
        "invalid utf-8": (["--prompt-file", tmp / "latin1.txt"], "UTF-8"),
        "missing prompt file": (["--prompt-file", tmp / "nope.txt"], "not found"),
        "unknown backend": ([*ok, "--backend", "dalle"], "dalle"),
        "zero width": ([*ok, "--width", "0", "--height", "512"], "0"),
        "negative height": ([*ok, "--width", "512", "--height", "-64"], "-64"),
        "huge width": ([*ok, "--width", "4096", "--height", "512"], "4096"),
        "absurd aspect": (["--prompt", "a hall, aspect ratio 0:3"], "0:3"),
        "missing depth map": ([*ok, "--depth-map", tmp / "nope.png"], "not found"),
        "depth map not an image": ([*ok, "--depth-map", tmp / "not_image.png"], "not an image"),
        "decompression bomb": ([*ok, "--depth-map", tmp / "bomb.png"], "too large"),
        "output is a file": ([*ok], "a_file"),
        "output under a file": ([*ok], "a_file"),
    }


BAD_CASES = ["empty prompt", "blank prompt", "long prompt", "control character", "invalid utf-8",
             "missing prompt file", "unknown backend", "zero width", "negative height", "huge width",
             "absurd aspect", "missing depth map", "depth map not an image", "decompression bomb",
             "output is a file", "output under a file"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    args, needle = _bad_inputs(tmp_path)[case]
    out = {"output is a file": tmp_path / "a_file",
           "output under a file": tmp_path / "a_file" / "sub"}.get(case, tmp_path / "out")
    before = files_under(tmp_path)
    code = main(["generate", *map(str, args), "--out", str(out), "--backend", "draft"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert files_under(tmp_path) == before, "bad input must not write anything"


def test_bad_input_through_a_real_process_has_no_traceback(tmp_path):
    proc = run_cli("generate", "--prompt", "a hall", "--width", "0", "--height", "512", "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "width" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_plan_rejects_bad_input_too(capsys):
    assert main(["plan", "--prompt", " "]) == 2
    assert "empty" in capsys.readouterr().err


def test_regenerate_from_a_folder_that_is_not_a_stack(tmp_path, capsys):
    assert main(["regenerate", "--from", str(tmp_path), "--layer", "midground"]) == 2
    assert "manifest" in capsys.readouterr().err


def test_depth_map_option_drives_the_layers(tmp_path):
    # Left half near, right half far: the foreground must land on the left.
    ramp = np.zeros((384, 256), np.uint8)
    ramp[:, :128] = 250
    ramp[:, 128:] = 10
    Image.fromarray(ramp, "L").save(tmp_path / "depth.png")
    out = tmp_path / "o"
    assert main(["generate", "--prompt", "a hall, a figure, debris", "--depth-map", str(tmp_path / "depth.png"),
                 "--out", str(out), "--backend", "draft", "--width", "256", "--height", "384", "--no-video"]) == 0
    with Image.open(out / "layers" / "foreground.png") as img:
        alpha = np.asarray(img.getchannel("A"), np.float32) / 255
    assert alpha[:, :100].mean() > 0.8 and alpha[:, 156:].mean() < 0.05
    assert json.loads((out / "manifest.json").read_text())["depth_source"] == "map"


# --- model mode, through the same flags a user types (tiny real-format models built by conftest) -------------

def test_generate_with_a_local_diffusers_model_writes_the_full_set(tmp_path, tiny_sd15_dir, capsys):
    out = tmp_path / "sd15"
    code = main(["generate", "--prompt-file", str(SEED_002), "--backend", "diffusers", "--model", str(tiny_sd15_dir),
                 "--steps", "2", "--width", "128", "--height", "192", "--frames", "6", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert EXPECTED_FILES <= files_under(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "diffusers"
    assert manifest["render"]["family"] == "sd15"
    assert manifest["models"]["model"] == str(tiny_sd15_dir)
    seen = manifest["render"]["layers"]  # what each layer's text encoder saw
    assert set(seen) == {"background", "midground", "foreground"}
    for name, layer in seen.items():
        assert layer["tokens"] > 2 and layer["chunk_texts"] and layer["truncated_tokens"] == 0, name

    before = {rel: sha(out / rel) for rel in files_under(out)}
    # A local model is named again on the command line: a manifest never picks a folder to load from.
    assert main(["regenerate", "--from", str(out), "--layer", "foreground", "--seed", "5"]) == 2
    assert "pass --model" in capsys.readouterr().err
    assert main(["regenerate", "--from", str(out), "--layer", "foreground", "--seed", "5", "--model",
                 str(tiny_sd15_dir)]) == 0
    after = {rel: sha(out / rel) for rel in files_under(out)}
    assert after["layers/background.png"] == before["layers/background.png"]
    assert after["layers/midground.png"] == before["layers/midground.png"]
    assert after["layers/foreground.png"] != before["layers/foreground.png"]
    assert json.loads((out / "manifest.json").read_text())["render"]["regenerated"][-1]["backend"] == "diffusers"


def test_generate_from_a_reference_image(tmp_path, tiny_depth_anything_dir, capsys):
    reference = tmp_path / "ref.png"
    Image.fromarray((np.random.default_rng(0).random((96, 64, 3)) * 255).astype(np.uint8)).save(reference)
    out = tmp_path / "ref"
    code = main(["generate", "--prompt", "a hall, a dancer, petals", "--backend", "draft", "--reference",
                 str(reference), "--depth-model", str(tiny_depth_anything_dir), "--width", "128", "--height", "192",
                 "--no-video", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["depth_source"] == "reference"


def test_diffusers_without_weights_is_one_line_naming_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code = main(["generate", "--prompt", "a hall", "--backend", "diffusers", "--model", "sd15", "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in err[0] and "download" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_layer_prompt_can_be_overridden(tmp_path, capsys):
    args = ["--prompt-file", str(SEED_002), "--midground-prompt", "a lone drummer in teal"]
    assert main(["plan", *args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    layers = {layer["name"]: layer for layer in plan["layers"]}
    assert layers["midground"]["prompt"].startswith("a lone drummer in teal")
    assert "athlete" not in layers["midground"]["prompt"]
    assert "orrery" in layers["background"]["prompt"]
    out = tmp_path / "o"
    assert main(["generate", *args, "--backend", "draft", "--width", "128", "--height", "192", "--no-video",
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"][1]["prompt"].startswith("a lone drummer in teal")
    assert main(["plan", "--prompt", "a hall", "--foreground-prompt", " "]) == 2
    assert "empty" in capsys.readouterr().err


@pytest.mark.parametrize("option, needle", [(["--steps", "0"], "steps"), (["--guidance", "99"], "guidance"),
                                            (["--strength", "1", "5", "1"], "strengths")])
def test_bad_render_options_are_refused_before_a_model_loads(tmp_path, capsys, option, needle):
    # The model named does not exist: the option must be reported, not the missing model.
    code = main(["generate", "--prompt", "a hall", *option, "--backend", "diffusers", "--model",
                 str(tmp_path / "no_such_model"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "no_such_model" not in err, err
    assert not (tmp_path / "o").exists()
