"""The 2-D partition of DESIGN.md §1 steps 1-4: scores → row and token boundaries.

Units (grid-independent, so one partition serves images of any resolution):

* ``row_edges``: (B, R + 1) fractions of the image height, 0 = top edge, 1 = bottom edge.
* ``token_edges``: (B, N + 1) positions on the strip of the R new rows laid side by side, in
  units of one image width: the integer part is the row, the fractional part the horizontal
  position within that row (0 = left edge, 1 = right edge). A token may straddle the end of one
  row and the start of the next. ``token_edges[:, 0] = 0`` and ``token_edges[:, -1] = R``.

The partition is computed in float64 whatever the scores' dtype (the tensors are tiny: B×h×w):
a token edge times the strip's width in pixels (up to R·W ≈ 6,000 for a 448 input) needs more
than float32's 24 bits to place samples to 1e-4 of a pixel, and float32 cumulative sums would
move the boundaries by more than the method's own 1e-8 guards. Gradients flow back to the scores
in their own dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .intervals import interval_average, row_overlap_normaliser
from .quantile import density_edges

InvalidPolicy = Literal["uniform", "raise"]


@dataclass(frozen=True)
class Partition:
    """Where the tokens of each image look.

    Attributes:
        row_edges: (B, R + 1) row boundaries as fractions of the image height.
        token_edges: (B, N + 1) token boundaries on the row strip, in [0, R].
        density: (B, h, w) the normalised score density (``pdf``) the partition came from.
    """

    row_edges: torch.Tensor
    token_edges: torch.Tensor
    density: torch.Tensor

    @property
    def num_rows(self) -> int:
        return self.row_edges.shape[-1] - 1

    @property
    def num_tokens(self) -> int:
        return self.token_edges.shape[-1] - 1

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.density.shape[-2:])

    def token_rows(self) -> torch.Tensor:
        """(B, N) the row each token starts in."""
        return self.token_edges[:, :-1].floor().long().clamp(max=self.num_rows - 1)


def check_count(name: str, value) -> int:
    """``value`` as an int, or ValueError naming ``name`` unless it is an integer >= 1."""
    try:
        valid = not isinstance(value, bool) and int(value) == value and value >= 1
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def default_num_rows(num_tokens: int, grid_size: tuple[int, int] | None = None) -> int:
    """The default row count R for N tokens on an (h, w) score grid: ``round(h·sqrt(N / (h·w)))``,
    at least 1, which keeps the grid's aspect (R = h when N = h·w, DESIGN.md's degenerate case).
    A square grid (or none given) gives the published ``round(sqrt(N))``."""
    num_tokens = check_count("num_tokens", num_tokens)
    height, width = grid_size or (1, 1)
    return max(1, round(math.sqrt(num_tokens * height / width)))


def usable_scores(scores: torch.Tensor) -> torch.Tensor:
    """Which samples' scores can be partitioned: finite, non-negative, with a positive sum.

    Args:
        scores: (B, h, w) scores.

    Returns:
        (B,) bool; False where :func:`score_density` falls back to a uniform map (or raises).
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be (B, h, w); got shape {tuple(scores.shape)}")
    flat = scores.to(torch.float64).flatten(1)  # as score_density sees them
    return torch.isfinite(flat).all(-1) & (flat >= 0).all(-1) & (flat.sum(-1) > 0)


def score_density(scores: torch.Tensor, on_invalid: InvalidPolicy = "uniform") -> torch.Tensor:
    """Normalise positive scores into a per-sample density ``pdf = score / score.sum()``.

    Args:
        scores: (B, h, w) non-negative scores.
        on_invalid: what to do with a sample whose scores are non-finite, negative or sum to
            zero. ``"uniform"`` (default, no host sync) replaces that sample's scores with a
            uniform map, i.e. a fixed grid; ``"raise"`` checks the batch and raises ValueError.

    Returns:
        (B, h, w) float64 densities, each summing to 1.
    """
    work = scores.to(torch.float64)
    valid = usable_scores(work)  # checks the shape before the flatten
    flat = work.flatten(1)
    if on_invalid == "raise":
        if not bool(valid.all()):
            bad = torch.nonzero(~valid).flatten().tolist()
            raise ValueError(
                f"scores of samples {bad} are non-finite, negative or all zero; a partition needs "
                "finite non-negative scores with a positive sum (pass on_invalid='uniform' to fall "
                "back to a fixed grid for such samples)"
            )
    elif on_invalid != "uniform":
        raise ValueError(f"on_invalid must be 'uniform' or 'raise', got {on_invalid!r}")
    flat = torch.where(valid.unsqueeze(-1), flat, torch.ones_like(flat))
    # Dividing by the maximum first keeps huge-range scores from overflowing the sum.
    flat = flat / flat.amax(-1, keepdim=True)
    pdf = flat / flat.sum(-1, keepdim=True)
    return pdf.view_as(work)


def marginal_edges(pdf: torch.Tensor, dim: int, count: int) -> torch.Tensor:
    """Equal-mass boundaries of one marginal of a density (step 2).

    Args:
        pdf: (B, h, w) a normalised density.
        dim: -1 sums over columns (the row marginal, h bars); -2 sums over rows (w bars, the
            column marginal of the regular-grid mode, DESIGN.md §3).
        count: number of pieces.

    Returns:
        (B, count + 1) boundaries as fractions of the axis, 0 first and 1 last.
    """
    marginal = pdf.sum(dim)
    marginal = marginal / (marginal.sum(-1, keepdim=True) + 1e-8)
    return density_edges(marginal, count) / marginal.shape[-1]


def partition(
    scores: torch.Tensor,
    num_rows: int | None = None,
    num_tokens: int = 196,
    on_invalid: InvalidPolicy = "uniform",
) -> Partition:
    """Partition each score map into ``num_rows`` rows and ``num_tokens`` tokens.

    Args:
        scores: (B, h, w) non-negative scores on the score grid.
        num_rows: R, the number of rows (default :func:`default_num_rows` for the scores' grid:
            ``round(sqrt(num_tokens))`` on a square grid).
        num_tokens: N, the token budget.
        on_invalid: see :func:`score_density`.

    Returns:
        A :class:`Partition`; edges are differentiable almost everywhere in ``scores``.
    """
    num_tokens = check_count("num_tokens", num_tokens)
    num_rows = default_num_rows(num_tokens, tuple(scores.shape[-2:])) if num_rows is None else check_count("num_rows", num_rows)
    pdf = score_density(scores, on_invalid)
    batch, height, width = pdf.shape

    # Step 2: rows from the row marginal, in old-row units.
    row_edges = marginal_edges(pdf, -1, num_rows) * height  # (B, R + 1)

    # Step 3: each new row's density is the overlap-weighted average of the old rows it covers.
    strip = interval_average(pdf, row_edges, row_overlap_normaliser).flatten(1)  # (B, R * w)
    strip = strip / strip.sum(-1, keepdim=True)

    # Step 4: tokens from the strip, in strip cells, then in row units.
    token_edges = density_edges(strip, num_tokens) / width
    return Partition(row_edges=row_edges / height, token_edges=token_edges, density=pdf)
