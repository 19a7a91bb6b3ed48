"""Overlap-weighted averages of piecewise-constant signals over intervals.

DESIGN.md §1 steps 3 and 5 give a new cell ``[a, b]`` the overlap-weighted average of the old
unit cells ``[i, i + 1]`` it covers. Because the weights are overlaps, the weighted sum is the
integral of the signal over ``[a, b]``, and the sum of the weights is ``b - a`` (for
``0 <= a <= b <= n``). We therefore evaluate the signal's running integral ``F`` at the interval
ends instead of building a dense (new cells × old cells) overlap matrix:

    average = (F(b) - F(a)) / normaliser(b - a)

which costs O(n + new cells) and has the same derivatives almost everywhere.
"""

from __future__ import annotations

from typing import Callable

import torch


def running_integral_at(values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Integral of a piecewise-constant signal from 0 to each point.

    Args:
        values: (B, n, D) the signal on unit cells [i, i + 1].
        points: (B, K) positions in [0, n] (clamped to it).

    Returns:
        (B, K, D) the integrals.
    """
    cells = values.shape[1]
    points = points.to(values.dtype).clamp(0.0, float(cells))
    totals = torch.nn.functional.pad(values.cumsum(dim=1), (0, 0, 1, 0))  # (B, n + 1, D)
    cell = points.detach().floor().long().clamp(max=cells - 1)
    inside = (points - cell.to(points.dtype)).unsqueeze(-1)
    index = cell.unsqueeze(-1).expand(-1, -1, values.shape[-1])
    return totals.gather(1, index) + inside * values.gather(1, index)


def interval_average(
    values: torch.Tensor,
    edges: torch.Tensor,
    normaliser: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Overlap-weighted average of a signal over consecutive intervals.

    Args:
        values: (B, n, D) the signal on unit cells.
        edges: (B, K + 1) non-decreasing interval boundaries in cell units.
        normaliser: maps the (B, K) interval widths (the sums of the overlap weights) to the
            denominators, e.g. ``lambda w: w.clamp(min=1e-6)``.

    Returns:
        (B, K, D) the averages.
    """
    integral = running_integral_at(values, edges)
    widths = (edges[:, 1:] - edges[:, :-1]).to(values.dtype)
    return (integral[:, 1:] - integral[:, :-1]) / normaliser(widths).unsqueeze(-1)


def row_overlap_normaliser(widths: torch.Tensor) -> torch.Tensor:
    """Step 3's denominator: the weight sum clamped at 1e-6."""
    return widths.clamp(min=1e-6)


def token_overlap_normaliser(widths: torch.Tensor) -> torch.Tensor:
    """Step 5's denominator: the weight sum plus 1e-12."""
    return widths + 1e-12
