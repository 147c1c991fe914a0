"""One-line reasons for API payloads gradio refuses before any of the studio's functions sees them."""
from __future__ import annotations

import inspect

import gradio as gr

from ui.shared import log


def explain_bad_payloads(demo: gr.Blocks) -> gr.Blocks:
    """Give an API client a one-line reason for a payload gradio cannot even hand to our functions.

    Gradio checks and converts the raw values (count, numbers, choices) before calling a function; what it refuses
    there reaches the client as `{"error": null}` and a traceback in the log. Here it becomes a gr.Error naming
    the input and the value.
    """
    original = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, state, *args, **kwargs):
        names = _input_names(block_fn)
        given = inputs if isinstance(inputs, list) else []
        if 0 < len(given) < len(block_fn.inputs) and _optional_from(block_fn) <= len(given):
            # A client written before the last inputs were added: they take their widgets' defaults.
            inputs = given = given + [getattr(c, "value", None) for c in block_fn.inputs[len(given):]]
        if len(given) < len(block_fn.inputs):
            missing = ", ".join(names[len(given):])
            raise gr.Error(f"{len(block_fn.inputs)} input values are needed, got {len(given)}; missing: {missing}",
                           print_exception=False)
        try:
            return await original(block_fn, inputs, state, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            name, value, reason = _first_refused(block_fn, names, given, exc)
            log.info("refused a payload: %s %r: %s", name, value, reason)
            raise gr.Error(f"{name} {_short(value)} is not accepted: {reason}", print_exception=False) from None

    demo.preprocess_data = preprocess_data
    return demo


def _optional_from(block_fn) -> int:
    """How many leading inputs an API call must send: the rest are parameters with a default."""
    try:
        params = list(inspect.signature(block_fn.fn).parameters.values())[:len(block_fn.inputs)]
    except (TypeError, ValueError):
        return len(block_fn.inputs)
    required = [i for i, p in enumerate(params) if p.default is inspect.Parameter.empty]
    return (required[-1] + 1) if required else 0


def _input_names(block_fn) -> list[str]:
    """The API names of an event's inputs: its function's parameter names (a component's label otherwise)."""
    try:
        params = list(inspect.signature(block_fn.fn).parameters)
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else (getattr(c, "label", None) or f"input {i + 1}")
            for i, c in enumerate(block_fn.inputs)]


def _first_refused(block_fn, names, values, exc) -> tuple[str, object, str]:
    """Which input gradio refused, found by converting each plain (non-file, non-state) value on its own."""
    for name, component, value in zip(names, block_fn.inputs, values):
        if isinstance(component, (gr.File, gr.State)):
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        try:
            component.preprocess(value)
        except Exception as err:  # noqa: BLE001 - any refusal is the answer we are looking for
            if isinstance(component, (gr.Number, gr.Slider)) and not numeric:
                return name, value, "it must be a number"
            return name, value, _one_line(err)
    return "a value", None, _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:200]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
