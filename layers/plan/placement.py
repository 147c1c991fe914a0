"""Placement: the layer, tier and relevance of every phrase, from cues, leaning and word scores (rules 6-9)."""
from __future__ import annotations

import math

from .cues import _find_cue, _remove_cues
from .scoring import _content_words, _score
from .segments import _Phrase, _clean
from .types import LAYER_NAMES


CARRY_IN_CLAUSE = 3.0
CARRY_ACROSS = 2.0
_TIE_ORDER = ("midground", "background", "foreground")


def _place(phrases: list[_Phrase], names: frozenset[str]) -> None:
    """Decide the layer, tier and relevance of every phrase (rules 6-9 of the module docstring)."""
    clause_text: dict[int, str] = {}
    clause_size: dict[int, int] = {}
    for ph in phrases:
        clause_text[ph.clause] = clause_text.get(ph.clause, "") + " " + ph.text
        clause_size[ph.clause] = clause_size.get(ph.clause, 0) + 1
    # Context: half the clause's mean score per phrase, a tie-breaker rather than a vote.
    clause_scores = {c: {k: v / clause_size[c] / 2 for k, v in _score(t, names).items()}
                     for c, t in clause_text.items()}

    by_clause: dict[int, list[_Phrase]] = {}
    for ph in phrases:
        if ph.part_of is None:
            by_clause.setdefault(ph.clause, []).append(ph)

    # Cues: find, remove, note whether the phrase was only a cue and whether the cue opens its clause.
    words_before_clause: dict[int, int] = {}  # words of the clause's phrases so far (cues already cut out)
    cued_clauses: set[int] = set()  # clauses with a cue in a phrase so far
    for ph in phrases:
        if ph.part_of is not None:
            continue
        cue = _find_cue(ph.text)
        if cue is not None:
            layer, start, _, removable = cue
            ph.cue = layer
            ph.cue_bare = not removable
            words_before = len(ph.text[:start].split()) + words_before_clause.get(ph.clause, 0)
            # "In the foreground, ...", "layer-cake depth: in the foreground, ..." and "...: in the midground a
            # figure strides" all open what follows them.
            ph.cue_leading = not ph.cue_bare and (
                (words_before <= 3 and ph.clause not in cued_clauses) or len(ph.text[:start].split()) <= 1)
            rest = _clean(_remove_cues(ph.text))
            if not _content_words(rest):
                ph.cue_only = True
            else:
                ph.text = rest
            cued_clauses.add(ph.clause)
        words_before_clause[ph.clause] = words_before_clause.get(ph.clause, 0) + len(ph.text.split())

    # A cue-only phrase hands its cue to the next phrase of its clause, or back to the earlier ones.
    for siblings in by_clause.values():
        next_live: list[_Phrase | None] = [None] * len(siblings)  # the first phrase after k that is not cue-only
        for k in range(len(siblings) - 2, -1, -1):
            following = siblings[k + 1]
            next_live[k] = next_live[k + 1] if following.cue_only else following
        handed_back = 0  # siblings[:handed_back] all hold a cue
        for k, ph in enumerate(siblings):
            if not ph.cue_only:
                continue
            after = next_live[k]
            if after is not None:
                if after.cue is None:
                    after.cue = ph.cue
                    after.cue_leading = ph.cue_leading
            else:
                for p in siblings[handed_back:k]:
                    if p.cue is None:
                        p.cue = ph.cue
                handed_back = k
    live = [ph for ph in phrases if not ph.cue_only]

    n = max(1, len(live))
    by_index = {ph.index: ph for ph in live}
    section_cue: tuple[str, int, int] | None = None  # (layer, sentence, clause) of the last opening cue
    clause_cue: dict[int, str] = {}
    weak_clauses: set[int] = set()  # clauses whose only cue sits inside a phrase rather than opening the clause
    last_section: str | None = None
    for pos, ph in enumerate(live):
        if ph.section != last_section:
            section_cue, last_section = None, ph.section  # a heading or label starts afresh
        scores = _score(ph.text, names)
        context = clause_scores.get(ph.clause, {})
        for layer in LAYER_NAMES:
            scores[layer] += context.get(layer, 0.0)
        early = 0.5 * (1 - pos / n)
        # Long phrases collect more words from the lists; relevance is taken per ~4 content words so that
        # a compact phrase is not outranked by a rambling one.
        density = 1.0 / math.sqrt(max(1.0, len(_content_words(ph.text)) / 4.0))
        if ph.part_of is not None:
            parent = by_index.get(ph.part_of)
            if parent is not None:
                ph.layer, ph.tier, ph.relevance = parent.layer, max(parent.tier, 1), parent.relevance * 0.5
            else:
                ph.layer, ph.tier, ph.relevance = _best(scores, None), 2, 0.0
            continue
        if ph.cue is not None:
            ph.layer = ph.cue
            if ph.cue_bare and not ph.cue_leading:
                ph.tier, ph.relevance = 2, scores[ph.layer] * density + early
                continue
            ph.tier = 0 if ph.cue_leading else 1
            ph.relevance = scores[ph.layer] * density + 1.0 + early
            if ph.cue_leading:
                clause_cue[ph.clause] = ph.cue
                weak_clauses.discard(ph.clause)
                section_cue = (ph.cue, ph.sentence, ph.clause)
            else:
                # A cue inside or at the end of a phrase ("a ruined castle far behind") places that phrase;
                # the next items of a list are other things, so it leans them only weakly.
                clause_cue.setdefault(ph.clause, ph.cue)
                weak_clauses.add(ph.clause)
            continue
        if ph.section in LAYER_NAMES:
            ph.layer, ph.tier, ph.relevance = ph.section, 0, scores[ph.section] * density + early
            continue
        leaning, bonus, in_scope = None, 0.0, False
        if ph.clause in clause_cue:
            leaning = clause_cue[ph.clause]
            bonus = CARRY_IN_CLAUSE if ph.clause not in weak_clauses else CARRY_ACROSS * 0.5
            in_scope = section_cue is not None and section_cue[2] == ph.clause and section_cue[0] == leaning
        elif section_cue is not None:
            leaning = section_cue[0]
            if ph.sentence == section_cue[1]:
                bonus, in_scope = CARRY_ACROSS, True
            else:
                bonus = CARRY_ACROSS * 0.5 ** (ph.sentence - section_cue[1])
                if bonus < 0.2:
                    leaning, bonus = None, 0.0
        total = dict(scores)
        if leaning is not None:
            total[leaning] += bonus
        ph.layer = _best(total, leaning) if max(total.values()) > 0 else (leaning or "background")
        # The items listed after "In the foreground, ..." (same sentence) rank right after the cued phrase.
        ph.tier = 1 if in_scope and ph.layer == leaning and scores[leaning] > 0 else 2
        ph.relevance = scores[ph.layer] * density + (0.5 if ph.layer == leaning else 0.0) + early
        if ph.tier == 1 and section_cue is not None and ph.clause == section_cue[2]:
            ph.relevance += 1.0  # listed in the cue's own clause: closer to what the cue introduces
    phrases[:] = live


def _best(scores: dict[str, float], leaning: str | None) -> str:
    top = max(scores.values())
    tied = [layer for layer in LAYER_NAMES if scores[layer] >= top - 1e-9]
    if leaning in tied:
        return leaning
    return min(tied, key=_TIE_ORDER.index)
