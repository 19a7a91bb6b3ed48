"""The interval integral on the CPU through the compiled kernels of ``dart_cpu.c``.

``interval_integral(values, points)[b, k]`` is the integral of the piecewise-constant signal
``values[b]`` (unit cells) from ``points[b, k]`` to ``points[b, k + 1]``: the numerator of the
overlap averages of :mod:`dart_core.intervals`. One pass over each interval's cells forward, one
scatter backward, instead of a running sum, two row gathers and their autograd graph. Registered
as a custom operator with its own backward, so ``torch.compile`` keeps it opaque.
"""

import torch

from . import native


def _sizes(values: torch.Tensor, points: torch.Tensor) -> tuple[int, int, int, int]:
    """The kernels' integer arguments: (B, L, K, D)."""
    return points.shape[0], values.shape[1], points.shape[1] - 1, values.shape[2]


def check_inputs(values: torch.Tensor, points: torch.Tensor) -> None:
    """Raise unless the kernel can take these: (B, L ≥ 1, D) values and (B, K + 1 ≥ 1) points, both
    CPU and of one dtype, float32 or float64 (the C code reads raw memory: nothing is left unchecked)."""
    if values.dim() != 3 or points.dim() != 2 or values.shape[0] != points.shape[0]:
        raise ValueError(
            f"expected values (B, L, D) and points (B, K + 1) with one batch size; got {tuple(values.shape)} and "
            f"{tuple(points.shape)} (expand a shared (1, L, D) signal to the batch first)"
        )
    if values.shape[1] < 1 or points.shape[1] < 1:
        raise ValueError(f"need at least one cell and one point; got values {tuple(values.shape)}, points "
                         f"{tuple(points.shape)}")
    if values.dtype != points.dtype or values.dtype not in native.SUFFIXES:
        raise ValueError(f"values and points must share a dtype, float32 or float64; got {values.dtype} and "
                         f"{points.dtype}")


@torch.library.custom_op("dart_core::interval_integral", mutates_args=(), device_types="cpu")
def interval_integral(values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, L, D) values, (B, K + 1) points (same dtype, float32/64, CPU) → (B, K, D) integrals.

    The backward is a kernel of its own; under ``create_graph=True`` it differentiates the PyTorch
    formulation instead, so second derivatives exist."""
    check_inputs(values, points)
    values, points = values.contiguous(), points.contiguous()
    out = values.new_empty(points.shape[0], points.shape[1] - 1, values.shape[2])
    native.call(native.function("dart_interval_integral", values.dtype), (values, points, out), _sizes(values, points))
    return out


@interval_integral.register_fake
def _(values, points):
    return values.new_empty(points.shape[0], points.shape[1] - 1, values.shape[2])


@torch.library.custom_op("dart_core::interval_integral_backward", mutates_args=(), device_types="cpu")
def interval_integral_backward(
    grad: torch.Tensor, values: torch.Tensor, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients to (values (B, L, D), points (B, K + 1)) from the (B, K, D) output gradient."""
    check_inputs(values, points)
    if grad.shape != (points.shape[0], points.shape[1] - 1, values.shape[2]) or grad.dtype != values.dtype:
        raise ValueError(f"gradient {tuple(grad.shape)} {grad.dtype} does not match the integrals")
    grad, values, points = grad.contiguous(), values.contiguous(), points.contiguous()
    grad_values, grad_points = torch.empty_like(values), torch.empty_like(points)
    native.call(
        native.function("dart_interval_integral_backward", values.dtype),
        (grad, values, points, grad_values, grad_points), _sizes(values, points),
    )
    return grad_values, grad_points


@interval_integral_backward.register_fake
def _(grad, values, points):
    return torch.empty_like(values), torch.empty_like(points)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    values, points = ctx.saved_tensors
    if not torch.is_grad_enabled():
        return interval_integral_backward(grad, values, points)
    # create_graph=True (second derivatives, e.g. a gradient penalty): differentiate the PyTorch
    # formulation, whose backward is itself differentiable. Same first derivatives.
    from ..intervals import running_interval_integral  # (intervals imports this module)

    wanted = [tensor for tensor in (values, points) if tensor.requires_grad]
    found = iter(torch.autograd.grad(running_interval_integral(values, points), wanted, grad, create_graph=True))
    return tuple(next(found) if tensor.requires_grad else None for tensor in (values, points))


interval_integral.register_autograd(_backward, setup_context=_setup_context)
