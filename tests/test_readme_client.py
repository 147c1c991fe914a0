"""The README's gradio_client examples, run as written against a studio on this machine (draft backend, loopback
only): every Python block that talks to the studio is taken from README.md, only the server address and the
example files' places filled in."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_app import running_server

from gradio_client import Client, handle_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README_URL = "http://127.0.0.1:7860/"


def readme_client_blocks() -> dict[str, str]:
    """The README's ```python blocks that call the studio, by the endpoint each calls first."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = {}
    for block in blocks:
        if "gradio_client" in block:
            endpoint = re.search(r'api_name="(/\w+)"', block).group(1)
            found[endpoint] = block
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A small work budget: the /decompose example's photo is worked at it, and the run says so.
    with running_server(tmp_path_factory.mktemp("studio") / "outputs",
                        env={"LAYERCAKE_MAX_WORK_PIXELS": "60000"}) as running:
        yield running


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """The README's photo.jpg and depth.png: Middlebury's motorcycle and its disparity (16-bit, 0 = unknown)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photo")
    left, _, disparity = data.stereo_motorcycle()
    Image.fromarray(left).resize((370, 250), Image.Resampling.BILINEAR).save(folder / "photo.jpg", quality=92)
    disp = np.where(np.isfinite(disparity), disparity, 0)
    Image.fromarray((disp * 256).astype(np.uint16)).resize((370, 250), Image.Resampling.NEAREST).save(
        folder / "depth.png")
    return folder


def run_block(code: str, server, cwd: Path) -> subprocess.CompletedProcess:
    assert README_URL in code
    code = code.replace(f'"{README_URL}"', repr(server.url))
    code = code.replace('"seeds/002_velvet_planetarium.txt"', repr(str(ROOT / "seeds" / "002_velvet_planetarium.txt")))
    (cwd / "example.py").write_text(code, encoding="utf-8")
    return subprocess.run([sys.executable, "example.py"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_readme_shows_both_studio_endpoints():
    assert set(readme_client_blocks()) == {"/generate", "/decompose"}


def test_the_readme_generate_example_saves_the_psd_the_glb_and_the_page(server, tmp_path):
    proc = run_block(readme_client_blocks()["/generate"], server, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = re.search(r"^saved velvet.psd, velvet.glb and velvet.html from run ([0-9a-f]{32})$", proc.stdout, re.M)
    assert run_id, proc.stdout
    from psd_tools import PSDImage

    for name in ("velvet.psd", "velvet-new-foreground.psd"):
        psd = PSDImage.open(tmp_path / name)
        assert [layer.name for layer in psd if layer.kind != "group"] == ["background", "midground", "foreground"]
    assert (tmp_path / "velvet.glb").read_bytes()[:4] == b"glTF", "the GLB, not the page"
    page = (tmp_path / "velvet.html").read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html")
    assert page.count('<img class="lc-plane" src="data:') == 3, "one plane per layer"


def test_the_readme_decompose_example_saves_the_psd_and_prints_the_thresholds(server, photo, tmp_path):
    for name in ("photo.jpg", "depth.png"):
        (tmp_path / name).write_bytes((photo / name).read_bytes())
    proc = run_block(readme_client_blocks()["/decompose"], server, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r"^thresholds \[([0-9., ]+)\] from run ([0-9a-f]{32})$", proc.stdout, re.M)
    assert found and len(found.group(1).split(",")) == 2, proc.stdout
    from psd_tools import PSDImage

    psd = PSDImage.open(tmp_path / "photo-layers.psd")
    assert [layer.name for layer in psd if layer.kind != "group"] == ["background", "midground", "foreground"]


def test_decompose_returns_the_twelve_outputs_the_readme_lists(server, photo):
    out = Client(server.url, verbose=False).predict(image=handle_file(str(photo / "photo.jpg")),
                                                    depth_map=handle_file(str(photo / "depth.png")), layers="3",
                                                    api_name="/decompose")
    assert len(out) == 12
    assert [Path(out[i]).suffix for i in (0, 1, 2, 3, 4, 5, 10, 11)] == [".psd", ".ora", ".zip", ".mp4", ".png",
                                                                        ".mp4", ".glb", ".html"]
    assert len(out[6]) == len(out[7]) == 3 and isinstance(out[8], dict) and isinstance(out[9], str)
    # Worked at the server's budget (60 000 px here), and the run says so.
    summary = out[8]
    assert summary["width"] * summary["height"] <= 60_000 and summary["width"] / summary["height"] == \
        pytest.approx(370 / 250, rel=0.02)
    assert any("worked at" in line and "LAYERCAKE_MAX_WORK_PIXELS" in line for line in summary["notices"]), summary
    assert not any("resized" in line for line in summary["notices"]), "the depth map was scaled with its photo"
