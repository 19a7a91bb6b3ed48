"""Patch sampling (DESIGN.md §1 step 6), vectorised PyTorch path.

Coordinates are pixel indices (pixel i sits at i; bilinear with ``align_corners=True``
semantics). Row r spans ``[Y_r, Y_{r+1}] = row_edges · H`` and is resampled to P lines at
``y = Y_r + (Y_{r+1} - Y_r) · k / P`` (border padding). The R resampled rows, joined side by
side, form a strip of width R·W; token n spans strip x in ``[X_n, X_{n+1}] = token_edges · W``
and is sampled at ``x = X_n + (X_{n+1} - X_n) · t / P`` (zero padding, neighbouring rows blend
at a seam). The two passes are separable, so each pass is one gather and one lerp; there is no
Python loop over rows or tokens and no host sync.
"""

from __future__ import annotations

import torch

from .partition import Partition


def patch_offsets(patch_size: int, like: torch.Tensor) -> torch.Tensor:
    """(P,) the sample offsets k / P, k = 0..P-1, as fractions of a span."""
    return torch.arange(patch_size, device=like.device, dtype=like.dtype) / patch_size


def span_samples(edges: torch.Tensor, patch_size: int) -> torch.Tensor:
    """P evenly spaced samples from the start of each span.

    Args:
        edges: (B, K + 1) span boundaries.

    Returns:
        (B, K, P) the positions ``e_k + (e_{k+1} - e_k) · t / P``.
    """
    starts, ends = edges[:, :-1, None], edges[:, 1:, None]
    return starts + (ends - starts) * patch_offsets(patch_size, edges)


def row_lines(images: torch.Tensor, line_y: torch.Tensor) -> torch.Tensor:
    """Resample whole image lines at fractional heights (bilinear, border padding).

    Args:
        images: (B, C, H, W).
        line_y: (B, L) heights in pixel-index coordinates.

    Returns:
        (B, C, L, W) the lines.
    """
    batch, channels, height, width = images.shape
    y = line_y.clamp(0.0, float(height - 1))
    top = y.detach().floor().long().clamp(max=height - 1)
    bottom = (top + 1).clamp(max=height - 1)
    frac = (y - top.to(y.dtype)).to(images.dtype)[:, None, :, None]
    shape = (batch, channels, line_y.shape[1], width)
    upper = images.gather(2, top[:, None, :, None].expand(shape))
    lower = images.gather(2, bottom[:, None, :, None].expand(shape))
    return torch.lerp(upper, lower, frac)


def strip_samples(strip: torch.Tensor, sample_x: torch.Tensor) -> torch.Tensor:
    """Sample a strip along its last axis (bilinear, zero padding).

    Args:
        strip: (B, C, P, S) the joined rows.
        sample_x: (B, M) positions in [0, S] in pixel-index coordinates.

    Returns:
        (B, C, P, M) the samples.
    """
    batch, channels, lines, length = strip.shape
    left = sample_x.detach().floor().long()
    frac = (sample_x - left.to(sample_x.dtype)).to(strip.dtype)
    right = left + 1
    shape = (batch, channels, lines, sample_x.shape[1])

    def tap(index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        inside = (index >= 0) & (index < length)
        values = strip.gather(-1, index.clamp(0, length - 1)[:, None, None, :].expand(shape))
        return values * (weight * inside.to(weight.dtype))[:, None, None, :]

    return tap(left, 1 - frac) + tap(right, frac)


def sample_patches(images: torch.Tensor, partition: Partition, patch_size: int) -> torch.Tensor:
    """Sample one P×P patch per token.

    Works for any image size (including the high-resolution mode, where the image is larger
    than grid × P), any patch size and any aspect ratio.

    Args:
        images: (B, C, H, W) images, any float dtype.
        partition: a :class:`Partition` with B samples, R rows and N tokens.
        patch_size: P.

    Returns:
        (B, N, C, P, P) patches in the images' dtype; differentiable in the images and in the
        partition's edges.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if partition.row_edges.shape[0] != batch:
        raise ValueError(
            f"partition has {partition.row_edges.shape[0]} samples but images have {batch}"
        )
    rows, tokens = partition.num_rows, partition.num_tokens
    line_y = span_samples(partition.row_edges * height, patch_size)  # (B, R, P)
    lines = row_lines(images, line_y.flatten(1))  # (B, C, R * P, W)
    strip = (
        lines.view(batch, channels, rows, patch_size, width)
        .permute(0, 1, 3, 2, 4)
        .reshape(batch, channels, patch_size, rows * width)
    )
    sample_x = span_samples(partition.token_edges * width, patch_size)  # (B, N, P)
    patches = strip_samples(strip, sample_x.flatten(1))  # (B, C, P, N * P)
    return patches.view(batch, channels, patch_size, tokens, patch_size).permute(0, 3, 1, 2, 4)
