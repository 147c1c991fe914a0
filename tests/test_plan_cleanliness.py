"""Layer prompts read as prompts: no fragments left once cue words and style terms are cut out (issue 8, step 6)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from layers.plan import words as plan_words
from layers.plan import SUBJECT_FRAMING, plan_scene

SEEDS = sorted((Path(__file__).resolve().parent.parent / "seeds").glob("*.txt"))
LABELS = re.compile(r"\b(?:lighting|light|style|colou?rs?|palette|medium|quality|fore[\s-]?ground|back[\s-]?ground|"
                    r"mid[\s-]?ground)\s*:", re.IGNORECASE)


def content_pieces(plan, name):
    """The comma pieces of a layer prompt that came from the scene (its framing and the shared style left out)."""
    prompt = plan.layer(name).prompt
    for tail in [plan.style, SUBJECT_FRAMING]:
        if tail:
            prompt = prompt.replace(tail, "")
    return [p.strip() for p in prompt.split(",") if p.strip()]


def dangling(piece: str) -> str | None:
    words = piece.split()
    if words[-1].lower() in plan_words.DANGLING_END_WORDS:
        return f"ends on {words[-1]!r}"
    if words[0].lower() in plan_words.DANGLING_START_WORDS:
        return f"starts with {words[0]!r}"
    return None


PROMPTS = [
    "Far beyond the gate, a ruined aqueduct under moonlight. Lighting: soft fog and cold moonlight. "
    "A knight kneels in the foreground.",
    "Wide shot of a flooded station, a girl with a red umbrella wading, neon cyan and rust color grade",
    "a monk asleep on a bridge in a snowy valley",
    "Behind the dancers, a cathedral of glass; in the foreground, and shattered lanterns. Style: ink illustration",
    "A fox in the snow, mist over the pines, teal and orange palette, at dusk",
]


@pytest.mark.parametrize("source", [p.read_text(encoding="utf-8") for p in SEEDS] + PROMPTS,
                         ids=[p.stem for p in SEEDS] + [f"prompt{i}" for i in range(len(PROMPTS))])
def test_no_layer_prompt_piece_starts_or_ends_with_a_dangling_word_or_keeps_a_label(source):
    plan = plan_scene(source, 0)
    for layer in plan.layers:
        assert not LABELS.search(layer.prompt), (layer.name, layer.prompt)
        for piece in content_pieces(plan, layer.name):
            assert dangling(piece) is None, (layer.name, piece, dangling(piece))


def test_a_leading_far_beyond_clause_places_the_rest_far_back_and_leaves_nothing_behind():
    plan = plan_scene(PROMPTS[0], 0)
    background = plan.layer("background").prompt
    assert "ruined aqueduct" in background
    assert not re.search(r"\b(?:far|beyond|gate)\b", background, re.IGNORECASE), background
    # "Lighting:" is a label, not a layer's words: what it labels is the shared style, in every layer
    assert "soft fog and cold moonlight" in plan.style
    for layer in plan.layers:
        assert "lighting" not in layer.prompt.lower()
        assert layer.prompt.endswith("soft fog and cold moonlight")
    assert "knight kneels" in plan.layer("foreground").prompt


def test_a_shot_size_keeps_its_noun_and_a_colour_pair_stays_whole_in_the_shared_style():
    plan = plan_scene(PROMPTS[1], 0)
    assert "Wide of" not in " ".join(lp.prompt for lp in plan.layers)
    assert "neon cyan and rust color grade" in plan.style.split(", ")
    midground = plan.layer("midground").prompt
    assert "girl with a red umbrella wading" in midground
    assert not re.search(r"\bneon cyan and\s*,", midground)


@pytest.mark.parametrize("prompt, shared", [
    ("a ruined aqueduct under moonlight, a knight kneeling in the foreground", "moonlight"),
    ("a lighthouse in thick fog, a sailor on the pier", "thick fog"),
    ("a fox in the snow, mist over the pines, teal and orange palette", "teal and orange palette"),
    ("a fox in the snow, mist over the pines, teal and orange palette", "mist over the pines"),
])
def test_colour_and_light_terms_are_shared_by_every_layer_not_left_in_one(prompt, shared):
    plan = plan_scene(prompt, 0)
    assert shared in plan.style.split(", "), plan.style
    assert all(lp.prompt.count(shared) == 1 and lp.prompt.endswith(plan.style) for lp in plan.layers)


def test_a_one_clause_prompt_still_gives_the_background_its_setting():
    plan = plan_scene(PROMPTS[2], 0)
    assert "snowy valley" in plan.layer("background").prompt
    assert "monk" not in plan.layer("background").prompt
    assert "monk asleep" in plan.layer("midground").prompt

