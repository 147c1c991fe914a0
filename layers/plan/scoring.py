"""Words -> layer scores: stems, lexicon look-ups and how strongly a text describes each layer (rule 8)."""
from __future__ import annotations

import functools
import re

from .types import LAYER_NAMES
from .words import _BIGRAMS, _LEXICON, _STOPWORDS


_WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    w = word.lower()
    if w.endswith(("'s", "’s")):
        w = w[:-2]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("sses", "ches", "shes", "xes", "zes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is", "as", "os")):
        return w[:-1]
    return w


@functools.lru_cache(maxsize=65536)
def _lookup(word: str) -> list[tuple[str, float]]:
    w = word.lower()
    if w in _LEXICON:
        return _LEXICON[w]
    return _LEXICON.get(_stem(w), [])


def _tokens(text: str) -> list[str]:
    """Lower-case word tokens; hyphenated words split into their parts."""
    return [w.lower() for w in _WORD_RE.findall(text)]


def _content_words(text: str) -> list[str]:
    return [w for w in _tokens(text) if w not in _STOPWORDS]


def _score(text: str, names: frozenset[str] = frozenset()) -> dict[str, float]:
    """How strongly a text describes each layer."""
    scores = dict.fromkeys(LAYER_NAMES, 0.0)
    toks = _tokens(text)
    for w in toks:
        for layer, weight in _lookup(w):
            scores[layer] += weight
    for a, b in zip(toks, toks[1:]):
        for layer, weight in _BIGRAMS.get(f"{_stem(a)} {_stem(b)}", ()):
            scores[layer] += weight
    subject = any(weight >= 1.5 and layer == "midground" for w in toks for layer, weight in _lookup(w))
    if names:
        for m in _WORD_RE.finditer(text):
            if _stem(m.group()) in names and m.group()[:1].isupper():
                scores["midground"] += 1.5
                subject = True
    if subject:
        # "a hall with two figures", "a monk praying in a temple": the person is the subject, the place is
        # its setting (the background then gets a placeholder built from the scene's nouns).
        scores["midground"] *= 1.5
    return scores


def _max_weight(text: str) -> float:
    return max((wt for w in _tokens(text) for _, wt in _lookup(w)), default=0.0)
