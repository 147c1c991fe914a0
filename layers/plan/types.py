"""What a plan is: `ScenePlan` and its `LayerPlan`s, the layer names, the planner's limits and the layer seeds."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Callable, Mapping


LAYER_NAMES: tuple[str, ...] = ("background", "midground", "foreground")
"""Layer names, back to front. One spelling everywhere."""

MAX_PROMPT_CHARS = 20_000
MAX_SIDE = 2048
MIN_SIDE = 64

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text, BOS/EOS included (like a CLIP tokenizer's input_ids length)."""


@dataclass(frozen=True)
class LayerPlan:
    """One layer of the scene, as the renderer will see it."""

    name: str
    """One of LAYER_NAMES."""
    prompt: str
    """Full prompt for this layer: its own clauses first, then the shared style; within the token budget."""
    negative_prompt: str
    seed: int
    """Per-layer seed derived from the scene seed (or overridden)."""
    clauses: tuple[str, ...] = ()
    """The clauses of the scene prompt that were placed in this layer and kept, most important first."""
    dropped: tuple[str, ...] = ()
    """Clauses (or style words) that did not fit the token budget; never silently lost."""
    tokens: int = 0
    """Token count of `prompt` under the plan's token counter (BOS/EOS included)."""
    placeholder: bool = False
    """True when no clause of the prompt landed in this layer and `clauses` holds a made-up default."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["clauses"] = list(self.clauses)
        d["dropped"] = list(self.dropped)
        return d


@dataclass(frozen=True)
class ScenePlan:
    """The whole scene: three layers back to front plus what they share."""

    prompt: str
    seed: int
    width: int
    height: int
    aspect: str
    """Aspect ratio as written, normalised "W:H" (e.g. "2:3")."""
    style: str
    """Shared style (lighting, colour grade, medium, quality words) added to every layer prompt."""
    figures: int
    """How many figures the midground holds (read from the prompt, e.g. "two figures" -> 2)."""
    layers: tuple[LayerPlan, ...]
    token_budget: int = 77
    light_direction: str = "top"
    """Where the key/rim light comes from: left, right, top, back, front (read from the prompt)."""
    palette: tuple[str, ...] = ()
    """Colour words found in the prompt, most prominent first (e.g. ("gold", "carmine", "velvet blue"))."""
    setting: str = ""
    """Where the background is: "indoor" (hall, chamber, archive), "outdoor" (hill, sky, forest) or "" (unsaid)."""

    def layer(self, name: str) -> LayerPlan:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise ValueError(f"unknown layer {name!r}; choose one of {', '.join(LAYER_NAMES)}")

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "aspect": self.aspect,
            "style": self.style,
            "figures": self.figures,
            "token_budget": self.token_budget,
            "light_direction": self.light_direction,
            "palette": list(self.palette),
            "setting": self.setting,
            "layers": [lp.to_dict() for lp in self.layers],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "ScenePlan":
        layers = tuple(
            LayerPlan(
                name=x["name"], prompt=x["prompt"], negative_prompt=x["negative_prompt"], seed=int(x["seed"]),
                clauses=tuple(x.get("clauses", ())), dropped=tuple(x.get("dropped", ())), tokens=int(x.get("tokens", 0)),
                placeholder=bool(x.get("placeholder", False)),
            )
            for x in d["layers"]
        )
        return cls(
            prompt=d["prompt"], seed=int(d["seed"]), width=int(d["width"]), height=int(d["height"]),
            aspect=d["aspect"], style=d["style"], figures=int(d["figures"]), layers=layers,
            token_budget=int(d.get("token_budget", 77)), light_direction=d.get("light_direction", "top"),
            palette=tuple(d.get("palette", ())), setting=d.get("setting", ""),
        )


MAX_SEED = 2**63 - 1
"""Largest accepted scene seed (fits a signed 64-bit integer)."""
MAX_LAYER_SEED = 2**31 - 1
"""Per-layer seeds are in 0..MAX_LAYER_SEED (every generator accepts them)."""
MAX_ASPECT = 4.0
"""The longer side may be at most this many times the shorter one."""
MIN_TOKEN_BUDGET = 4
MAX_TOKEN_BUDGET = 100_000
STYLE_SHARE = 0.4
"""At most this share of the token budget goes to the shared style before the layer's own phrases."""

SUBJECT_FRAMING = "isolated on a plain backdrop"
"""Added after the phrases of the midground and foreground prompts: those layers are rendered as isolated
subjects on a plain backdrop so that matting can separate them. Renderers should not add it again."""

LIGHT_DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "back", "front")


def layer_seed(seed: int, name: str) -> int:
    """The seed of one layer, derived from the scene seed with a stable hash.

    Args:
        seed: the scene seed.
        name: the layer name.

    Returns:
        An integer in 0..MAX_LAYER_SEED, the same on every run and machine.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (MAX_LAYER_SEED + 1)
