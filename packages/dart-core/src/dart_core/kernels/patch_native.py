"""The fused patch sampler on the CPU through the compiled kernels of ``dart_cpu.c``.

One pass per direction, 4 image taps per value, no strip built (the scheme of the Triton
kernels, written for a CPU core: a token's row lines are hoisted out of its sample loop).
Same functions, shapes and conventions as :mod:`.patch_torch`; float16/bfloat16 images are
sampled in float32 (the compute dtype of ``line_frac``).
"""

from __future__ import annotations

import torch

from . import native


def _sizes(images: torch.Tensor, line_top: torch.Tensor, sample_left: torch.Tensor) -> tuple[int, ...]:
    _, channels, height, width = images.shape
    rows, lines = line_top.shape[1:]
    return channels, height, width, rows, lines, sample_left.shape[1] // lines


def patch_sample_forward(images, line_top, line_frac, sample_left, sample_frac) -> torch.Tensor:
    """(B, C, H, W) images → (B, N, C, P, P) patches in the images' dtype (contract of :mod:`.patch_torch`)."""
    dtype = line_frac.dtype
    work = images.to(dtype).contiguous()
    sizes = _sizes(images, line_top, sample_left)
    channels, _, _, _, lines, tokens = sizes
    out = work.new_empty(images.shape[0], tokens, channels, lines, lines)
    native.call(
        native.function("dart_patch_forward", dtype), images.shape[0],
        *map(native.pointer, (work, line_top, line_frac, sample_left, sample_frac, out)), sizes,
    )
    return out.to(images.dtype)


def patch_sample_backward(grad_patches, images, line_top, line_frac, sample_left, sample_frac, need_images):
    """Gradients: images (B, C, H, W) or None, line_frac (B, R, P), sample_frac (B, M)."""
    dtype = line_frac.dtype
    work = images.to(dtype).contiguous()
    grad = grad_patches.to(dtype).contiguous()
    grad_images = torch.empty_like(work) if need_images else None
    grad_line = torch.empty_like(line_frac)
    grad_sample = torch.empty_like(sample_frac)
    native.call(
        native.function("dart_patch_backward", dtype), images.shape[0],
        *map(native.pointer, (grad, work, line_top, line_frac, sample_left, sample_frac, grad_images, grad_line,
                              grad_sample)),
        _sizes(images, line_top, sample_left),
    )
    return (None if grad_images is None else grad_images.to(images.dtype)), grad_line, grad_sample
