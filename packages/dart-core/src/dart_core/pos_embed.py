"""Positional-embedding resampling (DESIGN.md §1 step 5).

The learned (h·w, D) table is read as an h×w grid. Its rows are resampled with the same overlap
average as the score density (step 3), the result is flattened into the R·w strip, and token n
gets the overlap average of the strip cells under its span (weights normalised with a 1e-12
guard). Class, distillation or middle tokens keep their own embeddings; see
:func:`split_prefix_pos_embed`.
"""

from __future__ import annotations

import torch

from .intervals import (
    interval_average,
    overlap_average_weights,
    row_overlap_normaliser,
    token_overlap_normaliser,
)
from .partition import Partition
from .precision import autocast_off


def resample_pos_embed(pos_grid: torch.Tensor, partition: Partition) -> torch.Tensor:
    """Positional embeddings for the partition's tokens.

    Args:
        pos_grid: (1 or B, h, w, D) the positional table as a grid (any grid size; it need not
            match the score grid).
        partition: a :class:`Partition` with B samples, R rows and N tokens.

    Returns:
        (B, N, D) one embedding per token, in ``pos_grid``'s dtype.
    """
    if pos_grid.dim() != 4:
        raise ValueError(f"pos_grid must be (1 or B, h, w, D); got shape {tuple(pos_grid.shape)}")
    batch = partition.row_edges.shape[0]
    shared, height, width, dim = pos_grid.shape
    if shared not in (1, batch):
        raise ValueError(f"pos_grid has batch {shared}; expected 1 or the partition's {batch}")
    work = pos_grid if pos_grid.dtype in (torch.float32, torch.float64) else pos_grid.float()
    # Autocast off: it would run the row product in bf16/fp16, and the token edges would then be
    # rounded to that precision (whole cells on a 196-cell strip) when the strip is integrated.
    with autocast_off(pos_grid.device):
        # Rows: R × h overlap weights are tiny, so one matrix product (a shared table: one GEMM).
        weights = overlap_average_weights(partition.row_edges * height, height, row_overlap_normaliser).to(work.dtype)
        table = work.flatten(2)  # (1 or B, h, w * D)
        rows = weights @ (table[0] if shared == 1 else table)  # (B, R, w * D)
        strip = rows.reshape(batch, rows.shape[1] * width, dim)  # (B, R * w, D)
        # Tokens: N × R·w would be large and mostly zero; the running integral is O(R·w + N).
        token_edges = partition.token_edges.to(work.dtype) * width
        return interval_average(strip, token_edges, token_overlap_normaliser).to(pos_grid.dtype)


def split_prefix_pos_embed(
    pos_embed: torch.Tensor, grid_size: tuple[int, int], prefix_index: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a (1, prefix + h·w, D) table into prefix-token embeddings and the patch grid.

    Args:
        pos_embed: (1, L, D) table with L = len(prefix_index) + h·w.
        grid_size: (h, w).
        prefix_index: positions of the class/distillation tokens in the table (Vim's middle
            class token sits at h·w // 2).

    Returns:
        ((1, len(prefix_index), D) prefix embeddings, (1, h, w, D) grid).
    """
    height, width = grid_size
    length = pos_embed.shape[1]
    if length != len(prefix_index) + height * width:
        raise ValueError(
            f"positional table has {length} entries; expected {len(prefix_index)} prefix + "
            f"{height}x{width} grid entries"
        )
    positions = sorted(prefix_index)
    if len(set(positions)) != len(positions) or (positions and not 0 <= positions[0] <= positions[-1] < length):
        raise ValueError(f"prefix_index {tuple(prefix_index)} must be distinct positions in [0, {length})")
    # Slices, not index tensors: the positions are Python ints, and a list or mask index would
    # copy them to the device and read a mask back (host syncs in every forward on a GPU).
    prefix = torch.cat([pos_embed[:, i : i + 1] for i in prefix_index], dim=1) if positions else pos_embed[:, :0]
    bounds = [-1, *positions, length]
    grid = torch.cat([pos_embed[:, start + 1 : end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)], dim=1)
    return prefix, grid.reshape(pos_embed.shape[0], height, width, -1)
