"""Layercake: a dense scene prompt -> a parallax-ready stack of image layers.

The pipeline, one step per module: plan -> depth -> backends (render) -> matte -> stack -> parallax / export.
"""
import os

# pymatting's numba kernels and torch share one OpenMP runtime whose idle threads spin by default; after a
# matting call every torch op then ran 8-10x slower on 2 cores. Sleeping idle threads cost nothing measurable.
# It must be set before torch loads the runtime, hence here; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
