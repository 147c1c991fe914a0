"""Where weights come from, and what `auto` renders with: never the network to decide, one fast line when the hub
is out of reach, the model when an accelerator or the downloaded weights serve, the few-step preset on a CPU."""
from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from PIL import Image

from layers.backends import resolve_backend
from layers.backends import auto
from layers.backends.auto import CPU_PRESET, CPU_PRESET_DOWNLOAD_GB, CPU_STACK_SECONDS, choose, cpu_dtype
from layers.backends.base import ModelUnavailableError
from layers.backends.diffusers import PRESETS, TINY_DECODERS
from layers import models
from tiny_models import REVISION, put_in_hub_cache



def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cached_snapshot(hf_home, repo_id: str):
    return hf_home / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots" / REVISION


@pytest.fixture
def cached_lcm_only(online, tiny_lcm_dir):
    """The tiny LCM pipeline in the HF cache under the lcm-sd15 preset's ids (model and ControlNet)."""
    put_in_hub_cache(online, PRESETS["lcm-sd15"].model, tiny_lcm_dir)
    put_in_hub_cache(online, PRESETS["lcm-sd15"].controlnet, tiny_lcm_dir / "controlnet")
    return online


@pytest.fixture
def cached_lcm(cached_lcm_only, tiny_taesd_dir):
    """All the lcm-sd15 preset downloads on a CPU: the pipeline, its ControlNet and the tiny decoder."""
    put_in_hub_cache(cached_lcm_only, TINY_DECODERS["sd15"], tiny_taesd_dir)
    return cached_lcm_only


def test_auto_without_accelerator_or_weights_is_draft_at_once_with_how_to_opt_in(online, network_calls):
    backend, notice = resolve_backend("auto")
    assert backend.name == "draft"
    assert network_calls == [], "deciding must not touch the network"
    assert "\n" not in notice and notice.startswith("Draft mode")
    assert "no GPU here" in notice and "--backend diffusers" in notice
    assert f"about {CPU_PRESET_DOWNLOAD_GB:g} GB" in notice
    assert f"about {CPU_STACK_SECONDS[0]}-{CPU_STACK_SECONDS[1]} s" in notice


def test_auto_with_the_weights_in_the_hub_cache_loads_the_model_without_the_network(cached_cpu_preset,
                                                                                   network_calls):
    backend, notice = resolve_backend("auto")
    assert backend.name == "diffusers" and notice is None
    assert backend.model_info["preset"] == CPU_PRESET and backend.few_step
    assert backend.model_info["lora"] == PRESETS[CPU_PRESET].lora.info()
    assert backend.model_info["preset_chosen"] == "found in the local cache"
    assert backend.model_info["dtype"] == cpu_dtype()
    assert backend.model_info["decoder"] == "tiny" and type(backend.pipe.vae).__name__ == "AutoencoderTiny"
    assert network_calls == []


def test_auto_does_not_take_a_lora_preset_whose_lora_file_is_missing(cached_cpu_preset, network_calls):
    """Without its LoRA file the CPU preset is not downloaded: auto falls to the next model in the cache (SD1.5 with
    its own VAE, as the tiny pipeline has it), then, without that either, to draft; never to the network."""
    shutil.rmtree(cached_cpu_preset / "hub" / ("models--" + PRESETS[CPU_PRESET].lora.repo.replace("/", "--")))
    assert choose("auto", {})[:2] == ("diffusers", {"model": "sd15"})
    shutil.rmtree(cached_snapshot(cached_cpu_preset, PRESETS[CPU_PRESET].model) / "vae")
    assert choose("auto", {})[0] == "draft"
    assert network_calls == []


def test_auto_with_the_earlier_cpu_preset_cached_renders_with_it_offline(cached_lcm, network_calls):
    """A machine that downloaded lcm-sd15 (the CPU preset before hyper-sd15) keeps rendering with it, offline."""
    backend, notice = resolve_backend("auto")
    assert backend.name == "diffusers" and notice is None
    assert backend.model_info["preset"] == "lcm-sd15" and backend.guidance_embedding
    assert backend.model_info["decoder"] == "tiny" and backend.model_info["dtype"] == cpu_dtype()
    assert network_calls == []


def test_auto_with_the_preset_cached_but_not_the_tiny_decoder_decodes_with_the_full_vae_offline(cached_lcm_only,
                                                                                                 network_calls):
    backend, notice = resolve_backend("auto")
    assert backend.name == "diffusers" and notice is None and backend.model_info["preset"] == "lcm-sd15"
    assert backend.model_info["decoder"] == "full" and type(backend.pipe.vae).__name__ == "AutoencoderKL"
    assert network_calls == []


def test_under_the_tiny_decoder_the_models_own_vae_is_neither_needed_nor_loaded(cached_cpu_preset, network_calls):
    import torch

    shutil.rmtree(cached_snapshot(cached_cpu_preset, PRESETS[CPU_PRESET].model) / "vae")  # never downloaded
    backend, _ = resolve_backend("auto")
    assert backend.model_info["decoder"] == "tiny"
    assert backend.model_info["decoder_model"] == TINY_DECODERS["sd15"]
    conv = next(m for m in backend.pipe.vae.decoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # a third of its CPU time
    assert network_calls == []


def test_auto_with_a_model_half_downloaded_is_draft(online, tiny_sd15_dir, network_calls):
    put_in_hub_cache(online, PRESETS[CPU_PRESET].model, tiny_sd15_dir)
    (online / "hub" / ("models--" + PRESETS[CPU_PRESET].model.replace("/", "--")) / "snapshots" / REVISION / "unet"
     / "diffusion_pytorch_model.safetensors").unlink()
    backend, notice = resolve_backend("auto")
    assert backend.name == "draft" and "no model is downloaded yet" in notice
    assert network_calls == []


def test_auto_with_an_accelerator_picks_the_model_and_decides_offline(online, monkeypatch, network_calls):
    monkeypatch.setattr(auto, "accelerator", lambda: "cuda")
    assert choose("auto", {}) == ("diffusers", {}, None)
    # With HF_HUB_OFFLINE and nothing cached, the model load is what fails; its one line says which model.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend, notice = resolve_backend("auto")
    assert backend.name == "draft" and PRESETS["sd15"].model in notice and "HF_HUB_OFFLINE=1" in notice
    assert network_calls == []


@pytest.mark.parametrize("native, dtype", [(True, "bfloat16"), (False, "float32")])
def test_the_cpu_preset_renders_in_bfloat16_only_where_the_cpu_computes_it_natively(native, dtype, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert cpu_dtype() == dtype


def test_a_zero_gpu_space_counts_as_an_accelerator(monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert auto.accelerator() == "cuda"


def test_on_a_cpu_diffusers_defaults_to_the_few_step_preset_and_says_so(online):
    backend_name, options, notice = choose("diffusers", {})
    assert (backend_name, options) == ("diffusers", {"model": CPU_PRESET, "dtype": cpu_dtype(), "decoder": "tiny"})
    assert f"{CPU_PRESET} preset (1 step, {cpu_dtype()}, tiny decoder" in notice and "--model sd15" in notice
    assert "\n" not in notice and "--decoder full" in notice
    assert f"about {CPU_STACK_SECONDS[0]}-{CPU_STACK_SECONDS[1]} s" in notice
    assert choose("diffusers", {"dtype": "float32"})[1]["dtype"] == "float32"
    _, options, notice = choose("diffusers", {"decoder": "full"})
    assert options["decoder"] == "full" and "full decoder" in notice and "--decoder tiny" in notice
    assert choose("diffusers", {"model": "sd15"}) == ("diffusers", {"model": "sd15"}, None)
    assert choose("diffusers", {"device": "cuda"})[1] == {"device": "cuda"}


def test_the_cpu_default_preset_renders_and_the_manifest_records_it(cached_cpu_preset, tmp_path, capsys, monkeypatch,
                                                                   tiny_depth_anything_dir):
    """What a CPU user's `generate --backend diffusers` does: the few-step preset, the plate composition (its
    estimator in the cache too) with a seed's whole long prompt, the tiny decoder. The matte model is the offline
    one here: rembg would fetch its weights from outside the hub."""
    from layers.cli import main
    from layers.estimate import DEFAULT_DEPTH_MODEL

    from layers import estimate

    put_in_hub_cache(cached_cpu_preset, DEFAULT_DEPTH_MODEL, tiny_depth_anything_dir)
    monkeypatch.setattr(estimate, "_ESTIMATORS", {})  # loaded estimators are kept by id: keep this one to the test
    out = tmp_path / "stack"
    seed = Path(__file__).resolve().parents[1] / "seeds" / "000_masquerade_babel.txt"
    code = main(["generate", "--prompt-file", str(seed), "--backend", "diffusers",
                 "--matte-model", "closed-form", "--width", "64", "--height", "96", "--no-video", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"few-step {CPU_PRESET} preset" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["composition"] == "plate" and manifest["notices"] == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["preset"] == CPU_PRESET
    assert manifest["models"]["model"] == PRESETS[CPU_PRESET].model
    assert manifest["render"]["preset_chosen"] == "cpu default"
    assert manifest["options"]["steps"] == PRESETS[CPU_PRESET].steps == 1
    assert manifest["models"]["lora"] == {"id": "ByteDance/Hyper-SD", "file": "Hyper-SD15-1step-lora.safetensors",
                                          "scale": 1.0}
    assert manifest["render"]["dtype"] == cpu_dtype()
    assert (manifest["models"]["decoder"], manifest["models"]["decoder_model"]) == ("tiny", TINY_DECODERS["sd15"])
    with Image.open(out / "composite.png") as im:
        assert im.size == (64, 96)

    code = main(["generate", "--prompt", "a quiet harbour, a lighthouse, rocks", "--backend", "diffusers",
                 "--decoder", "full", "--width", "64", "--height", "96", "--no-video", "--out", str(tmp_path / "vae")])
    assert code == 0
    manifest = json.loads((tmp_path / "vae" / "manifest.json").read_text())
    assert manifest["models"]["decoder"] == "full" and manifest["render"]["preset_chosen"] == "cpu default"


def test_the_progress_bar_moves_while_the_tiny_decoder_decodes(cached_cpu_preset, monkeypatch):
    import numpy as np

    from layers.backends.base import RenderRequest, RenderSettings, step_text
    from layers.backends.diffusers import DiffusersBackend

    backend = DiffusersBackend(model=CPU_PRESET, decoder="tiny", dtype="float32")
    monkeypatch.setattr(backend, "progress_interval", 0.0)
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (96, 1))
    calls = []
    backend.render([RenderRequest(name="background", prompt="a harbour", negative_prompt="", control=ramp, prior=ramp, seed=1)],
                   RenderSettings(width=64, height=96, steps=2, guidance=0.0), progress=lambda *a: calls.append(a))
    decoding = [s for _, s, total in calls if step_text(s, total) == "decoding"]
    assert len(decoding) >= 2 and decoding == sorted(decoding) and all(1 < s < 2 for s in decoding)


def test_repainting_encodes_and_decodes_through_the_tiny_decoder(cached_cpu_preset):
    """Model-mode compose and decompose start from pixels: the tiny decoder's encoder takes them to latents."""
    import numpy as np

    from layers.backends.base import RenderSettings, RepaintRequest
    from layers.backends.diffusers import DiffusersBackend

    backend = DiffusersBackend(model=CPU_PRESET, decoder="tiny", dtype="float32")
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 64, 3), dtype=np.uint8))
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (96, 1))
    mask = np.zeros((96, 64), np.float32)
    mask[30:60, 20:40] = 1
    requests = [RepaintRequest(name="background", prompt="a harbour", negative_prompt="", image=picture,
                               control=ramp, seed=3, mask=mask),
                RepaintRequest(name="composite", prompt="a harbour", negative_prompt="", image=picture,
                               control=ramp, seed=3, denoise=0.5)]
    out = backend.repaint(requests, RenderSettings(width=64, height=96, steps=2, guidance=0.0))
    inpainted, redrawn = (np.asarray(im) for im in out.images)
    assert inpainted.shape == redrawn.shape == (96, 64, 3)
    assert (inpainted[mask == 0] == np.asarray(picture)[mask == 0]).all()  # kept outside the mask
    assert np.abs(inpainted[mask == 1].astype(int) - np.asarray(picture)[mask == 1]).mean() > 5
    assert type(backend.repaint_pipeline("inpaint").vae).__name__ == "AutoencoderTiny"


@pytest.fixture(scope="module")
def model_libraries():
    """Import the model libraries before timing a load (their import is seconds, not a hub wait)."""
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    from layers.backends.diffusers import _import_diffusers
    _import_diffusers()


@pytest.mark.parametrize("load", ["diffusers", "depth"])
def test_with_the_hub_unreachable_a_load_fails_in_one_line_at_once(load, online, monkeypatch, model_libraries):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    t = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        if load == "diffusers":
            from layers.backends.diffusers import DiffusersBackend

            DiffusersBackend(model=CPU_PRESET)
        else:
            from layers.estimate import estimate_depth

            estimate_depth(__import__("numpy").zeros((8, 8, 3), "uint8"))
    assert time.perf_counter() - t < 2.0
    text = str(err.value)
    assert "\n" not in text and f"the hub {endpoint} cannot be reached (connection refused)" in text
    assert "hf download" in text


def test_reference_with_the_hub_unreachable_is_one_line_and_exit_2(online, monkeypatch, tmp_path, capsys,
                                                                  model_libraries):
    from PIL import Image

    from layers.cli import main

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    Image.new("RGB", (32, 24), (90, 120, 200)).save(tmp_path / "ref.png")
    t = time.perf_counter()
    code = main(["generate", "--prompt", "a hall, a figure", "--reference", str(tmp_path / "ref.png"),
                 "--backend", "draft", "--out", str(tmp_path / "out")])
    seconds = time.perf_counter() - t
    err = capsys.readouterr().err
    assert code == 2 and seconds < 2.0
    assert len(err.strip().splitlines()) == 1 and "cannot be reached" in err
    assert not (tmp_path / "out").exists()


def test_hub_offline_loads_touch_no_network(online, monkeypatch, network_calls):
    from layers.backends.diffusers import DiffusersBackend

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE=1"):
        DiffusersBackend(model=CPU_PRESET)
    assert network_calls == []


def test_reachability_goes_through_the_proxy_and_is_asked_once(monkeypatch):
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(4)
        port = proxy.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # no such name: only the proxy is reachable
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert models.hub_unreachable_reason() is None
        assert models.hub_unreachable_reason() is None
        proxy.settimeout(0.5)
        proxy.accept()[0].close()
        with pytest.raises(socket.timeout):
            proxy.accept()  # the second answer came from the record
        monkeypatch.setattr(models, "REACHABILITY_TTL_SECONDS", 0.0)
        assert models.hub_unreachable_reason() is None
        proxy.accept()[0].close()  # an old answer is asked again (a long-running studio)


def test_a_download_is_announced_to_listeners(monkeypatch):
    heard = []
    with socket.socket() as hub:
        hub.bind(("127.0.0.1", 0))
        hub.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.getsockname()[1]}")
        models.add_load_listener(heard.append)
        try:
            models.require_hub(models.parse_model_source("org/model", "model"), "model")
        finally:
            models.remove_load_listener(heard.append)
    assert len(heard) == 1 and heard[0].startswith("downloading model org/model from http://127.0.0.1:")


def test_while_the_model_loads_the_studio_address_shows_the_load_line(tmp_path, monkeypatch):
    import urllib.request

    from layers.loading_page import STATUS_PATH, LoadingPage

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    port = closed_port()
    page = LoadingPage("127.0.0.1", port).start()
    try:
        models.load_pretrained(lambda *a, **k: None, models.parse_model_source("org/some-model", "model"), "model",
                               local_only=True)
        blobs = tmp_path / "hf_home" / "hub" / "models--org--some-model" / "blobs"
        blobs.mkdir(parents=True)
        (blobs / "abc.incomplete").write_bytes(b"\0" * 3_000_000)  # a download under way
        front = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        status = urllib.request.urlopen(f"http://127.0.0.1:{port}{STATUS_PATH}", timeout=5).read().decode()
    finally:
        page.stop()
    assert "Layercake is loading its model" in front and "loading model org/some-model" in front
    assert status.startswith("loading model org/some-model; 3 MB downloaded so far")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gradio binds
        s.bind(("127.0.0.1", port))  # the port is free again for the studio


def test_any_sdxl_model_takes_its_own_tiny_decoder_when_asked(online, tiny_sdxl_dir, tiny_taesd_dir, network_calls):
    """--decoder tiny on an SDXL model loads the SDXL latent space's TAESD (madebyollin/taesdxl), and renders."""
    import numpy as np

    from layers.backends.base import RenderRequest, RenderSettings
    from layers.backends.diffusers import DiffusersBackend

    put_in_hub_cache(online, TINY_DECODERS["sdxl"], tiny_taesd_dir)
    backend = DiffusersBackend(model=str(tiny_sdxl_dir), decoder="tiny", dtype="float32")
    assert backend.family == "sdxl" and backend.model_info["decoder_model"] == TINY_DECODERS["sdxl"]
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    out = backend.render([RenderRequest(name="background", prompt="a harbour", negative_prompt="", control=ramp,
                                        prior=ramp, seed=1)], RenderSettings(width=64, height=64, steps=2))
    assert out.images[0].size == (64, 64)
    assert network_calls == []


def test_the_studio_takes_the_decoder_from_its_flag_or_the_environment(cached_cpu_preset, monkeypatch, tmp_path):
    import app
    from layers.studio import Studio

    monkeypatch.setenv("LAYERCAKE_DECODER", "full")
    args = app.parse_args([])
    assert args.decoder == "full" and app.parse_args(["--decoder", "tiny"]).decoder == "tiny"
    studio = Studio.create("diffusers", decoder=args.decoder, output_root=tmp_path / "outputs")
    assert studio.backend.model_info["decoder"] == "full"
    assert any("full decoder" in line for line in studio.notices)
