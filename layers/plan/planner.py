"""Planning: `plan_scene` runs the rules in order and assembles the ScenePlan; `with_layer` re-plans one layer."""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from .aspect import joined_segments, size_for_aspect, _aspect_label, _cut_spans, _find_aspect
from .budget import _budget_layer, _fit_terms, _negative_prompt
from .checks import check_prompt, _check_int, _check_overrides, _check_side, _checked_counter
from .cues import _find_cue
from .facts import _count_figures, _explicit_count, _light_direction, _named_characters, _palette, _setting
from .placement import _place
from .scoring import _WORD_RE, _lookup, _stem
from .segments import (
    _EDGE_PUNCT, _PHRASE_CHARS, _SENTENCE_CHARS, _STYLE_LABEL, _Phrase, _clean, _comma_pieces, _phrase_cut, _segments,
    _sentence_cut, _split_at, _split_phrases,
)
from .style import _extract_style, _style_terms
from .types import (
    LAYER_NAMES, MAX_SEED, MAX_SIDE, MAX_TOKEN_BUDGET, MIN_SIDE, MIN_TOKEN_BUDGET, SUBJECT_FRAMING, LayerPlan,
    ScenePlan, TokenCounter, layer_seed,
)
from .words import DANGLING_END_WORDS, DANGLING_START_WORDS, _OUTDOOR, _STOPWORDS


def _placeholder(name: str, full_text: str, figures: int) -> str:
    """A default prompt for a layer no phrase landed in, made from the nouns of the scene."""
    if name == "midground":
        return "a figure" if figures == 1 else f"{['two', 'three', 'four'][figures - 2]} figures"
    found: list[str] = []
    previous = ""
    for m in _WORD_RE.finditer(full_text):
        w = m.group().lower()
        if any(layer == name and weight >= 1.0 for layer, weight in _lookup(w)) and w != name:
            if _stem(w) not in (_stem(f.split()[-1]) for f in found):
                # "a snowy valley": the word before a setting noun says what kind it is, unless it is a noun of
                # another layer or a function word
                qualified = previous and previous not in _STOPWORDS and not _lookup(previous)
                found.append(f"{previous} {w}" if qualified else w)
        previous = w
        if len(found) == 3:
            break
    if name == "background":
        outdoor = any(_stem(w) in _OUTDOOR for w in found)
        base = "vast open landscape" if outdoor else "vast interior architecture"
    else:
        base = "scattered debris and particles close to the lens"
    return ", ".join([base] + found)


def _tidy(text: str) -> str:
    """A phrase that reads as a prompt: no leading conjunction or label, no trailing preposition, article or
    conjunction left where cue words and style terms were cut out."""
    prev = None
    while prev != text:
        prev = text
        text = _clean(_LABEL_LEFTOVER_RE.sub("", text))
        words = text.split()
        while words and words[-1].lower().strip(_EDGE_PUNCT) in DANGLING_END_WORDS:
            words.pop()
        while words and words[0].lower().strip(_EDGE_PUNCT) in DANGLING_START_WORDS:
            words.pop(0)
        text = _clean(" ".join(words))
    return text


_LABEL_LEFTOVER_RE = re.compile(rf"(?:^|(?<=,))\s*(?:{_STYLE_LABEL}|fore[\s-]?ground|back[\s-]?ground|mid[\s-]?ground)"
                                rf"\s*(?:[:—–]|$)", re.IGNORECASE)


def _candidates(phrases: list[_Phrase], name: str) -> list[str]:
    mine = [ph for ph in phrases if ph.layer == name]
    mine.sort(key=lambda ph: (ph.tier, -round(ph.relevance, 6), ph.index))
    out: list[str] = []
    seen: set[str] = set()
    for ph in mine:
        text = _tidy(ph.text)
        if text and text.lower() not in seen:
            seen.add(text.lower())
            out.append(text)
    return out


def _override_phrases(text: str) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for seg in _segments(text):
        for sent in _split_at(seg.text, _sentence_cut, _SENTENCE_CHARS + ";"):
            for part in _split_at(sent, _phrase_cut, _PHRASE_CHARS):
                for piece in _comma_pieces(part):
                    c = _clean(piece)
                    if c and c.lower() not in seen:
                        seen.add(c.lower())
                        out.append(c)
    return out


def plan_scene(prompt: str, seed: int = 0, *, width: int | None = None, height: int | None = None,
               token_budget: int = 77, count_tokens: TokenCounter | None = None,
               overrides: Mapping[str, str] | None = None) -> ScenePlan:
    """Plan a layered scene from one dense prompt.

    Args:
        prompt: the scene description (plain text or light markdown).
        seed: scene seed, 0..MAX_SEED; the layer seeds derive from it.
        width: image width in pixels (64..2048, a multiple of 8); default from the prompt's aspect.
        height: image height in pixels (64..2048, a multiple of 8); default from the prompt's aspect.
        token_budget: tokens each layer prompt may take, BOS/EOS included (77 for CLIP).
        count_tokens: token counter of the text encoder; default `count_tokens_approx`.
        overrides: layer name -> text that replaces that layer's own phrases.

    Returns:
        The ScenePlan: size, aspect, shared style, figure count, light direction, palette and the three
        layer plans back to front.

    Raises:
        ValueError: a bad prompt (see `check_prompt`), seed, size, aspect, budget, counter or override.
    """
    text = check_prompt(prompt)
    _check_int(seed, "seed", 0, MAX_SEED)
    if width is not None:
        _check_side(width, "width")
    if height is not None:
        _check_side(height, "height")
    _check_int(token_budget, "token budget", MIN_TOKEN_BUDGET, MAX_TOKEN_BUDGET)
    count = _checked_counter(count_tokens)
    layer_overrides = _check_overrides(overrides)

    segments = _segments(text)
    # The aspect is read from the whole text at once (it may sit anywhere) and cut out of every segment.
    joined = joined_segments(segments)
    found, spans = _find_aspect(joined)
    if spans:
        for seg, new in zip(segments, _cut_spans(joined, spans).split("\x00")):
            seg.text = new.strip()
        segments = [s for s in segments if _clean(s.text)]
    aw, ah, aspect = found if found is not None else (2, 3, "2:3")
    if width is not None and height is not None:
        w, h = width, height
        aspect = _aspect_label(w, h)
    elif width is not None:
        w = width
        h = max(MIN_SIDE, min(MAX_SIDE, 8 * round(width * ah / aw / 8)))  # the aspect asked for, to 8 px
    elif height is not None:
        h = height
        w = max(MIN_SIDE, min(MAX_SIDE, 8 * round(height * aw / ah / 8)))
    else:
        w, h = size_for_aspect(aw, ah)

    full = "\n".join(s.text for s in segments)
    names = _named_characters(full)
    name_set = frozenset(names)
    phrases = _split_phrases(segments)
    # Cues are found before style extraction so that "no ..." phrases with a cue stay in their layer.
    for ph in phrases:
        c = _find_cue(ph.text)
        ph.cue = c[0] if c else None
    found_terms, neg_bg, neg_all, phrases = _extract_style(phrases)
    for ph in phrases:
        ph.cue = None
    style = _style_terms(found_terms)
    _place(phrases, name_set)

    mid_text = layer_overrides.get("midground") or " ".join(ph.text for ph in phrases if ph.layer == "midground")
    figures = _count_figures(mid_text, full, names)
    if "midground" in layer_overrides:
        n = _explicit_count(layer_overrides["midground"])
        figures = max(1, min(4, n)) if n else figures

    layers = []
    for name in LAYER_NAMES:
        placeholder = False
        if name in layer_overrides:
            cands = _override_phrases(layer_overrides[name]) or [layer_overrides[name]]
        else:
            cands = _candidates(phrases, name)
        if not cands:
            # Nouns of explicitly placed phrases stay where the prompt put them.
            cands = [_placeholder(name, " ".join(ph.text for ph in phrases if ph.tier == 2), figures)]
            placeholder = True
        framing = SUBJECT_FRAMING if name != "background" else None
        prompt_text, kept, dropped, tokens = _budget_layer(cands, framing, style, token_budget, count)
        negative, lost = _negative_prompt(name, neg_bg, neg_all, token_budget, count)
        layers.append(LayerPlan(
            name=name, prompt=prompt_text, negative_prompt=negative, seed=layer_seed(seed, name),
            clauses=tuple(kept), dropped=tuple(dropped + lost), tokens=tokens, placeholder=placeholder,
        ))
    return ScenePlan(
        prompt=text, seed=seed, width=w, height=h, aspect=aspect, style=", ".join(style), figures=figures,
        layers=tuple(layers), token_budget=token_budget, light_direction=_light_direction(full),
        palette=_palette(full, style), setting=_setting(" ".join(layers[0].clauses)),
    )


def with_layer(plan: ScenePlan, name: str, *, prompt: str | None = None, seed: int | None = None,
               count_tokens: TokenCounter | None = None) -> ScenePlan:
    """Re-plan one layer of a plan (new prompt and/or seed, or another token counter); the others stay.

    Args:
        plan: the plan to change.
        name: the layer to re-plan.
        prompt: new text for the layer's own phrases (the shared style is still appended and the budget
            applied); default: the layer's current phrases, with what was dropped tried again.
        seed: new seed for the layer (0..MAX_SEED); default: keep its seed.
        count_tokens: token counter for the re-budget; default `count_tokens_approx`.

    Returns:
        A new ScenePlan; only that layer (and, for a midground prompt naming a count, `figures`) differs.

    Raises:
        ValueError: unknown layer, bad prompt or seed.
    """
    if not isinstance(plan, ScenePlan):
        raise ValueError(f"plan must be a ScenePlan, not {type(plan).__name__}")
    old = plan.layer(name)
    count = _checked_counter(count_tokens)
    style = [t for t in plan.style.split(", ") if t] if plan.style else []
    figures = plan.figures
    placeholder = False
    if prompt is not None:
        try:
            new_text = check_prompt(prompt)
        except ValueError as exc:
            raise ValueError(f"prompt for {name}: {exc}") from None
        cands = _override_phrases(new_text) or [new_text]
        if name == "midground":
            n = _explicit_count(new_text)
            figures = max(1, min(4, n)) if n else figures
    else:
        cands = list(old.clauses) + [d for d in old.dropped if d not in style and not d.startswith("no ")]
        placeholder = old.placeholder
    new_seed = old.seed if seed is None else _check_int(seed, "seed", 0, MAX_SEED)
    framing = SUBJECT_FRAMING if name != "background" else None
    prompt_text, kept, dropped, tokens = _budget_layer(cands, framing, style, plan.token_budget, count)
    neg_terms = [t for t in old.negative_prompt.split(", ") if t]
    neg_kept, _ = _fit_terms(neg_terms, plan.token_budget, count)
    lost = [d for d in old.dropped if d.startswith("no ")]
    new_layer = LayerPlan(name=name, prompt=prompt_text, negative_prompt=", ".join(neg_kept), seed=new_seed,
                          clauses=tuple(kept), dropped=tuple(dropped + lost), tokens=tokens,
                          placeholder=placeholder)
    layers = tuple(new_layer if lp.name == name else lp for lp in plan.layers)
    return dataclasses.replace(plan, layers=layers, figures=figures)
