"""The studio's Steps, Guidance and strength sliders at their ends, on a model: a real server (python app.py
--backend diffusers) on a tiny SD1.5 depth-ControlNet model and a tiny Depth Anything in their real formats, driven
through gradio_client. Every value a slider offers gives a stack in the plate flow, each pass with at least one
step; a value past a slider's end is refused in one line."""
from __future__ import annotations

import json
import time

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from test_app import SUMMARY, running_server

SIZE = dict(width=64, height=96)


@pytest.fixture(scope="module")
def client(tiny_sd15_dir, tiny_depth_anything_dir, tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("model-studio") / "outputs", "--backend", "diffusers", "--model",
                        str(tiny_sd15_dir), "--depth-model", str(tiny_depth_anything_dir)) as server:
        # A model studio answers first with its loading page, and opens once the model is loaded.
        deadline = time.monotonic() + 120
        while True:
            try:
                c = Client(server.url, verbose=False)
                break
            except (ValueError, httpx.TransportError):  # the loading page (no config yet), or the switch to the studio
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the studio never opened:\n{server.log()[-3000:]}") from None
                time.sleep(1)
        yield server, c


def manifest(server, result) -> dict:
    run_id = result[SUMMARY]["run_id"]
    return json.loads((server.output_dir / "runs" / run_id / "manifest.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("ends", [
    dict(steps=1, guidance=0.0, background_strength=0.0, midground_strength=0.0, foreground_strength=0.0),
    dict(steps=2, guidance=30.0, background_strength=2.0, midground_strength=2.0, foreground_strength=2.0),
    dict(steps=3),
])
def test_every_slider_end_gives_a_plate_stack_with_a_step_in_every_pass(client, ends):
    server, c = client
    result = c.predict(prompt="a vaulted hall, two dancers in the middle, shards in the foreground", seed=4,
                       composition="plate", matte_model="closed-form", **SIZE, **ends, api_name="/generate")
    made = manifest(server, result)
    render = made["render"]
    assert render["composition"] == "plate" and made["options"]["steps"] == ends["steps"]
    assert all(call["steps_run"] >= 1 for call in render["calls"]) and render["harmonize"]["steps_run"] >= 1
    assert result[0] and result[0].endswith("stack.psd")


def test_the_steps_slider_s_top_end_gives_a_stack_and_past_it_is_refused_in_one_line(client):
    server, c = client
    result = c.predict(prompt="a hall, a dancer", seed=4, steps=150, composition="scaffold",
                       matte_model="closed-form", **SIZE, api_name="/generate")
    assert manifest(server, result)["options"]["steps"] == 150
    with pytest.raises(AppError) as err:
        c.predict(prompt="a hall, a dancer", steps=151, **SIZE, api_name="/generate")
    assert "\n" not in str(err.value).strip() and "151" in str(err.value)
