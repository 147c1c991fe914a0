"""Layercake: a dense scene prompt -> a parallax-ready stack of image layers.

The pipeline, one step per module: plan -> depth -> backends (render) -> matte -> stack -> parallax / export.
"""
__version__ = "0.1.0"
