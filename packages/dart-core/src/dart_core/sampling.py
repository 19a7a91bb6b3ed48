"""Patch sampling (DESIGN.md §1 step 6).

Coordinates are pixel indices (pixel i sits at i; bilinear with ``align_corners=True``
semantics). Row r spans ``[Y_r, Y_{r+1}] = row_edges · H`` and is resampled to P lines at
``y = Y_r + (Y_{r+1} - Y_r) · k / P`` (border padding). The R resampled rows, joined side by
side, form a strip of width R·W; token n spans strip x in ``[X_n, X_{n+1}] = token_edges · W``
and is sampled at ``x = X_n + (X_{n+1} - X_n) · t / P`` (zero padding, neighbouring rows blend
at a seam). The positions are computed here in float64; the sampling itself is the fused
kernel of :mod:`dart_core.kernels` (Triton on CUDA, compiled C on the CPU, a vectorised PyTorch
path as the fallback, all three with analytic backward passes), which never builds the whole
strip.
"""

from __future__ import annotations

import torch

from .kernels import sample_strip_patches
from .kernels.patch_function import Backend
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


def sample_patches(
    images: torch.Tensor, partition: Partition, patch_size: int, *, backend: Backend = "auto"
) -> torch.Tensor:
    """Sample one P×P patch per token.

    Works for any image size (including the high-resolution mode, where the image is larger
    than grid × P), any patch size and any aspect ratio.

    Args:
        images: (B, C, H, W) images, any float dtype.
        partition: a :class:`Partition` with B samples, R rows and N tokens.
        patch_size: P.
        backend: ``"auto"`` (Triton for CUDA tensors, compiled C for CPU tensors), ``"torch"``,
            ``"triton"`` or ``"native"`` (see :func:`dart_core.kernels.resolve_backend`).

    Returns:
        (B, N, C, P, P) patches in the images' dtype; differentiable in the images and in the
        partition's edges.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if partition.row_edges.shape[0] != batch:
        raise ValueError(
            f"partition has {partition.row_edges.shape[0]} samples but images have {batch}"
        )
    line_y = span_samples(partition.row_edges * height, patch_size)  # (B, R, P)
    sample_x = span_samples(partition.token_edges * width, patch_size)  # (B, N, P)
    return sample_strip_patches(images, line_y, sample_x, backend)
