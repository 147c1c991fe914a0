"""The score against a real stereo camera (bench/bench_stereo.py), held so it cannot silently regress."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_stereo.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_stereo", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_right_view_of_the_motorcycle_beats_the_targets_and_the_simple_renderers(capsys):
    bench = _bench()
    assert bench.main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["renderer"] for r in rows] == list(bench.NAMES)
    assert set(rows[0]) == {"renderer", "psnr_frame", "psnr_disoccluded", "seconds"}
    ours = rows[-1]
    assert ours["renderer"] == "layercake"
    assert ours["psnr_frame"] >= 23.5 and ours["psnr_disoccluded"] >= 16.2, ours
    for reference in rows[:-1]:
        assert ours["psnr_frame"] > reference["psnr_frame"], reference
        assert ours["psnr_disoccluded"] > reference["psnr_disoccluded"], reference
    # The references are what a camera that does not move, or moves flat cards, would show.
    assert rows[0]["psnr_frame"] < rows[1]["psnr_frame"] < rows[2]["psnr_frame"]


def test_any_rectified_pair_from_files(tmp_path, capsys):
    """--left/--right/--disparity: a synthetic pair whose right view is the left one moved by a known disparity."""
    bench = _bench()
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = 64, 128
    # Three textured planes at disparities 2, 6 and 10 px, seen by two cameras: a true stereo pair.
    planes = [(2, (0, h, -20, w + 20)), (6, (8, 56, 30, 70)), (10, (20, 50, 80, 100))]
    textures = [(rng.random((h, w + 40, 3)) * 180 + 40).astype(np.uint8) for _ in planes]

    def view(camera):
        out = np.zeros((h, w, 3), np.uint8)
        disp = np.zeros((h, w), np.float32)
        for (d, (y0, y1, x0, x1)), tex in zip(planes, textures):
            shift = int(d * camera)
            for x in range(w):
                src = x + shift  # the plane's own coordinate seen at x
                if x0 <= src < x1:
                    out[y0:y1, x] = tex[y0:y1, src + 20]
                    disp[y0:y1, x] = d
        return out, disp

    left, disp = view(0)
    right, _ = view(1)
    Image.fromarray(left).save(tmp_path / "l.png")
    Image.fromarray(right).save(tmp_path / "r.png")
    Image.fromarray((disp * 256).astype(np.uint16)).save(tmp_path / "d.png")
    assert bench.main(["--left", str(tmp_path / "l.png"), "--right", str(tmp_path / "r.png"),
                       "--disparity", str(tmp_path / "d.png"), "--disparity-scale", "256", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[-1]["renderer"] == "layercake"
    assert rows[-1]["psnr_frame"] > rows[0]["psnr_frame"] + 5
