"""Overlap-weighted averages of piecewise-constant signals over intervals.

DESIGN.md §1 steps 3 and 5 give a new cell ``[a, b]`` the overlap-weighted average of the old
unit cells ``[i, i + 1]`` it covers. Because the weights are overlaps, the weighted sum is the
integral of the signal over ``[a, b]``, and the sum of the weights is ``b - a`` (for
``0 <= a <= b <= n``). We therefore evaluate the signal's running integral ``F`` at the interval
ends instead of building a dense (new cells × old cells) overlap matrix:

    average = (F(b) - F(a)) / normaliser(b - a)

which costs O(n + new cells) and has the same derivatives almost everywhere. On the CPU the
compiled kernel of :mod:`dart_core.kernels.interval_native` sums each interval's cell overlaps
directly (same values and derivatives, one pass each way). Where both sides
are tiny (the R new rows of an h-row grid) the dense (K, n) matrix of normalised overlaps is
cheaper instead: the average is then one matrix product with the signal
(:func:`overlap_average_weights`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .kernels import native
from .kernels.interval_native import interval_integral as native_interval_integral
from .precision import in_float32_at_least


@in_float32_at_least
def running_integral_at(values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Integral of a piecewise-constant signal from 0 to each point.

    Args:
        values: (B, n, D) or (1, n, D) the signal on unit cells [i, i + 1]; a batch of 1 is
            shared by all B rows of ``points`` (its running sum is computed once).
        points: (B, K) positions in [0, n] (clamped to it).

    Returns:
        (B, K, D) the integrals, in ``values``' dtype (computed in float32 at least: the points
        keep their fractions when the values are bfloat16 or float16).
    """
    batch, count = points.shape
    shared, cells, dim = values.shape
    if shared not in (1, batch):
        raise ValueError(f"values has batch {shared}; expected 1 or the points' batch {batch}")
    points = points.to(values.dtype)
    # Clamped to [0, n], with no gradient at or past the ends on every torch release (torch.clamp's
    # own gradient at its bounds is 1 in torch 2.11 and 2.4, 0 in 2.14; the C kernel passes 0).
    within_ends = (points > 0) & (points < cells)
    points = torch.where(within_ends, points, points.detach().clamp(0.0, float(cells)))
    totals = torch.nn.functional.pad(values.cumsum(dim=1), (0, 0, 1, 0))  # (B or 1, n + 1, D)
    cell = points.detach().floor().nan_to_num(0.0).long().clamp(max=cells - 1)  # a NaN point: a NaN integral
    inside = (points - cell.to(points.dtype)).unsqueeze(-1)
    # Row selects on the flattened (sample, cell) axis: a memcpy of D values per point.
    sample = torch.arange(batch, device=cell.device)[:, None] if shared > 1 else 0
    below = totals.reshape(-1, dim).index_select(0, (cell + sample * (cells + 1)).flatten())
    within = values.reshape(-1, dim).index_select(0, (cell + sample * cells).flatten())
    return torch.addcmul(below.view(batch, count, dim), inside, within.view(batch, count, dim))


@in_float32_at_least
def interval_integral(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Integral of a piecewise-constant signal over consecutive intervals.

    Args:
        values: (B, n, D) the signal on unit cells (or (1, n, D), shared by the batch).
        edges: (B, K + 1) interval boundaries in cell units (clamped to [0, n]; an interval
            with a NaN end integrates to NaN).

    Returns:
        (B, K, D) the integrals, in ``values``' dtype (computed in float32 at least, like
        :func:`running_integral_at`); differentiable in both inputs.
    """
    batch = edges.shape[0]
    if values.shape[0] not in (1, batch):
        raise ValueError(f"values has batch {values.shape[0]}; expected 1 or the points' batch {batch}")
    if values.shape[1] < 1:
        raise ValueError(f"the signal has no cells: values {tuple(values.shape)}")
    if values.device.type == "cpu" and values.dtype in native.SUFFIXES and native.available(warn=True):
        return native_interval_integral(values.expand(batch, -1, -1), edges.to(values.dtype))
    return running_interval_integral(values, edges)


def running_interval_integral(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """:func:`interval_integral` as differences of :func:`running_integral_at` (the PyTorch
    formulation: any device, and differentiable twice)."""
    integral = running_integral_at(values, edges)
    return integral[:, 1:] - integral[:, :-1]


@in_float32_at_least
def interval_average(
    values: torch.Tensor,
    edges: torch.Tensor,
    normaliser: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Overlap-weighted average of a signal over consecutive intervals.

    Args:
        values: (B, n, D) the signal on unit cells (or (1, n, D), shared by the batch).
        edges: (B, K + 1) non-decreasing interval boundaries in cell units.
        normaliser: maps the (B, K) interval widths (the sums of the overlap weights) to the
            denominators, e.g. ``lambda w: w.clamp(min=1e-6)``.

    Returns:
        (B, K, D) the averages, in ``values``' dtype (computed in float32 at least).
    """
    widths = (edges[:, 1:] - edges[:, :-1]).to(values.dtype)
    # × the (B, K) reciprocals rather than ÷ a broadcast: fewer (B, K, D) passes forward and back
    return interval_integral(values, edges) * normaliser(widths).reciprocal().unsqueeze(-1)


def overlap_average_weights(
    edges: torch.Tensor, cells: int, normaliser: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The dense matrix of :func:`interval_average`: ``weights @ values`` gives the averages.

    Args:
        edges: (B, K + 1) non-decreasing interval boundaries in [0, cells].
        cells: n, the number of unit cells.
        normaliser: as in :func:`interval_average`.

    Returns:
        (B, K, n) the overlaps of each interval with the unit cells over the normalised width;
        differentiable in ``edges``.
    """
    lower = torch.arange(cells, device=edges.device, dtype=edges.dtype)
    starts, ends = edges[:, :-1, None], edges[:, 1:, None]
    overlap = (torch.minimum(ends, lower + 1) - torch.maximum(starts, lower)).clamp(min=0.0)
    return overlap / normaliser(ends - starts)


def row_overlap_normaliser(widths: torch.Tensor) -> torch.Tensor:
    """Step 3's denominator: the weight sum clamped at 1e-6."""
    return widths.clamp(min=1e-6)


def token_overlap_normaliser(widths: torch.Tensor) -> torch.Tensor:
    """Step 5's denominator: the weight sum plus 1e-12."""
    return widths + 1e-12
