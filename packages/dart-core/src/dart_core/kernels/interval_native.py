"""The interval integral on the CPU through the compiled kernels of ``dart_cpu.c``.

``interval_integral(values, points)[b, k]`` is the integral of the piecewise-constant signal
``values[b]`` (unit cells) from ``points[b, k]`` to ``points[b, k + 1]``: the numerator of the
overlap averages of :mod:`dart_core.intervals`. One pass over each interval's cells forward, one
scatter backward, instead of a running sum, two row gathers and their autograd graph. Registered
as a custom operator with its own backward, so ``torch.compile`` keeps it opaque.
"""

from __future__ import annotations

import torch

from . import native


def _sizes(values: torch.Tensor, points: torch.Tensor) -> tuple[int, int, int]:
    return values.shape[1], points.shape[1] - 1, values.shape[2]


@torch.library.custom_op("dart_core::interval_integral", mutates_args=())
def interval_integral(values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, L, D) values, (B, K + 1) points (same dtype, float32/64, CPU) → (B, K, D) integrals."""
    values, points = values.contiguous(), points.contiguous()
    out = values.new_empty(points.shape[0], points.shape[1] - 1, values.shape[2])
    native.run_batched(
        native.function("dart_interval_integral", values.dtype), points.shape[0],
        *map(native.pointer, (values, points, out)), _sizes(values, points),
    )
    return out


@interval_integral.register_fake
def _(values, points):
    return values.new_empty(points.shape[0], points.shape[1] - 1, values.shape[2])


@torch.library.custom_op("dart_core::interval_integral_backward", mutates_args=())
def interval_integral_backward(
    grad: torch.Tensor, values: torch.Tensor, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients to (values (B, L, D), points (B, K + 1)) from the (B, K, D) output gradient."""
    grad, values, points = grad.contiguous(), values.contiguous(), points.contiguous()
    grad_values, grad_points = torch.empty_like(values), torch.empty_like(points)
    native.run_batched(
        native.function("dart_interval_integral_backward", values.dtype), points.shape[0],
        *map(native.pointer, (grad, values, points, grad_values, grad_points)), _sizes(values, points),
    )
    return grad_values, grad_points


@interval_integral_backward.register_fake
def _(grad, values, points):
    return torch.empty_like(values), torch.empty_like(points)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    values, points = ctx.saved_tensors
    return interval_integral_backward(grad, values, points)


interval_integral.register_autograd(_backward, setup_context=_setup_context)
