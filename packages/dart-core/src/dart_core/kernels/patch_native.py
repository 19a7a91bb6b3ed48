"""The fused patch sampler on the CPU through the compiled kernels of ``dart_cpu.c``.

One pass per direction: each row's strip lines are blended one at a time into a one-line buffer
and read there at the x taps of that row's samples (the scheme is described in ``dart_cpu.c``).
Same functions, shapes and conventions as :mod:`.patch_torch`; float16/bfloat16 images are
sampled in float32 (the compute dtype of ``line_frac``).
"""

from __future__ import annotations

import torch

from . import native


def _sizes(images: torch.Tensor, line_top: torch.Tensor, sample_left: torch.Tensor) -> tuple[int, ...]:
    """The kernels' integer arguments: (B, C, H, W, R, P, N)."""
    rows, lines = line_top.shape[1:]
    return (*images.shape, rows, lines, sample_left.shape[1] // lines)


def patch_sample_forward(images, line_top, line_frac, sample_left, sample_frac) -> torch.Tensor:
    """(B, C, H, W) images → (B, N, C, P, P) patches in the images' dtype (contract of :mod:`.patch_torch`)."""
    dtype = line_frac.dtype
    work = images.to(dtype).contiguous()
    sizes = _sizes(images, line_top, sample_left)
    batch, channels, _, _, _, lines, tokens = sizes
    out = work.new_empty(batch, tokens, channels, lines, lines)
    native.call(native.function("dart_patch_forward", dtype), (work, line_top, line_frac, sample_left, sample_frac, out),
                sizes)
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
        native.function("dart_patch_backward", dtype),
        (grad, work, line_top, line_frac, sample_left, sample_frac, grad_images, grad_line, grad_sample),
        _sizes(images, line_top, sample_left),
    )
    return (None if grad_images is None else grad_images.to(images.dtype)), grad_line, grad_sample
