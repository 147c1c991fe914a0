"""The studio's "From a picture" tab as API clients meet it: a real server and gradio_client's /decompose."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from test_app import error_of, running_server

from gradio_client import Client, handle_file  # noqa: E402

# /decompose returns PSD, ORA, ZIP, MP4, composite, video, layers gallery, depth gallery, summary, status.
PSD, ORA, ZIP, MP4, COMPOSITE, VIDEO, LAYERS, DEPTHS, SUMMARY, STATUS = range(10)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from skimage import data

    root = tmp_path_factory.mktemp("upload")
    left, _, disparity = data.stereo_motorcycle()
    Image.fromarray(left).resize((296, 200), Image.BILINEAR).save(root / "moto.png")
    disp = np.where(np.isfinite(disparity), disparity, 0)
    Image.fromarray((disp * 256).astype(np.uint16)).resize((296, 200), Image.NEAREST).save(root / "disp.png")
    Image.open(root / "moto.png").convert("RGBA").save(root / "rgba.png")
    return root


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("studio") / "outputs") as server:
        yield Client(server.url, verbose=False)


def test_decompose_endpoint_returns_the_stack_files(client, files):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/decompose" in info
    out = client.predict(image=handle_file(str(files / "moto.png")), depth_map=handle_file(str(files / "disp.png")),
                         layers="3", api_name="/decompose")
    summary = out[SUMMARY]
    assert summary["source"] == "picture" and len(summary["thresholds"]) == 2
    assert [layer["name"] for layer in summary["layers"]] == ["background", "midground", "foreground"]
    for index in (PSD, ORA, ZIP, MP4):
        assert out[index] and open(out[index], "rb").read(4)
    with zipfile.ZipFile(out[ZIP]) as z:
        manifest = json.loads(z.read("manifest.json"))
        assert manifest["source"] == "picture" and manifest["options"]["displacement"] == 1.0
    composite = np.asarray(Image.open(out[COMPOSITE]).convert("RGB"), np.float64)
    picture = np.asarray(Image.open(files / "moto.png"), np.float64)
    mse = max(np.mean((composite - picture) ** 2), 1e-12)
    assert 10 * np.log10(255 ** 2 / mse) >= 40.0
    assert len(out[LAYERS]) == 3 and len(out[DEPTHS]) == 3


@pytest.mark.parametrize("case, needle", [("rgba", "transparency"), ("nine", "9"),
                                          ("no depth", "depth map")])
def test_bad_uploads_get_one_line_and_the_server_keeps_serving(client, files, case, needle):
    args = {"image": handle_file(str(files / "moto.png")), "depth_map": handle_file(str(files / "disp.png"))}
    if case == "rgba":
        args["image"] = handle_file(str(files / "rgba.png"))
    elif case == "nine":
        args["layers"] = "9"
    else:
        args["depth_map"] = None
    message = error_of(lambda: client.predict(**args, api_name="/decompose"))
    assert needle in message and "Traceback" not in message
    assert client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_unknown_zero_checkbox_reads_zero_as_unknown(client, files):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/decompose"]
    assert any(p["parameter_name"] == "unknown_zero" and p["parameter_default"] is False for p in info["parameters"])
    out = client.predict(image=handle_file(str(files / "moto.png")), depth_map=handle_file(str(files / "disp.png")),
                         unknown_zero=True, api_name="/decompose")
    assert "of the pixels are unknown (0 or not finite); filled from the nearest known depth" in out[STATUS]
    composite = np.asarray(Image.open(out[COMPOSITE]).convert("RGB"), np.float64)
    picture = np.asarray(Image.open(files / "moto.png"), np.float64)
    assert 10 * np.log10(255 ** 2 / max(np.mean((composite - picture) ** 2), 1e-12)) >= 40.0


def test_the_hidden_parts_choice_fills_with_texture_by_default_or_smoothly(client, files):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/decompose"]
    assert any(p["parameter_name"] == "fill" and p["parameter_default"] == "texture" for p in info["parameters"])
    backgrounds = {}
    for fill in ("texture", "smooth"):
        out = client.predict(image=handle_file(str(files / "moto.png")), depth_map=handle_file(str(files / "disp.png")),
                             fill=fill, api_name="/decompose")
        with zipfile.ZipFile(out[ZIP]) as z:
            assert json.loads(z.read("manifest.json"))["options"]["fill"] == fill
            backgrounds[fill] = np.asarray(Image.open(io.BytesIO(z.read("layers/background.png"))), np.float64)
    # where the nearer layers hide the background, texture keeps its detail and smooth blurs it
    detail = {k: np.abs(np.diff(v[..., :3], axis=1)).mean() for k, v in backgrounds.items()}
    assert detail["texture"] > detail["smooth"]
    with pytest.raises(Exception, match="'blurry' .* is not in the list of choices: \\['texture', 'smooth'\\]"):
        client.predict(image=handle_file(str(files / "moto.png")), depth_map=handle_file(str(files / "disp.png")),
                       fill="blurry", api_name="/decompose")
