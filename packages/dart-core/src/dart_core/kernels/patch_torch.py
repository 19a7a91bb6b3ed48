"""Vectorised PyTorch path of the fused patch sampler (CPU, and any device without Triton).

Each output value blends at most 4 image taps (DESIGN.md §1 step 6). On the CPU the separable
form is the cheapest in memory traffic: whole image lines are copied with ``index_select`` (a
memcpy per line) and blended into the row strip, then the strip's columns are read at the two x
taps of every sample, again with ``index_select`` (``out=`` overloads: on the CPU they take
torch's memcpy / vectorised kernels and are several times faster than the allocating ones).

The strip of one image is (C·P, R·W): small enough to stay in cache. The big work (line copies,
blends, column reads) runs image by image in reused work buffers, so the peak memory is the
output plus one image's strip; everything of size (B, N·P) or smaller (tap indices, weights,
the reductions that give the position gradients) is done for the whole batch at once. That is a
loop over images, not over rows or tokens, and nothing syncs with the host.

The backward is analytic, not traced: the gradients to the fractional positions are reductions
of grad × tap values (summed over channels image by image, then combined for the batch), so no
strip-sized gradient buffer is built unless the image itself needs a gradient.

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
        frac: (B, P, R) the y fractions in the strip's (k, r) order.
        taps: for the left then the right x tap, (column, row, inside, weight), each (B, M):
            the strip column clamped into [0, S), its row, whether the unclamped column lies
            inside the strip (zero padding) and its bilinear weight (zero outside).
    """

    top: torch.Tensor
    bottom: torch.Tensor
    frac: torch.Tensor
    taps: list


def geometry(images: torch.Tensor, line_top: torch.Tensor, line_frac: torch.Tensor,
             sample_left: torch.Tensor, sample_frac: torch.Tensor) -> Geometry:
    """The batch's :class:`Geometry` from the integer taps and fractions (module docstring)."""
    batch, channels, height, width = images.shape
    rows = line_top.shape[1]
    length = rows * width
    top = line_top.transpose(1, 2)[:, None]  # (B, 1, P, R)
    plane = (torch.arange(batch * channels, device=top.device) * height).view(batch, channels, 1, 1)
    taps = []
    for index, weight in ((sample_left, 1 - sample_frac), (sample_left + 1, sample_frac)):
        inside = ((index >= 0) & (index < length)).to(sample_frac.dtype)
        column = index.clamp(0, length - 1)
        taps.append((column, torch.div(column, width, rounding_mode="floor"), inside, weight * inside))
    return Geometry(
        top=(plane + top).flatten(1),
        bottom=(plane + (top + 1).clamp(max=height - 1)).flatten(1),
        frac=line_frac.transpose(1, 2),
        taps=taps,
    )


def _lines(flat: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Copy whole image lines: (C·P·R,) indices into ``flat`` (B·C·H, W) → out (C·P·R, W)."""
    return torch.index_select(flat, 0, index, out=out)


def _columns(strip: torch.Tensor, column: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Read strip columns: (C·P, S) strip, (M,) columns → out (C·P, M)."""
    return torch.index_select(strip, 1, column, out=out)


def _image_lines(images, geo: Geometry, b: int, work: Workspace):
    """Sample ``b``'s upper and lower strip lines, each (C, P, R, W) in the work dtype."""
    batch, channels, height, width = images.shape
    lines, rows = geo.frac.shape[1:]
    flat = images.reshape(batch * channels * height, width)
    shape = (channels * lines * rows, width)
    upper = _lines(flat, geo.top[b], work.take("upper", shape))
    lower = _lines(flat, geo.bottom[b], work.take("lower", shape))
    view = (channels, lines, rows, width)
    return upper.reshape(view), lower.reshape(view)


def patch_sample_forward(
    images: torch.Tensor,
    line_top: torch.Tensor,
    line_frac: torch.Tensor,
    sample_left: torch.Tensor,
    sample_frac: torch.Tensor,
) -> torch.Tensor:
    """Forward pass; see the module docstring for shapes. Returns (B, N, C, P, P) in images' dtype."""
    batch, channels, height, width = images.shape
    rows, lines = line_top.shape[1], line_top.shape[2]
    tokens = sample_left.shape[1] // lines
    out = images.new_empty(batch, tokens, channels, lines, lines)
    work = Workspace(images, line_frac.dtype)
    source = images.to(line_frac.dtype)
    geo = geometry(images, line_top, line_frac, sample_left, sample_frac)
    (left, _, _, weight_left), (right, _, _, weight_right) = geo.taps
    shape = (channels * lines, sample_left.shape[1])
    for b in range(batch):
        upper, lower = _image_lines(source, geo, b, work)
        strip = upper.lerp_(lower, geo.frac[b, None, :, :, None]).reshape(channels * lines, rows * width)
        values = _columns(strip, left[b], work.take("values", shape)).mul_(weight_left[b])
        values.addcmul_(_columns(strip, right[b], work.take("tap", shape)), weight_right[b])
        out[b].copy_(values.reshape(channels, lines, tokens, lines).permute(2, 0, 1, 3))
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
    tokens = samples // lines
    dtype = line_frac.dtype
    work = Workspace(images, dtype)
    source = images.to(dtype)
    geo = geometry(images, line_top, line_frac, sample_left, sample_frac)
    shape = (channels * lines, samples)
    grad_sample = torch.zeros_like(sample_frac)
    grad_line = line_frac.new_zeros(batch, rows, lines)
    grad_images = images.new_zeros(images.shape, dtype=dtype) if need_images else None
    for b in range(batch):
        grad = work.take("grad", shape)
        grad.view(channels, lines, tokens, lines).copy_(grad_patches[b].permute(1, 2, 0, 3))
        strips = [part.reshape(channels * lines, rows * width) for part in _image_lines(source, geo, b, work)]
        product = work.take("product", shape)
        for (column, row, inside, weight), sign in zip(geo.taps, (-1.0, 1.0), strict=True):
            # Channel sums of grad × the upper and the lower line at the tap: (P, M) each.
            grad_upper, grad_lower = (
                torch.sum(torch.mul(grad, _columns(strip, column[b], work.take("tap", shape)), out=product)
                          .reshape(channels, lines, samples), 0, out=work.take(name, (lines, samples)))
                for strip, name in zip(strips, ("grad_upper", "grad_lower"), strict=True)
            )
            grad_diff = grad_lower.sub_(grad_upper)
            frac = _columns(geo.frac[b], row[b], work.take("frac", (lines, samples)))  # the tap's y fraction
            # d value / d sample_frac = right tap - left tap, tap = upper + frac_y × diff (zero outside).
            grad_sample[b].addcmul_(grad_upper.addcmul_(grad_diff, frac).sum(0), inside[b], value=sign)
            # d value / d line_frac = the tap's weight × (lower - upper) at the tap.
            grad_line[b].index_add_(0, row[b], grad_diff.mul_(weight[b]).t())
        if need_images:
            grad_images[b] = _image_grad(grad, geo, b, work, (channels, height, width))
    if grad_images is not None:
        grad_images = grad_images.to(images.dtype)
    return grad_images, grad_line, grad_sample


def _image_grad(grad: torch.Tensor, geo: Geometry, b: int, work: Workspace, shape: tuple[int, int, int]):
    """Scatter one image's (C·P, M) grads through its x taps and line blends into (C, H, W)."""
    channels, height, width = shape
    lines, rows = geo.frac.shape[1:]
    grad_strip = work.take("grad_strip", (channels * lines, rows * width)).zero_()
    for column, _, _, weight in geo.taps:
        grad_strip.index_add_(1, column[b], grad * weight[b])
    strip = grad_strip.reshape(channels, lines, rows, width)
    lower_share = strip * geo.frac[b, None, :, :, None]
    flat = grad.new_zeros(channels * height, width)
    first = b * channels * height  # the geometry's indices address the whole batch
    flat.index_add_(0, geo.bottom[b] - first, lower_share.reshape(-1, width))
    flat.index_add_(0, geo.top[b] - first, (strip - lower_share).reshape(-1, width))
    return flat.view(channels, height, width)
