"""Token budget: fitting each layer prompt and negative prompt into the budget, recording what is dropped (rule 10)."""
from __future__ import annotations

import re
from typing import Callable

from .segments import _clean
from .types import STYLE_SHARE, TokenCounter
from .words import _NEGATIVES


def _fit_terms(terms: list[str], budget: int, count: TokenCounter) -> tuple[list[str], list[str]]:
    """Greedy: the terms (in order) that fit the budget when joined with ", ", and the ones that did not."""
    kept, left = [], []
    for t in terms:
        if count(", ".join(kept + [t])) <= budget:
            kept.append(t)
        else:
            left.append(t)
    return kept, left


def _negative_prompt(name: str, user_bg: list[str], user_all: list[str], budget: int,
                     count: TokenCounter) -> tuple[str, list[str]]:
    user = list(user_all) + (list(user_bg) if name == "background" else [])
    terms: list[str] = []
    seen: set[str] = set()
    for t in user + list(_NEGATIVES[name]):
        if t.lower() not in seen:
            seen.add(t.lower())
            terms.append(t)
    kept, left = _fit_terms(terms, budget, count)
    user_terms = set(user)
    lost_user = [f"no {t}" for t in left if t in user_terms]
    return ", ".join(kept), lost_user


def _join(content: list[str], framing: str | None, style: list[str]) -> str:
    return ", ".join([*content, *([framing] if framing else []), *style])


_GLUE_WORD_RE = re.compile(
    r"(?:a|an|the|of|and|or|with|in|on|to|by|for|from|at|as|into|onto|its|their|his|her|that|which|while|like)",
    re.IGNORECASE)
"""Words a cut head does not end on (after its first word)."""


def _truncate(phrase: str, fits: Callable[[str], bool]) -> tuple[str, str]:
    """The longest head of `phrase` (cut at a word boundary) that fits, and the cut remainder.

    A head does not end on a joining word ("of", "and": dropped, not kept in the remainder). Heads are tried
    from the longest down; after MAX_MISSES in a row that clean to nothing or do not fit, the first word is cut
    by characters, as when no head fits.
    """
    words = phrase.split()
    lo, hi = 0, len(words)
    while lo < hi:  # largest k with fits(words[:k])
        mid = (lo + hi + 1) // 2
        if fits(_clean(" ".join(words[:mid]))):
            lo = mid
        else:
            hi = mid - 1
    k, misses = lo, 0
    while k > 0 and misses < MAX_MISSES:
        end = k  # words[:k] without the joining words it ends on
        while end > 1 and _GLUE_WORD_RE.fullmatch(words[end - 1]):
            end -= 1
        head = _clean(" ".join(words[:end]))
        if head and fits(head):
            return head, " ".join(words[k:]).strip()
        k, misses = end - 1, misses + 1  # every k from `end` up gives the same head
    # Not even the first word fits: cut inside it, by characters.
    word = words[0] if words else ""
    lo, hi = 0, len(word)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(word[:mid]):
            lo = mid
        else:
            hi = mid - 1
    head = word[:lo]
    return head, phrase[len(head):].strip()


MAX_MISSES = 40
"""After this many phrases in a row that did not fit, the rest are recorded as dropped without trying."""


def _budget_layer(candidates: list[str], framing: str | None, style: list[str], budget: int,
                  count: TokenCounter) -> tuple[str, list[str], list[str], int]:
    """Fit one layer prompt: (prompt, kept phrases, dropped texts, tokens)."""
    def fits(content: list[str], fr: str | None, st: list[str]) -> bool:
        return count(_join(content, fr, st)) <= budget

    style_kept, _ = _fit_terms(style, max(1, int(budget * STYLE_SHARE)), count)
    for attempt_framing, attempt_style in ((framing, style_kept), (framing, []), (None, [])):
        kept: list[str] = []
        dropped: list[str] = []
        misses = 0
        for c in candidates:
            if misses >= MAX_MISSES:
                dropped.append(c)  # the prompt is full: stop counting, but keep the record
            elif fits(kept + [c], attempt_framing, attempt_style):
                kept.append(c)
                misses = 0
            elif not kept:
                head, rest = _truncate(c, lambda h: fits([h], attempt_framing, attempt_style))
                if head:
                    kept.append(head)
                    if rest:
                        dropped.append(rest)
                else:
                    dropped.append(c)
            else:
                dropped.append(c)
                misses += 1
        if kept:
            break
    else:
        raise ValueError(f"token budget {budget} is too small: not even one word of a layer prompt fits")
    final_style = list(attempt_style)
    for t in style:
        if t not in final_style and fits(kept, attempt_framing, _ordered(style, final_style + [t])):
            final_style = _ordered(style, final_style + [t])
    dropped.extend(t for t in style if t not in final_style)
    prompt = _join(kept, attempt_framing, final_style)
    return prompt, kept, dropped, count(prompt)


def _ordered(reference: list[str], subset: list[str]) -> list[str]:
    s = set(subset)
    return [t for t in reference if t in s]
