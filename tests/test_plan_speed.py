"""The planner's time grows about linearly with the prompt's length, whatever the prompt's shape.

Each prompt here is MAX_PROMPT_CHARS long and built to hit one place where a rule once reread a growing run
(commas, spaces, brackets, colours, cut heads): those took from 5 s to hours of CPU; now each plans in well
under a second. The bound is CPU time, generous for a loaded machine, and a timer stops a runaway plan there.
"""
from __future__ import annotations

import contextlib
import signal
import time

import pytest

from layers.plan import COLOR_RUN, MAX_PROMPT_CHARS, plan_scene

N = MAX_PROMPT_CHARS
LIMIT_S = 3.0


def fill(unit: str, n: int = N) -> str:
    """`unit` repeated to exactly n characters."""
    return (unit * (n // len(unit) + 1))[:n]


COLOURS = ("gold", "red", "blue", "teal", "cyan", "green", "amber", "ruby", "jade", "olive", "navy", "pink")

SHAPES = {
    "commas": fill("a, "),
    "negatives": fill("no a, "),
    "open brackets and commas": fill("(a, "),
    "quotes and commas": fill('"a, '),
    "openers then other closers": "(" * (N // 2) + "]" * (N // 2),
    "link openers": fill("["),
    "spaces in a heading": "# a" + " " * (N - 4) + "b",
    "spaces opening a line": "a\n" + " " * (N - 3) + "x",
    "spaces opening a sentence": "a." + " " * (N - 3) + "x",
    "spaces after an aspect word": "aspect" + " " * (N - 7) + "x",
    "tabs after an aspect phrase": "framed in" + "\t" * (N - 10) + "x",
    "colour run": "light " + fill("gold and ", N - 6),
    "colours read two ways": "light " + fill("sunrise gold and ", N - 6),
    "colour run in a grade": fill("sunrise gold, ", N - 11) + "color grade",
    "distinct colour pairs": fill(", ".join(f"{a} and {b} light" for a in COLOURS for b in COLOURS) + ", "),
    "style terms in one phrase": fill("cinematic lighting "),
    "cue in every phrase": fill("a x in front, "),
    "cues only": "a knight, " + fill("in the foreground, ", N - 10),
    "lines": fill("a\n"),
    "sentences": fill("A dancer. "),
    "words": fill("ancient hall dancer glass mist "),
    "one word": "a" * N,
    "unicode": fill("東京の夜景、🧙 "),
}
OVERRIDES = {
    "dashes as a layer prompt": fill(" - "),
    "joining words as a layer prompt": fill("and "),
}


@contextlib.contextmanager
def cpu_limit(seconds: float):
    """Raise TimeoutError once this process has used `seconds` of CPU (a runaway regex is stopped too)."""
    def stop(signum, frame):
        raise TimeoutError(f"still planning after {seconds:g} s of CPU")

    previous = signal.signal(signal.SIGPROF, stop)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def cpu_seconds(**kwargs) -> float:
    start = time.process_time()
    with cpu_limit(LIMIT_S + 1):
        plan = plan_scene(**kwargs)
    elapsed = time.process_time() - start
    assert [lp.name for lp in plan.layers] == ["background", "midground", "foreground"]
    return elapsed


pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs a CPU-time timer (POSIX)")


@pytest.mark.parametrize("name", list(SHAPES))
def test_a_longest_prompt_of_any_shape_plans_in_bounded_time(name):
    prompt = SHAPES[name]
    assert len(prompt) == N
    assert cpu_seconds(prompt=prompt) <= LIMIT_S


@pytest.mark.parametrize("name", list(OVERRIDES))
def test_a_longest_layer_prompt_plans_in_bounded_time(name):
    text = OVERRIDES[name]
    assert len(text) == N
    assert cpu_seconds(prompt="a knight in a hall", overrides={"midground": text, "foreground": text}) <= LIMIT_S


def test_the_timer_stops_a_runaway_plan():
    with pytest.raises(TimeoutError):
        with cpu_limit(0.05):
            while True:
                pass


def test_a_run_of_colours_joins_its_term_up_to_the_bound():
    colours = list(COLOURS) + ["crimson", "ivory", "cobalt", "ochre", "umber", "sepia", "rust", "azure"]
    assert len(colours) >= COLOR_RUN + 4
    run = " and ".join(colours[:COLOR_RUN])
    plan = plan_scene(f"a knight in a hall, {run} light", token_budget=300)
    assert plan.style == f"{run} light"
    assert [c for lp in plan.layers for c in lp.clauses if "gold" in c] == []
    # Past the bound the last COLOR_RUN colours make the term; the first ones stay a phrase of the scene.
    longer = " and ".join(colours[:COLOR_RUN + 4])
    plan = plan_scene(f"a knight in a hall, {longer} light", token_budget=300)
    assert plan.style == " and ".join(colours[4:COLOR_RUN + 4]) + " light"
    assert " and ".join(colours[:4]) in [c for lp in plan.layers for c in lp.clauses]
