"""The draft backend: a procedural, offline, deterministic layout painter.

It paints each layer from its depth-conditioning map (control), its prior and the colour words of its prompt,
in a few tenths of a second and with no model weights, so a whole layered stack can be previewed anywhere:

* background: a complete, opaque painting of the architecture the control map describes: surfaces shaded by
  their depth (far = hazy, lighter and cooler; near = darker and more saturated), perspective floor tiles,
  ribs and arches along lines of equal depth, glowing windows, a portal on the far wall, lantern-stars;
* midground: figures where the prior is high, shaded from the control map's relief, with skin and cloth
  tones from the palette and a rim light on the side facing the light; a flat plain backdrop elsewhere;
* foreground: debris where the prior is high (velvet folds, glass shards, chain links, rocks, glinting
  particles); a flat plain backdrop elsewhere.

The flat backdrop plays the part of the "isolated subject on a plain backdrop" a model would render, so the
matting step separates the layer the same way for both backends. It is a layout draft, not a finished image.

Where each part lives: palette.py (colour words -> a layer's palette, light words -> a light vector), paint.py
(what the painters share: blurs, gradients, shading, sparkles, the backdrop, coverage, the seeded generator), one
painter per layer (architecture.py, figures.py, debris.py), and backend.py, the renderer: DraftBackend.
"""
from __future__ import annotations

from .backend import _PAINTERS, DraftBackend
from .paint import _rng, coverage
from .palette import COLOURS, LIGHT_DIRECTIONS, _palette, colour_words, light_vector

__all__ = ["COLOURS", "LIGHT_DIRECTIONS", "DraftBackend", "colour_words", "coverage", "light_vector"]
