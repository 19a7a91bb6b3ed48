"""Vectorised PyTorch path of the fused patch sampler (the fallback: CPUs without a C compiler,
devices without Triton; and an independent implementation the kernels are tested against).

Each output value blends at most 4 image taps (DESIGN.md §1 step 6). On the CPU the separable
form is the cheapest in memory traffic: whole image lines are blended into the row strip (the
forward: one ``embedding_bag`` with 2-line bags weighted (1 - frac, frac), which reads both lines
and writes the blend in one pass; the backward, which needs both lines: ``index_select`` copies,
a memcpy per line), then the strip's columns are read at the two x taps of every sample with one
``index_select`` (``out=`` overloads: on the CPU they take torch's memcpy / vectorised kernels and
are several times faster than the allocating ones).

The strip of one image is (C·P, R·W): small enough to stay in cache. The big work (line copies,
blends, column reads, channel sums) runs image by image in reused work buffers, so the peak
memory is the output plus one image's strip; everything of size (B, N·P) or smaller (tap
indices, weights, the row reductions that give the line gradients) is done for the whole batch
at once. That is a loop over images, not over rows or tokens, and nothing syncs with the host.

The backward is analytic, not traced, and reads 3 strip columns per value where the 4-tap form
reads 4: the sample gradient is one read of the strip's forward differences ``L[s+1] - L[s]``
(the two taps' difference, zero padding included), the line gradient one paired read of
``lower - upper`` at both taps. No strip-sized gradient is built unless the image needs one.

Conventions shared with :mod:`.patch_triton` (see :mod:`.patch_function`):

* ``line_top``: (B, R, P) int64, the upper image line of each resampled line (row r, line k).
* ``line_frac``: (B, R, P) float, the blend towards line ``min(top + 1, H - 1)``.
* ``sample_left``: (B, M) int64, M = N·P, the left strip column of each x sample; the strip has
  S = R·W columns, column s is image column ``s % W`` of row ``s // W``; columns outside
  [0, S) read as zero.
* ``sample_frac``: (B, M) float, the blend towards column ``left + 1``.
* Output: (B, N, C, P, P) contiguous patches, ``[b, n, c, k, t]`` = line k, sample t of token n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class Workspace:
    """Flat work buffers reused by every image of one call; ``take`` returns a prefix as a shape."""

    def __init__(self, like: torch.Tensor, dtype: torch.dtype):
        self.like, self.dtype, self.buffers = like, dtype, {}

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        count = 1
        for size in shape:
            count *= size
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < count:
            buffer = self.buffers[name] = self.like.new_empty(count, dtype=self.dtype)
        return buffer[:count].view(shape)


@dataclass
class Geometry:
    """Where every sample reads, for the whole batch.

    Attributes:
        top, bottom: (B, C·P·R) flat indices into ``images.reshape(B·C·H, W)`` of each strip
            line's upper and lower image line, ordered (c, k, r) within a sample.
        frac: (B, 1, P, R, 1) the y fractions in the strip's (k, r) order.
        columns: (B, 2·M) the left then the right tap's strip column, clamped into [0, S).
        weights: (B, 2, M) their bilinear weights, zero for a tap outside the strip.
    """

    top: torch.Tensor
    bottom: torch.Tensor
    frac: torch.Tensor
    columns: torch.Tensor
    weights: torch.Tensor


def geometry(images: torch.Tensor, line_top: torch.Tensor, line_frac: torch.Tensor,
             sample_left: torch.Tensor, sample_frac: torch.Tensor) -> Geometry:
    """The batch's :class:`Geometry` from the integer taps and fractions (module docstring)."""
    batch, channels, height, width = images.shape
    length = line_top.shape[1] * width
    top = line_top.transpose(1, 2)[:, None]  # (B, 1, P, R)
    plane = (torch.arange(batch * channels, device=top.device) * height).view(batch, channels, 1, 1)
    taps = torch.stack((sample_left, sample_left + 1), 1)  # (B, 2, M)
    inside = ((taps >= 0) & (taps < length)).to(sample_frac.dtype)
    return Geometry(
        top=(plane + top).flatten(1),
        bottom=(plane + (top + 1).clamp(max=height - 1)).flatten(1),
        frac=line_frac.transpose(1, 2)[:, None, :, :, None],
        columns=taps.clamp(0, length - 1).flatten(1),
        weights=torch.stack((1 - sample_frac, sample_frac), 1).mul_(inside),
    )


def _image_lines(flat: torch.Tensor, geo: Geometry, b: int, work: Workspace, shape: tuple[int, int, int, int]):
    """Copy ``b``'s upper and lower image lines: ``flat`` (B·C·H, W) → two (C, P, R, W) buffers."""
    channels, lines, rows, width = shape
    upper = torch.index_select(flat, 0, geo.top[b], out=work.take("upper", (channels * lines * rows, width)))
    lower = torch.index_select(flat, 0, geo.bottom[b], out=work.take("lower", (channels * lines * rows, width)))
    return upper.view(shape), lower.view(shape)


def _tap_columns(strip: torch.Tensor, geo: Geometry, b: int, out: torch.Tensor) -> torch.Tensor:
    """Read a (C·P, S) strip at both taps of every sample: out (C·P, 2, M)."""
    return torch.index_select(strip, 1, geo.columns[b], out=out.view(strip.shape[0], -1)).view(out.shape)


def patch_sample_forward(
    images: torch.Tensor,
    line_top: torch.Tensor,
    line_frac: torch.Tensor,
    sample_left: torch.Tensor,
    sample_frac: torch.Tensor,
) -> torch.Tensor:
    """Forward pass; see the module docstring for shapes. Returns (B, N, C, P, P) in images' dtype."""
    batch, channels, height, width = images.shape
    lines, samples = line_top.shape[2], sample_left.shape[1]
    tokens = samples // lines
    out = images.new_empty(batch, tokens, channels, lines, lines)
    work = Workspace(images, line_frac.dtype)
    flat = images.to(line_frac.dtype).reshape(batch * channels * height, width)
    geo = geometry(images, line_top, line_frac, sample_left, sample_frac)
    # Each strip line is a 2-line "bag" of image lines weighted (1 - frac, frac): embedding_bag
    # reads both lines and writes their blend in one pass.
    bags = torch.stack((geo.top, geo.bottom), 2)  # (B, C·P·R, 2)
    frac = geo.frac.expand(-1, channels, -1, -1, -1).reshape(batch, -1)
    blend = torch.stack((1 - frac, frac), 2)
    for b in range(batch):
        strip = F.embedding_bag(bags[b], flat, mode="sum", per_sample_weights=blend[b]).view(channels * lines, -1)
        taps = _tap_columns(strip, geo, b, work.take("taps", (channels * lines, 2, samples)))
        values = torch.mul(taps[:, 0], geo.weights[b, 0], out=work.take("values", (channels * lines, samples)))
        values.addcmul_(taps[:, 1], geo.weights[b, 1])
        out[b].copy_(values.view(channels, lines, tokens, lines).permute(2, 0, 1, 3))
    return out


def patch_sample_backward(
    grad_patches: torch.Tensor,
    images: torch.Tensor,
    line_top: torch.Tensor,
    line_frac: torch.Tensor,
    sample_left: torch.Tensor,
    sample_frac: torch.Tensor,
    need_images: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Analytic backward.

    Returns (grad images (B, C, H, W) or None, grad line_frac (B, R, P), grad sample_frac (B, M)).
    """
    batch, channels, height, width = images.shape
    rows, lines = line_top.shape[1], line_top.shape[2]
    samples = sample_left.shape[1]
    tokens, length, planes = samples // lines, rows * width, channels * lines
    dtype = line_frac.dtype
    work = Workspace(images, dtype)
    flat = images.to(dtype).reshape(batch * channels * height, width)
    geo = geometry(images, line_top, line_frac, sample_left, sample_frac)
    shape = (channels, lines, rows, width)
    # The sample gradient is the strip's difference across the two taps: for left tap s, column
    # s + 1 of the padded differences [L_0, L_1 - L_0, ..., L_{S-1} - L_{S-2}, -L_{S-1}].
    step = (sample_left + 1).clamp(0, length)
    step_inside = ((sample_left >= -1) & (sample_left < length)).to(dtype)
    grad_sample = sample_frac.new_empty(batch, samples)
    # d value / d line_frac = the tap's weight × (lower - upper) at the tap, summed per strip row:
    # one matmul with each image's (2·M, R) tap weights spread by row (2 nonzeros per sample).
    tap_rows = torch.div(geo.columns, width, rounding_mode="floor")[..., None]  # (B, 2·M, 1)
    tap_weights = geo.weights.view(batch, 2 * samples, 1)
    grad_line = line_frac.new_empty(batch, channels, lines, rows)
    grad_images = images.new_zeros(images.shape, dtype=dtype) if need_images else None
    for b in range(batch):
        grad = work.take("grad", (planes, samples))
        grad.view(channels, lines, tokens, lines).copy_(grad_patches[b].permute(1, 2, 0, 3))
        upper, lower = _image_lines(flat, geo, b, work, shape)
        spread = lower.sub_(upper).view(planes, length)  # lower - upper
        strip = upper.addcmul_(lower, geo.frac[b]).view(planes, length)
        steps = work.take("steps", (planes, length + 1))
        torch.sub(strip[:, 1:], strip[:, :-1], out=steps[:, 1:-1])
        steps[:, 0], steps[:, -1] = strip[:, 0], strip[:, -1].neg()
        read = torch.index_select(steps, 1, step[b], out=work.take("read", (planes, samples)))
        grad_sample[b] = read.mul_(grad).sum(0)
        taps = _tap_columns(spread, geo, b, work.take("taps", (planes, 2, samples))).mul_(grad[:, None])
        by_row = work.take("by_row", (2 * samples, rows)).zero_().scatter_(1, tap_rows[b], tap_weights[b])
        torch.mm(taps.view(planes, 2 * samples), by_row, out=grad_line[b].view(planes, rows))
        if need_images:
            grad_images[b] = _image_grad(grad, geo, b, work, (channels, height, width))
    grad_sample.mul_(step_inside)
    grad_line = grad_line.sum(1).transpose(1, 2).contiguous()
    if grad_images is not None:
        grad_images = grad_images.to(images.dtype)
    return grad_images, grad_line, grad_sample


def _image_grad(grad: torch.Tensor, geo: Geometry, b: int, work: Workspace, shape: tuple[int, int, int]):
    """Scatter one image's (C·P, M) grads through its x taps and line blends into (C, H, W)."""
    channels, height, width = shape
    lines, rows = geo.frac.shape[2:4]
    samples = grad.shape[1]
    grad_strip = work.take("grad_strip", (channels * lines, rows * width)).zero_()
    weighted = grad[:, None] * geo.weights[b, :, None].transpose(0, 1)  # (C·P, 2, M)
    grad_strip.index_add_(1, geo.columns[b], weighted.view(channels * lines, 2 * samples))
    strip = grad_strip.view(channels, lines, rows, width)
    lower_share = strip * geo.frac[b]
    flat = grad.new_zeros(channels * height, width)
    first = b * channels * height  # the geometry's indices address the whole batch
    flat.index_add_(0, geo.bottom[b] - first, lower_share.view(-1, width))
    flat.index_add_(0, geo.top[b] - first, (strip - lower_share).view(-1, width))
    return flat.view(channels, height, width)
