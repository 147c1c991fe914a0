"""Every setting a user reaches gives a stack, or is refused before any model runs.

Steps 1-5 (the studio's Steps slider starts at 1) x composition plate / scaffold x harmonising on / off x the plate
flow's layer denoise, fill denoise and ControlNet end at the low and high ends of their range (0, 1] and at their
defaults (the SD1.5 preset's, and the few-step preset's 0.75 and 0.5), covered pairwise: every value of each setting
meets every value of every other in at least one stack. The CLI flags --layer-denoise, --fill-denoise, --control-end
take any value in (0, 1]; the low end is taken as 0.05, the smallest a 0.05-step slider offers.

Each combination runs the user's path (generate, then write_outputs) on a tiny SD1.5 depth-ControlNet pipeline and a
tiny Depth Anything estimator in their real formats, and must end in a complete stack (the PSD, the manifest, and
the plate with its depth in the plate composition), or in a ValueError raised before the UNet ran once (counted by
a forward hook on it). Regenerating one layer of a plate stack must give a stack at every step count 1-5.
"""
from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from layers.pipeline import GenerateOptions, generate, load_result, regenerate_layer, write_outputs
from test_diffusers_backend import UNetBatches  # a forward hook on the UNet: one entry per call

PROMPT = ("Far beyond the gate, a ruined aqueduct under moonlight, a knight kneels in the middle ground "
          "holding a lantern, sparks and broken stones scattered in the foreground")
W, H = 64, 96

LOW = 0.05
SETTINGS = {
    "steps": (1, 2, 3, 4, 5),
    "composition": ("plate", "scaffold"),
    "harmonize": (0.25, 0.0),
    "layer_denoise": (LOW, 0.55, 1.0),
    "fill_denoise": (LOW, 0.75, 1.0),
    "control_end": (LOW, 0.5, 1.0),
}
"""Each setting's values: the range's ends and the defaults (GenerateOptions', and the few-step preset's)."""


def pairwise(settings: dict[str, tuple]) -> list[dict]:
    """Rows covering every pair of values of every two settings (greedy: each row the first of the full product that
    covers the most pairs not covered yet), deterministic."""
    names = list(settings)
    product = [dict(zip(names, values)) for values in itertools.product(*settings.values())]

    def pairs(row):
        return {(a, row[a], b, row[b]) for a, b in itertools.combinations(names, 2)}

    todo = set().union(*(pairs(row) for row in product))
    rows = []
    while todo:
        best = max(product, key=lambda row: len(pairs(row) & todo))
        rows.append(best)
        todo -= pairs(best)
    return rows


DEFAULTS = {"harmonize": 0.25, "layer_denoise": 0.55, "fill_denoise": 1.0, "control_end": 1.0}
NAMED = ([dict(DEFAULTS, steps=s, composition="plate") for s in (1, 2, 3, 4)]
         + [dict(DEFAULTS, steps=4, composition="plate", layer_denoise=0.1)])
"""The cases that were seen to fail after the plate: the plate flow at 1, 2, 3 and 4 steps, and a layer denoise of
0.1 at 4 steps."""
CASES = NAMED + [row for row in pairwise(SETTINGS) if row not in NAMED]


def runs_a_step(steps: int, denoise: float) -> bool:
    """Whether an img2img / inpaint pass of `denoise` runs at least one of `steps` steps as asked (diffusers runs
    int(steps * denoise) of them)."""
    return int(steps * denoise) >= 1


def failed_before(case: dict) -> bool:
    """Whether the plate flow used to end in an error after the plate ("runs no step"): a pass whose denoise rounds
    to no step of `steps`. Every pass now runs at least one. The scaffold composition renders each layer from noise
    over all its steps."""
    if case["composition"] != "plate":
        return False
    steps = case["steps"]
    passes = [case["layer_denoise"], case["fill_denoise"]] + ([case["harmonize"]] if case["harmonize"] > 0 else [])
    return not all(runs_a_step(steps, d) for d in passes)


def case_id(case: dict) -> str:
    return (f"{case['composition']}-steps{case['steps']}-harm{case['harmonize']}-layer{case['layer_denoise']}"
            f"-fill{case['fill_denoise']}-end{case['control_end']}")


def param(case: dict):
    return pytest.param(case, id=case_id(case))


@pytest.fixture(scope="module")
def backend(tiny_sd15_dir):
    from layers.backends.diffusers import DiffusersBackend

    return DiffusersBackend(model=str(tiny_sd15_dir))


def options(case: dict, depth_model) -> GenerateOptions:
    return GenerateOptions(steps=case["steps"], composition=case["composition"], harmonize=case["harmonize"],
                           layer_denoise=case["layer_denoise"], fill_denoise=case["fill_denoise"],
                           control_end=case["control_end"], depth_model=str(depth_model), matte_model="closed-form",
                           video=False, frames=2, formats=("psd",))


def assert_complete(folder, case: dict) -> dict:
    """The folder holds a complete stack: PSD, manifest (written last), and the plate in the plate composition."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert (folder / "stack.psd").stat().st_size > 0
    for name in ("background", "midground", "foreground"):
        assert (folder / "layers" / f"{name}.png").is_file()
    plate = case["composition"] == "plate"
    assert (folder / "plate.png").is_file() == plate and (folder / "depth" / "plate.png").is_file() == plate
    return manifest


def test_the_matrix_covers_every_pair_of_values_and_the_cases_seen_failing():
    rows = pairwise(SETTINGS)
    names = list(SETTINGS)
    for a, b in itertools.combinations(names, 2):
        for va, vb in itertools.product(SETTINGS[a], SETTINGS[b]):
            assert any(row[a] == va and row[b] == vb for row in rows), (a, va, b, vb)
    assert len(rows) < 30 and all(case in CASES for case in NAMED)
    assert any(failed_before(case) for case in CASES) and not all(failed_before(case) for case in CASES)


@pytest.mark.parametrize("case", [param(case) for case in CASES])
def test_every_combination_gives_a_stack_or_is_refused_before_any_model_call(case, backend, tiny_depth_anything_dir,
                                                                            tmp_path):
    chosen = options(case, tiny_depth_anything_dir)
    with UNetBatches(backend.pipe) as unet:
        try:
            result = generate(PROMPT, backend, seed=5, width=W, height=H, options=chosen)
        except ValueError as exc:
            assert not unet.sizes, f"refused after {len(unet.sizes)} UNet calls: {exc}"
            assert "\n" not in str(exc)
            assert not failed_before(case), f"a pass with too few steps must run one, not be refused: {exc}"
            return
    files = write_outputs(result, tmp_path / "out")
    manifest = assert_complete(tmp_path / "out", case)
    assert manifest["options"]["steps"] == case["steps"] and set(files) >= {"psd", "manifest"}
    assert unet.sizes


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
def test_regenerating_a_layer_of_a_plate_stack_works_at_every_step_count(steps, backend, tiny_depth_anything_dir,
                                                                        tmp_path):
    """A stack made at 5 steps (every pass has a step to run as asked), reloaded from its folder, its midground
    regenerated at `steps`: the regeneration's layer img2img and harmonising pass run at those steps. Every step
    count the studio offers can run, so none may be refused."""
    made = dict(DEFAULTS, steps=5, composition="plate")
    first = generate(PROMPT, backend, seed=5, width=W, height=H, options=options(made, tiny_depth_anything_dir))
    write_outputs(first, tmp_path / "first")
    loaded = load_result(tmp_path / "first")
    loaded = dataclasses.replace(loaded, options=dataclasses.replace(loaded.options, steps=steps))
    with UNetBatches(backend.pipe) as unet:
        result = regenerate_layer(loaded, "midground", backend, seed=11)
    write_outputs(result, tmp_path / "again")
    assert_complete(tmp_path / "again", made)
    assert unet.sizes
