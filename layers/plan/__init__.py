"""Scene planning: one dense prompt -> a ScenePlan of three layer prompts, back to front.

`plan_scene` reads a long scene description and decides what each depth layer is asked to show:

* **background**: architecture, rooms, landscape, sky (rendered as a complete painting);
* **midground**: the figures, characters, the subject (rendered as an isolated subject on a plain backdrop);
* **foreground**: debris, props and particles close to the lens (also rendered isolated).

The planner is pure Python and deterministic: the same prompt and seed give the same plan. Its time grows about
linearly with the prompt's length whatever the prompt's shape (no rule rereads a growing run of commas, spaces,
brackets or colours): a 20,000-character prompt plans in under a second at the default token budget.

Rules, in the order they are applied
------------------------------------
1. **Checks.** `check_prompt` refuses an empty or blank prompt, one over `MAX_PROMPT_CHARS` characters and
   one with control characters other than newline, tab and carriage return (the message names the code
   point, e.g. ``U+0007``).
2. **Markdown.** ``**bold**``, ``__bold__``, ``*italic*``, backticks, ``[links](...)``, block quotes and
   list bullets are stripped. A heading (``## Foreground``) opens a *section*: every clause under it, up to
   the next heading, belongs to that layer. A label standing alone on its line (``Background:``) does the
   same up to the next blank line, label or heading. A label followed by text on its line
   (``**foreground**: shattered vases. A knight.``) works like the opening cue "In the foreground, ..."
   (rule 7). ``Style:`` / ``Lighting:`` / ``Medium:`` labels feed the shared style instead of a layer.
3. **Aspect ratio.** ``Aspect ratio 2:3``, ``framed in 2:3``, ``16:9``, ``1:1``, ``2.39:1``,
   ``portrait 3:4``, ``square format``, ``landscape format``, ``widescreen`` and similar are read and
   removed from the text. An explicit mention ("aspect", "ratio", "framed in", "... format") beats a bare
   ``W:H``; a bare one that reads as a time of day ("at 12:30", "9:45 pm") is left alone; an orientation
   word turns the ratio the right way round ("portrait 4:3" -> 3:4). A zero side or a ratio beyond 4:1
   raises `ValueError` naming it. No aspect means 2:3 portrait. The size is the multiple-of-64 pair that
   best matches the ratio at about 0.5 megapixels (`size_for_aspect`: 2:3 -> 512x768);
   `width`/`height` arguments override it.
4. **Clauses and phrases.** The text is cut into clauses at line breaks, sentence ends and ``;``, and each
   clause into phrases at ``:``, dashes and commas, never inside parentheses, brackets or paired quotes.
   A comma piece that cannot stand alone (it ends in an adjective, or has one content word and no scene
   noun: "a radiant,", "On the left,") joins the next piece, so "a radiant, intoxicating glow" and
   "On the left, the Dreamer" stay whole; a closing "..., and skin" joins the piece before it. A long
   phrase moves a long parenthetical into a phrase of its own that follows it into the same layer.
   Joining words at a phrase start ("and", "while", "simultaneously") are dropped.
5. **Shared style.** Lighting ("sunrise-gold rim light", "high-contrast chiaroscuro", "volumetric light"),
   colour grade and palette ("color grade", "cool blue shadow", "muted palette"; a run of colours before
   the light, grade or palette word joins its term, up to `COLOR_RUN` colours), medium ("surreal
   illustration", "oil painting", "35mm film") and quality words ("masterpiece", "ultra-detailed",
   "cinematic", "extreme detail", "high fidelity") are cut out of the phrases; when only joining words
   are left around them ("rim light cutting through cool blue shadow") the whole phrase is one term.
   Terms are de-duplicated (one contained in a longer one is dropped) and joined into `ScenePlan.style`,
   lighting and colour first, quality last. A phrase that starts with "no"/"without" ("no empty space")
   becomes a negative term of the background (of every layer when it is about quality: "no text").
6. **Explicit position cues win.** A phrase that names its place is put there:
   foreground - "foreground", "in the foreground", "(foreground)", "in front", "at the front",
   "right against the lens", "close to the camera", "near the lens", "closest to the viewer";
   midground - "midground", "middle ground", "middle distance", "center stage", "at the center",
   "a little further back", "slightly further back";
   background - "background", "in the background", "behind them", "behind the figures", "far away",
   "far off", "in the distance", "on the horizon", "further back", "as a backdrop".
   When one phrase holds several cues the first one counts. The cue words are removed ("a windmill in the
   distance" -> "a windmill"), except a layer word used as an adjective ("sharp foreground texture").
   A phrase that is only a cue ("in the foreground,") passes its cue to the next phrase of its clause,
   or, when it ends the clause ("..., all in the foreground"), to the phrases before it.
7. **Cues lean what follows.** After a cue, the later phrases of its clause lean to its layer (+3 to that
   layer's score). A cue that opens its clause ("In the foreground, ...", "Center stage, ...") also leans
   the later clauses of its sentence (+2) and of the next sentences (+2, halved at each new sentence)
   until another opening cue. Leaning only adds to the score: a clause that clearly describes something
   else still goes where its words say.
8. **Otherwise the words decide.** Each phrase is scored against three word lists (architecture, rooms,
   landscape and sky words for the background; people, bodies, clothes, poses, animals and named
   characters such as "the Dreamer" for the midground; debris, particles, props, small objects and
   "scattered"/"spilled"/"corners" for the foreground) plus half its clause's mean score per phrase as
   context. A phrase naming a person or creature counts its midground score 1.5 times ("a monk praying in
   a temple" is the monk's). The highest score wins; ties go midground, then background, then foreground;
   a phrase that matches nothing goes to the leaning layer if there is one, else to the background.
9. **Priority.** Inside a layer: first the phrase that carries an opening cue (and every phrase of a
   heading or stand-alone label section); then the other cued phrases and the phrases of an opening cue's
   sentence that its layer's words describe; then the rest. Within each group by relevance: the score for
   the layer, a bonus for leaning there and a small one for appearing early.
10. **Token budget.** Each layer prompt is ``phrases, [framing,] style`` where framing is
    `SUBJECT_FRAMING` for the midground and foreground. It must fit `token_budget` tokens under
    `count_tokens` (default `count_tokens_approx`, which over-estimates CLIP's BPE), BOS/EOS included.
    The style first takes at most `STYLE_SHARE` of the budget; phrases are then added in priority order
    while they fit (a later, shorter phrase may fill a gap); left-over room takes back style terms.
    Every phrase or style term that does not fit is recorded in `LayerPlan.dropped`; when not even the
    first phrase fits, it is cut at a word boundary and the cut remainder is recorded. Nothing is dropped
    silently. If nothing fits at all, the style and then the framing give way; a budget too small for a
    single word raises `ValueError`.
11. **Never empty.** A layer no phrase landed in gets a placeholder made from the scene's inferred nouns
    ("vast interior architecture, hall"; "a figure" / "two figures"; "scattered debris and particles close
    to the lens, dust") and `LayerPlan.placeholder` is set.
12. **Scene facts.** `figures` (1..4): an explicit count ("two figures", "a pair of dancers", "both of
    them", "a trio") in the midground, else two or more named characters ("the Dreamer ... the Lover"),
    else a plural ("figures") in the midground -> 2, else an explicit count anywhere, else 1. `palette`:
    colour words (gold, carmine, teal, velvet blue, midnight, sunrise-gold, brass, ...) normalised to the
    names of `_COLOR_ALIASES` (the draft renderer holds their colours), ranked by how often they occur (weighted up inside style terms), first
    mention breaking ties. `light_direction`: "light from the left" / "lit from the right" / "light from
    above" first, then rim light or backlit -> "back", front light -> "front"; default "top".
13. **Seeds.** Each layer's seed is ``sha256(f"{seed}:{name}")`` reduced to 0..2**31-1 (`layer_seed`):
    stable across runs and machines, different per layer, changing with the scene seed.

Overrides: ``overrides={"midground": "a single dancer"}`` replaces that layer's phrases by the given text
(split the same way, kept in its order, style still appended, budget applied). `with_layer` does the same
to one layer of an existing plan (new prompt and/or seed, another counter) and leaves the others as they
are.
"""
from __future__ import annotations

from .aspect import ASPECT_WEIGHT, parse_aspect, size_for_aspect
from .budget import MAX_MISSES
from .checks import check_prompt, read_prompt_file
from .placement import CARRY_ACROSS, CARRY_IN_CLAUSE
from .planner import plan_scene, with_layer
from .style import COLOR_RUN
from .tokens import count_tokens_approx
from .types import (
    LAYER_NAMES, LIGHT_DIRECTIONS, MAX_ASPECT, MAX_LAYER_SEED, MAX_PROMPT_CHARS, MAX_SEED, MAX_SIDE, MAX_TOKEN_BUDGET,
    MIN_SIDE, MIN_TOKEN_BUDGET, STYLE_SHARE, SUBJECT_FRAMING, LayerPlan, ScenePlan, TokenCounter, layer_seed,
)
from .words import _COLOR_ALIASES  # noqa: F401 - the palette names; the draft renderer holds a colour for each

__all__ = [
    "ASPECT_WEIGHT", "CARRY_ACROSS", "CARRY_IN_CLAUSE", "COLOR_RUN", "LAYER_NAMES", "LIGHT_DIRECTIONS", "MAX_ASPECT",
    "MAX_LAYER_SEED", "MAX_MISSES", "MAX_PROMPT_CHARS", "MAX_SEED", "MAX_SIDE", "MAX_TOKEN_BUDGET", "MIN_SIDE",
    "MIN_TOKEN_BUDGET", "STYLE_SHARE", "SUBJECT_FRAMING", "LayerPlan", "ScenePlan", "TokenCounter",
    "check_prompt", "count_tokens_approx", "layer_seed", "parse_aspect", "plan_scene", "read_prompt_file",
    "size_for_aspect", "with_layer",
]
