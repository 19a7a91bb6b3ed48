"""Triton kernels of the fused patch sampler (CUDA; the CPU under ``TRITON_INTERPRET=1``).

One program per (sample, token) computes the token's P×P patch for one channel straight from the
image: every value blends at most 4 image taps (two x taps on the strip, each blended between two
image lines), so the R·W-wide row strip is never built. The backward program of a token loops
over the channels and produces

* the gradient to the x fractions of its own P samples (a plain store: a token owns them),
* the gradient to the y fractions of the lines it touches (``atomic_add``: many tokens share a
  row's lines),
* optionally the image gradient (``atomic_add`` scatter of the 4 tap weights).

Shapes and index conventions are those of :mod:`.patch_torch`. This module imports Triton at
import time; :mod:`.patch_function` imports it only when a Triton launch is requested, so the
interpreter switch (``TRITON_INTERPRET=1``, read when a kernel is decorated) can be set first.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _tap_geometry(top_ptr, frac_ptr, column, k, valid, width, height, LINES: tl.constexpr):
    """Where an x tap reads: (its line's index, y fraction, upper and lower image offsets)."""
    safe = tl.where(valid, column, 0)
    row = safe // width
    col = safe - row * width
    line = row * LINES + k
    top = tl.load(top_ptr + line, mask=valid, other=0)
    frac = tl.load(frac_ptr + line, mask=valid, other=0.0)
    bottom = tl.minimum(top + 1, height - 1)
    return line, frac, top * width + col, bottom * width + col


@triton.jit
def _tap_read(image, frac, upper_offset, lower_offset, valid):
    """An x tap's value (blended between its two lines) and its lower - upper difference."""
    upper = tl.load(image + upper_offset, mask=valid, other=0.0).to(frac.dtype)
    lower = tl.load(image + lower_offset, mask=valid, other=0.0).to(frac.dtype)
    diff = lower - upper
    return upper + frac * diff, diff


@triton.jit
def _token_setup(left_ptr, sample_frac_ptr, token_id, tokens, rows, width, LINES: tl.constexpr,
                 BLOCK: tl.constexpr):
    """The token's sample indices, x taps and their validity (zero padding outside the strip)."""
    batch = token_id // tokens
    token = token_id - batch * tokens
    k = tl.arange(0, BLOCK)[:, None]
    t = tl.arange(0, BLOCK)[None, :]
    in_patch = (k < LINES) & (t < LINES)
    length = rows * width
    samples = batch.to(tl.int64) * tokens * LINES + token * LINES + t
    left = tl.load(left_ptr + samples, mask=t < LINES, other=0)
    sample_frac = tl.load(sample_frac_ptr + samples, mask=t < LINES, other=0.0)
    valid_left = in_patch & (left >= 0) & (left < length)
    valid_right = in_patch & (left + 1 >= 0) & (left + 1 < length)
    line_base = batch.to(tl.int64) * rows * LINES
    return batch, k, t, in_patch, samples, left, sample_frac, valid_left, valid_right, line_base


@triton.jit
def _patch_forward_kernel(
    image_ptr, top_ptr, line_frac_ptr, left_ptr, sample_frac_ptr, out_ptr,
    channels, height, width, tokens, rows,
    LINES: tl.constexpr, BLOCK: tl.constexpr,
):
    token_id = tl.program_id(0)  # b * N + n
    channel = tl.program_id(1)
    batch, k, t, in_patch, samples, left, sample_frac, valid_left, valid_right, line_base = _token_setup(
        left_ptr, sample_frac_ptr, token_id, tokens, rows, width, LINES, BLOCK)
    image = image_ptr + (batch.to(tl.int64) * channels + channel) * height * width
    _, frac_left, up_left, low_left = _tap_geometry(
        top_ptr + line_base, line_frac_ptr + line_base, left, k, valid_left, width, height, LINES)
    _, frac_right, up_right, low_right = _tap_geometry(
        top_ptr + line_base, line_frac_ptr + line_base, left + 1, k, valid_right, width, height, LINES)
    value_left, _ = _tap_read(image, frac_left, up_left, low_left, valid_left)
    value_right, _ = _tap_read(image, frac_right, up_right, low_right, valid_right)
    value = (1 - sample_frac) * value_left + sample_frac * value_right
    out = out_ptr + (token_id.to(tl.int64) * channels + channel) * LINES * LINES + k * LINES + t
    tl.store(out, value.to(out_ptr.dtype.element_ty), mask=in_patch)


@triton.jit
def _patch_backward_kernel(
    grad_ptr, image_ptr, top_ptr, line_frac_ptr, left_ptr, sample_frac_ptr,
    grad_image_ptr, grad_line_ptr, grad_sample_ptr,
    channels, height, width, tokens, rows,
    LINES: tl.constexpr, BLOCK: tl.constexpr, IMAGE_GRAD: tl.constexpr,
):
    token_id = tl.program_id(0)
    batch, k, t, in_patch, samples, left, sample_frac, valid_left, valid_right, line_base = _token_setup(
        left_ptr, sample_frac_ptr, token_id, tokens, rows, width, LINES, BLOCK)
    weight_left = tl.where(valid_left, 1 - sample_frac, 0.0)
    weight_right = tl.where(valid_right, sample_frac, 0.0)
    line_left, frac_left, up_left, low_left = _tap_geometry(
        top_ptr + line_base, line_frac_ptr + line_base, left, k, valid_left, width, height, LINES)
    line_right, frac_right, up_right, low_right = _tap_geometry(
        top_ptr + line_base, line_frac_ptr + line_base, left + 1, k, valid_right, width, height, LINES)

    acc_sample = tl.zeros((BLOCK, BLOCK), dtype=sample_frac.dtype)
    acc_left = tl.zeros((BLOCK, BLOCK), dtype=sample_frac.dtype)
    acc_right = tl.zeros((BLOCK, BLOCK), dtype=sample_frac.dtype)
    for channel in range(channels):
        plane = (batch.to(tl.int64) * channels + channel) * height * width
        grad_offset = (token_id.to(tl.int64) * channels + channel) * LINES * LINES + k * LINES + t
        grad = tl.load(grad_ptr + grad_offset, mask=in_patch, other=0.0).to(sample_frac.dtype)
        value_left, diff_left = _tap_read(image_ptr + plane, frac_left, up_left, low_left, valid_left)
        value_right, diff_right = _tap_read(image_ptr + plane, frac_right, up_right, low_right, valid_right)
        acc_sample += grad * (value_right - value_left)
        acc_left += grad * diff_left
        acc_right += grad * diff_right
        if IMAGE_GRAD:
            grad_image = grad_image_ptr + plane
            share_left = grad * weight_left
            share_right = grad * weight_right
            tl.atomic_add(grad_image + up_left, share_left * (1 - frac_left), mask=valid_left, sem="relaxed")
            tl.atomic_add(grad_image + low_left, share_left * frac_left, mask=valid_left, sem="relaxed")
            tl.atomic_add(grad_image + up_right, share_right * (1 - frac_right), mask=valid_right, sem="relaxed")
            tl.atomic_add(grad_image + low_right, share_right * frac_right, mask=valid_right, sem="relaxed")

    # d value / d sample_frac = right tap - left tap; a token owns its samples: a plain store.
    tl.store(grad_sample_ptr + samples, tl.sum(acc_sample, axis=0)[None, :], mask=t < LINES)
    # d value / d line_frac = tap weight x (lower - upper); tokens share lines: atomics. All the
    # atomics here are plain accumulations that order nothing else: relaxed, not Triton's default
    # acq_rel (which adds memory fences to every one).
    grad_line = grad_line_ptr + line_base
    tl.atomic_add(grad_line + line_left, acc_left * weight_left, mask=valid_left, sem="relaxed")
    tl.atomic_add(grad_line + line_right, acc_right * weight_right, mask=valid_right, sem="relaxed")


def _block(patch_size: int) -> int:
    return triton.next_power_of_2(patch_size)


def _launch(kernel, device: torch.device, grid: tuple[int, ...], args: tuple, constexprs: dict) -> None:
    """Run ``kernel`` on ``grid`` on the tensors' ``device``; the one place the wrappers launch, so
    ``tools/compile_triton.py`` can record the exact arguments and compile them ahead of time.

    Triton launches on the *current* CUDA device and its current stream, and accepts pointers
    into another GPU's memory: tensors on ``cuda:1`` while ``cuda:0`` is current would run on
    GPU 0, unordered with GPU 1's work. The launch therefore makes the tensors' device current.
    """
    if device.type != "cuda":  # the interpreter (TRITON_INTERPRET=1) on CPU tensors
        kernel[grid](*args, **constexprs)
        return
    with torch.cuda.device(device):
        kernel[grid](*args, **constexprs)


def patch_sample_forward(images, line_top, line_frac, sample_left, sample_frac):
    """Triton forward; same contract as :func:`.patch_torch.patch_sample_forward`."""
    batch, channels, height, width = images.shape
    rows, lines = line_top.shape[1], line_top.shape[2]
    tokens = sample_left.shape[1] // lines
    out = images.new_empty(batch, tokens, channels, lines, lines)
    _launch(
        _patch_forward_kernel, images.device, (batch * tokens, channels),
        (images, line_top, line_frac, sample_left, sample_frac, out, channels, height, width, tokens, rows),
        {"LINES": lines, "BLOCK": _block(lines)},
    )
    return out


def patch_sample_backward(grad_patches, images, line_top, line_frac, sample_left, sample_frac, need_images):
    """Triton backward; same contract as :func:`.patch_torch.patch_sample_backward`."""
    batch, channels, height, width = images.shape
    rows, lines = line_top.shape[1], line_top.shape[2]
    tokens = sample_left.shape[1] // lines
    dtype = line_frac.dtype
    grad_line = torch.zeros_like(line_frac)
    grad_sample = torch.empty_like(sample_frac)
    grad_image = torch.zeros(images.shape, device=images.device, dtype=dtype) if need_images else grad_line
    _launch(
        _patch_backward_kernel, images.device, (batch * tokens,),
        (grad_patches.contiguous(), images, line_top, line_frac, sample_left, sample_frac,
         grad_image, grad_line, grad_sample, channels, height, width, tokens, rows),
        {"LINES": lines, "BLOCK": _block(lines), "IMAGE_GRAD": need_images},
    )
    return (grad_image.to(images.dtype) if need_images else None), grad_line, grad_sample
