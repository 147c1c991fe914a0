"""Word lists the planner's tidy-up rules read (data apart from the rules in plan.py: a new word is one line here).

Each list is plain text, one word or phrase per line-separated entry, so it can grow without touching a rule.
"""
from __future__ import annotations


def _entries(spec: str) -> tuple[str, ...]:
    return tuple(w for w in spec.split() if w)


DANGLING_END_WORDS: frozenset[str] = frozenset(_entries("""
    a an the
    and or but nor yet so plus while whereas
    of in on at to by for from with into onto over under beneath below above behind beyond past through across
    toward towards against among amid amidst between within without upon near along around
    its their his our your my whose which that
"""))
"""Words a layer prompt's phrase must not end on: once cue words and style terms are cut out they are leftovers
("a girl wading, neon cyan and" -> "a girl wading")."""

DANGLING_START_WORDS: frozenset[str] = frozenset(_entries("""
    and or but nor yet so plus while whereas then also
"""))
"""Words a phrase must not start with: a conjunction left from the clause it was cut out of."""

LOCATIVE_LEADS: tuple[str, ...] = _entries("""
    beyond behind past
""")
"""Prepositions that open a leading "beyond the gate," clause placing what follows far back."""

LOCATIVE_ADVERBS: tuple[str, ...] = _entries("""
    far way farther further high deep
""")
"""Adverbs that may stand before a locative lead ("far beyond the gate")."""

TRAILING_PLACE_PREPOSITIONS: frozenset[str] = frozenset(_entries("""
    over across through above along around behind beneath below
"""))
"""After a style term that opens a phrase, these start where that light or air is ("mist over the pines"): the
phrase stays one style term instead of leaving "over the pines" in a layer."""

ATMOSPHERE_NOUNS: tuple[str, ...] = _entries("""
    moonlight sunlight starlight candlelight lamplight firelight torchlight twilight daylight
    fog mist haze smog
""")
"""Light and air words shared by every layer (one scene, one light), like colour grades and palettes."""

ATMOSPHERE_ADJECTIVES: tuple[str, ...] = _entries("""
    soft cold cool warm pale silver silvery golden thin thick dense heavy low rolling drifting blue grey gray
    white faint hazy eerie damp morning evening night
""")
"""Adjectives kept with an atmosphere noun ("soft fog", "cold moonlight")."""

ATMOSPHERE_PREPOSITIONS: tuple[str, ...] = _entries("""
    under in beneath through amid amidst
""")
"""Prepositions cut out with an atmosphere phrase ("a ruined aqueduct under moonlight")."""
