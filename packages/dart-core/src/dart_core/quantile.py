"""Quantiles of a piecewise-constant density (DESIGN.md §1 step 2).

A density over ``n`` cells is read as a histogram of ``n`` bars of width 1; its CDF is
piecewise linear. For a target probability ``p`` the quantile is found in the first bar
``j`` whose cumulative sum reaches ``p``::

    q = j + (p - cumsum[j - 1]) / (density[j] + eps)        (cumsum[-1] = 0)

and ``j = n - 1`` when no bar reaches ``p`` (rounding). This is the published formula: it
takes an already normalised density and does not renormalise it. ``q`` is differentiable
almost everywhere in ``density`` (through ``cumsum[j - 1]`` and ``density[j]``).
"""

from __future__ import annotations

import torch

QUANTILE_EPS = 1e-8


def density_quantiles(density: torch.Tensor, probs: torch.Tensor, eps: float = QUANTILE_EPS) -> torch.Tensor:
    """Quantiles of a batch of piecewise-constant densities.

    Args:
        density: (B, n) non-negative cell masses, each row summing to (about) 1.
        probs: (K,) or (B, K) target probabilities in [0, 1], non-decreasing along K.
        eps: the guard added to the bar's mass in the denominator.

    Returns:
        (B, K) quantiles in cell units, in [0, n] and non-decreasing along K.
    """
    batch, cells = density.shape
    cumulative = density.cumsum(dim=-1)
    targets = probs.to(density.dtype).expand(batch, -1).contiguous()
    # First bar whose cumulative mass reaches the target; n (none reached) falls back to n - 1.
    bar = torch.searchsorted(cumulative.detach().contiguous(), targets.detach(), side="left")
    bar = bar.clamp(max=cells - 1)
    mass_before = torch.nn.functional.pad(cumulative, (1, 0)).gather(-1, bar)
    bar_mass = density.gather(-1, bar)
    quantiles = bar.to(density.dtype) + (targets - mass_before) / (bar_mass + eps)
    # Only the rounding fall-back (no bar reached) can step past the last cell edge.
    return quantiles.clamp(0.0, float(cells))


def uniform_probs(count: int, like: torch.Tensor) -> torch.Tensor:
    """The interior targets k / count, k = 1..count-1, as a (count - 1,) tensor like ``like``."""
    return torch.arange(1, count, device=like.device, dtype=like.dtype) / count


def density_edges(density: torch.Tensor, count: int) -> torch.Tensor:
    """Boundaries that split a density into ``count`` equal-mass pieces.

    Args:
        density: (B, n) normalised cell masses.
        count: number of pieces.

    Returns:
        (B, count + 1) boundaries in cell units: 0, the quantiles at k / count, then n.
    """
    batch, cells = density.shape
    inner = density_quantiles(density, uniform_probs(count, density))
    first = density.new_zeros(batch, 1)
    last = density.new_full((batch, 1), float(cells))
    return torch.cat([first, inner, last], dim=-1)
