"""Session-wide test setup: no hub access, and tiny real-format models built once per session on demand.

The tiny models are written with save_pretrained into a session temp folder and loaded by the tests the way a
user's `--model DIR` / `--depth-model DIR` is loaded. Each is built only when a test asks for it.
"""
from __future__ import annotations

import os
import socket

import pytest

# Nothing in the tests may download; with this set, a missing model fails at once instead of after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# pymatting's numba kernels run on OpenMP, whose idle threads spin after each parallel region; torch shares the
# runtime, and on 2 cores every torch op after a matting call then ran 8-10x slower (measured: a tiny render
# 0.55 s -> 5.4 s). Idle OpenMP threads that sleep instead cost nothing measurable. Read when torch loads it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory):
    """Session folder the tiny models are saved in (and torch on one thread for them).

    The tiny models' ops are too small to split across threads: on a shared 2-core machine two torch
    threads spin-wait on each other and a 0.3 s render takes 3-6 s. Real-size models keep torch's default.
    """
    import torch

    torch.set_num_threads(1)
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_sd15_dir(tiny_models_root):
    """A tiny SD1.5-family ControlNet pipeline folder (its depth ControlNet in controlnet/)."""
    from tiny_models import build_sd15

    return build_sd15(tiny_models_root / "sd15")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tiny_models_root):
    """A tiny SDXL-family ControlNet pipeline, saved under a name that says SD1.5: the family must come from
    the model's own files."""
    from tiny_models import build_sdxl

    return build_sdxl(tiny_models_root / "sd15-looking-name")


@pytest.fixture(scope="session")
def tiny_lcm_dir(tiny_models_root):
    """A tiny LCM-style (few-step, guidance-embedding UNet + LCMScheduler) SD1.5 ControlNet pipeline."""
    from tiny_models import build_sd15

    return build_sd15(tiny_models_root / "lcm", few_step=True)


@pytest.fixture(scope="session")
def tiny_taesd_dir(tiny_models_root):
    """A tiny AutoencoderTiny (TAESD's architecture), the CPU preset's decoder."""
    from tiny_models import build_taesd

    return build_taesd(tiny_models_root / "taesd")


@pytest.fixture(scope="session")
def tiny_depth_anything_dir(tiny_models_root):
    """A tiny relative Depth Anything depth estimator (inverse depth: larger = nearer)."""
    from tiny_models import build_depth_anything

    return build_depth_anything(tiny_models_root / "depth_anything")


@pytest.fixture(scope="session")
def tiny_depth_anything_metric_dir(tiny_models_root):
    """The same tiny Depth Anything weights as a metric model (distance: larger = farther)."""
    from tiny_models import build_depth_anything

    return build_depth_anything(tiny_models_root / "depth_anything_metric", metric=True)


@pytest.fixture(scope="session")
def tiny_dpt_dir(tiny_models_root):
    """A tiny DPT depth estimator."""
    from tiny_models import build_dpt

    return build_dpt(tiny_models_root / "dpt")


@pytest.fixture(scope="module")
def sd15(tiny_sd15_dir):
    """A DiffusersBackend on the tiny SD1.5 folder, loaded the user's way; one per test module (tests change its
    settings, e.g. injected out-of-memory errors, so modules do not share it)."""
    from layers.backends.diffusers import DiffusersBackend

    return DiffusersBackend(model=str(tiny_sd15_dir))


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir):
    """A DiffusersBackend on the tiny SDXL folder, one per test module."""
    from layers.backends.diffusers import DiffusersBackend

    return DiffusersBackend(model=str(tiny_sdxl_dir))


# ------------------------------------------------------------------------ the hub, refused or held in a local cache

@pytest.fixture
def network_calls(monkeypatch):
    """Every outbound connection and name lookup is refused and recorded."""
    calls = []

    def refuse(self, address, *a, **k):
        calls.append(address)
        raise OSError("network blocked by the test")

    def no_lookup(host, *a, **k):
        calls.append(host)
        raise socket.gaierror("name lookup blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    return calls


@pytest.fixture
def online(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE unset (for this project's code and for the hub client), an empty HF cache, no GPU."""
    import huggingface_hub.constants as hub_constants

    from layers.backends import auto

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_TELEMETRY", hub_constants.HF_HUB_DISABLE_TELEMETRY)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(auto, "accelerator", lambda: None)
    return tmp_path / "hf_home"


@pytest.fixture(scope="session")
def tiny_sd15_lora(tiny_models_root, tiny_sd15_dir):
    """A random LoRA for the tiny SD1.5 UNet in the hub's few-step LoRA format (tiny_models.build_lora)."""
    from tiny_models import build_lora

    return build_lora(tiny_sd15_dir, tiny_models_root / "sd15_lora" / "lora.safetensors")


@pytest.fixture
def cached_cpu_preset(online, tiny_sd15_dir, tiny_sd15_lora, tiny_taesd_dir):
    """Everything the CPU preset (hyper-sd15) downloads, in the HF cache under its ids: the tiny SD1.5 pipeline as
    the base model, its ControlNet, the tiny LoRA under the preset's LoRA file name, and the tiny decoder."""
    from layers.backends.auto import CPU_PRESET
    from layers.backends.diffusers import PRESETS, TINY_DECODERS
    from tiny_models import put_file_in_hub_cache, put_in_hub_cache

    preset = PRESETS[CPU_PRESET]
    put_in_hub_cache(online, preset.model, tiny_sd15_dir)
    put_in_hub_cache(online, preset.controlnet, tiny_sd15_dir / "controlnet")
    put_file_in_hub_cache(online, preset.lora.repo, preset.lora.file, tiny_sd15_lora)
    put_in_hub_cache(online, TINY_DECODERS["sd15"], tiny_taesd_dir)
    return online
