"""Scores of a matte against the true coverage: the standard alpha-matting errors and what a viewer sees.

The true coverage comes from a renderer that knows it (the draft backend's ``coverage``). All maps are float
(H, W) in [0, 1]. The standard errors follow alphamatting.com (Rhemann et al. 2009): SAD and the gradient
error in thousands, MSE as a plain mean. The three rates say what goes wrong on screen:

- **see-through**: interior pixels (fully covered, and ``inset`` pixels or more inside the coverage) with
  alpha below 0.98 -- the layer behind shows through the subject;
- **lost coverage**: truly covered pixels (coverage >= 0.5) with alpha below 0.5 -- parts of the subject gone;
- **halo**: pixels outside the coverage (coverage 0 at 8 bits) with alpha above 0.1, per covered pixel (so a
  small subject in a big frame is not flattered by the empty frame around it) -- a fringe of backdrop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["MatteCase", "MatteScore", "draft_cases", "score_matte"]

SEE_THROUGH_BELOW = 0.98
LOST_BELOW = 0.5
HALO_ABOVE = 0.1
GRADIENT_SIGMA = 1.4


@dataclass(frozen=True)
class MatteScore:
    """How far a matte is from the true coverage."""

    sad: float
    """Sum of absolute differences, in thousands."""
    mse: float
    """Mean squared error over the frame."""
    gradient: float
    """Sum of squared differences of the gradient magnitudes (Gaussian derivatives, sigma 1.4), in thousands."""
    see_through: float
    """Fraction of interior pixels with alpha < 0.98."""
    lost: float
    """Fraction of covered pixels (coverage >= 0.5) with alpha < 0.5."""
    halo: float
    """Pixels outside the coverage with alpha > 0.1, per covered pixel."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MatteCase:
    """One layer to matte, with the answer: its render, the prior it was planned with, its true coverage."""

    name: str
    rgb: "Image.Image"
    prior: np.ndarray
    truth: np.ndarray


def draft_cases(prompt: str, seed: int, *, width: int = 512, height: int = 768,
                layers: tuple[str, ...] = ("midground", "foreground")) -> list[MatteCase]:
    """Plan a scene, paint it with the draft backend, and return each matted layer with its true coverage.

    The requests are the pipeline's (same prompts, seeds, controls and priors), so the renders are exactly
    what ``generate`` would matte.
    """
    from .backends.draft import DraftBackend
    from .depth import DepthSettings, build_depth_maps
    from .pipeline import GenerateOptions, _render_settings, _request
    from .plan import plan_scene

    options = GenerateOptions()
    plan = plan_scene(prompt, seed, width=width, height=height)
    depths = build_depth_maps(plan, settings=DepthSettings(thresholds=options.thresholds))
    requests = [_request(plan, name, depths[name], options) for name in layers]
    result, truths = DraftBackend().render_with_coverage(requests, _render_settings(plan, options))
    return [MatteCase(req.name, image, np.asarray(req.prior, np.float32), truth)
            for req, image, truth in zip(requests, result.images, truths)]


def interior(truth: np.ndarray, inset: int = 3) -> np.ndarray:
    """Fully covered pixels (>= 0.98) at least ``inset`` pixels (chessboard) inside the coverage."""
    from scipy import ndimage

    full = truth >= SEE_THROUGH_BELOW
    if inset <= 0:
        return full
    return ndimage.binary_erosion(full, structure=np.ones((3, 3), bool), iterations=inset, border_value=1)


def score_matte(alpha: np.ndarray, truth: np.ndarray, *, inset: int = 3) -> MatteScore:
    """Score a matte against the true coverage.

    Args:
        alpha: the matte, float (H, W) in [0, 1].
        truth: the true coverage, float (H, W) in [0, 1], same shape.
        inset: how deep inside the coverage a pixel must be to count as interior for the see-through rate.

    Returns:
        MatteScore. A rate whose set is empty (no interior, nothing covered) is 0.

    Raises:
        ValueError: shapes differ, or a map is not 2-D or leaves [0, 1].
    """
    from scipy import ndimage

    a = _unit(alpha, "alpha")
    t = _unit(truth, "truth")
    if a.shape != t.shape:
        raise ValueError(f"alpha and truth must have the same shape, got {a.shape} and {t.shape}")
    if isinstance(inset, bool) or not isinstance(inset, (int, np.integer)) or inset < 0:
        raise ValueError(f"inset must be a whole number of pixels >= 0, got {inset!r}")
    diff = a - t
    ga = ndimage.gaussian_gradient_magnitude(a, GRADIENT_SIGMA)
    gt = ndimage.gaussian_gradient_magnitude(t, GRADIENT_SIGMA)
    inner = interior(t, inset)
    covered = t >= 0.5
    outside = t < 0.5 / 255.0
    n_covered = int(np.count_nonzero(covered))
    return MatteScore(
        sad=float(np.abs(diff).sum() / 1000.0),
        mse=float(np.mean(diff * diff)),
        gradient=float(((ga - gt) ** 2).sum() / 1000.0),
        see_through=_rate(np.count_nonzero(inner & (a < SEE_THROUGH_BELOW)), np.count_nonzero(inner)),
        lost=_rate(np.count_nonzero(covered & (a < LOST_BELOW)), n_covered),
        halo=_rate(np.count_nonzero(outside & (a > HALO_ABOVE)), n_covered),
    )


def _rate(count: int, total: int) -> float:
    return float(int(count) / int(total)) if total else 0.0


def _unit(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D map, got shape {a.shape}")
    if a.size and (not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0):
        raise ValueError(f"{name} must hold values in [0, 1], got range [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]")
    return a
