"""Bilinear resizing of small score maps as two matrix products (deterministic on every device).

``F.interpolate(mode="bilinear")`` has no deterministic CUDA backward: under
``torch.use_deterministic_algorithms(True)`` a training step that resizes the scorer's raw map
raises. The same resize is ``R_y @ map @ R_xᵀ`` with fixed interpolation matrices, whose
backward is two more matrix products: deterministic, and cheap for score grids (≤ ~32 cells a
side).
"""

from __future__ import annotations

import torch

from .precision import autocast_off, in_float32_at_least


def bilinear_matrix(out_size: int, in_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(out_size, in_size) weights of 1-D linear interpolation, ``align_corners=False``.

    Output cell ``i`` samples the input at ``(i + ½) · in / out − ½``, clamped to [0, in − 1]
    (``F.interpolate`` clamps below and repeats the last cell above), with the hat weights
    ``max(0, 1 − |position − j|)`` of input cells ``j``; each row sums to 1. Built on ``device``
    (no host-to-device copy).
    """
    work = torch.promote_types(dtype, torch.float32)
    scale = in_size / out_size
    position = ((torch.arange(out_size, device=device, dtype=work) + 0.5) * scale - 0.5).clamp(0.0, in_size - 1)
    cells = torch.arange(in_size, device=device, dtype=work)
    return (1.0 - (position[:, None] - cells).abs()).clamp(min=0.0).to(dtype)


def bilinear_resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (..., h, w) float maps to (..., H, W) = ``size``: ``F.interpolate(mode="bilinear",
    align_corners=False)``'s values, as matrix products (the maps unchanged when the size is).

    Computed in float32 at least, with autocast off (it would run the products in bf16), and
    rounded once to the maps' dtype.
    """
    if not maps.is_floating_point():
        raise TypeError(f"bilinear_resize takes floating-point maps, got {maps.dtype}")
    height, width = maps.shape[-2:]
    if min(height, width, *size) < 1:
        raise ValueError(f"sizes must be positive: maps {height}x{width}, target {size[0]}x{size[1]}")
    if (height, width) == tuple(size):
        return maps
    with autocast_off(maps.device):
        return _interpolation_products(maps, size)


@in_float32_at_least
def _interpolation_products(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``R_y @ maps @ R_xᵀ``: (..., h, w) float32/float64 maps → (..., H, W)."""
    rows = bilinear_matrix(size[0], maps.shape[-2], maps.dtype, maps.device)
    cols = bilinear_matrix(size[1], maps.shape[-1], maps.dtype, maps.device)
    return rows @ maps @ cols.T
