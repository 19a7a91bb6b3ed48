"""The fused patch sampler as an autograd Function on two custom operators, with its backend dispatch.

``sample_strip_patches`` takes sample positions (differentiable) and returns patches; the
positions are split once into integer taps and float fractions here, so both backends see the
same integers and the gradients to the fractions flow back to the positions through autograd.
CUDA tensors go to the Triton kernels, CPU float tensors to the compiled C kernels
(:mod:`.native`; the vectorised PyTorch path where no C compiler is found), anything else to the
PyTorch path. None of them syncs with the host in the forward.
"""

import importlib.util
import os
import warnings
from typing import Literal

import torch
from torch.autograd.function import once_differentiable

from . import native, patch_native, patch_torch

Backend = Literal["auto", "torch", "triton", "native"]
BACKENDS = ("auto", "torch", "triton", "native")


def triton_available() -> bool:
    """Whether Triton can be imported."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_module():
    from . import patch_triton

    return patch_triton


def resolve_backend(device: torch.device, backend: Backend) -> str:
    """The implementation that runs for tensors on ``device``: ``"torch"``, ``"triton"`` or ``"native"``.

    ``"auto"`` picks Triton for CUDA tensors, the compiled C kernels for CPU tensors (the PyTorch
    path, with one warning, when they cannot be built) and the PyTorch path elsewhere. An explicit
    request that cannot run raises with the reason.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and triton_available():
            return "triton"
        return "native" if device.type == "cpu" and native.available(warn=True) else "torch"
    if backend == "native":
        if device.type != "cpu":
            raise RuntimeError(f"backend='native' runs CPU tensors only (got {device.type}); use 'auto'")
        if not native.available():
            native.library()  # raises NativeUnavailable with the compiler's message
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
        if device.type != "cuda" and not triton_interpreted():
            raise RuntimeError(
                f"backend='triton' needs CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 before "
                "importing the kernels to run them on the CPU interpreter, or use backend='torch'"
            )
    return backend


def _impl(backend: str):
    """The module with ``patch_sample_forward`` / ``patch_sample_backward`` for a resolved backend."""
    if backend == "triton":
        return _triton_module()
    return patch_native if backend == "native" else patch_torch


# The two passes are registered as custom operators so that torch.compile treats them as opaque
# kernels (its functionalisation would otherwise rewrite the PyTorch path's work-buffer reuse).
@torch.library.custom_op("dart_core::patch_sample", mutates_args=())
def patch_sample_op(
    images: torch.Tensor, line_top: torch.Tensor, line_frac: torch.Tensor, sample_left: torch.Tensor,
    sample_frac: torch.Tensor, backend: str,
) -> torch.Tensor:
    """(B, C, H, W) images and taps → (B, N, C, P, P) patches (see :mod:`.patch_torch`)."""
    return _impl(backend).patch_sample_forward(images, line_top, line_frac, sample_left, sample_frac)


@patch_sample_op.register_fake
def _(images, line_top, line_frac, sample_left, sample_frac, backend):
    lines = line_top.shape[2]
    return images.new_empty(images.shape[0], sample_left.shape[1] // lines, images.shape[1], lines, lines)


@torch.library.custom_op("dart_core::patch_sample_backward", mutates_args=())
def patch_sample_backward_op(
    grad_patches: torch.Tensor, images: torch.Tensor, line_top: torch.Tensor, line_frac: torch.Tensor,
    sample_left: torch.Tensor, sample_frac: torch.Tensor, backend: str, need_images: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients to (images, line_frac, sample_frac); the image gradient is empty unless requested."""
    grad_images, grad_line, grad_sample = _impl(backend).patch_sample_backward(
        grad_patches, images, line_top, line_frac, sample_left, sample_frac, need_images
    )
    return (images.new_empty(0) if grad_images is None else grad_images), grad_line, grad_sample


@patch_sample_backward_op.register_fake
def _(grad_patches, images, line_top, line_frac, sample_left, sample_frac, backend, need_images):
    grad_images = torch.empty_like(images) if need_images else images.new_empty(0)
    return grad_images, torch.empty_like(line_frac), torch.empty_like(sample_frac)


def backward_backend(backend: str, requested: str) -> str:
    """The backend of the backward pass of a forward that ran on ``backend``.

    The Triton backward accumulates the line (and image) gradients with atomics, in no fixed
    order; its forward is deterministic. Under ``torch.use_deterministic_algorithms(True)`` the
    backward of a Triton forward that ``"auto"`` chose runs the PyTorch path instead (same
    contract; its ``index_add_`` is deterministic on CUDA in that mode); an explicit
    ``"triton"`` raises there like PyTorch's own nondeterministic backward passes (a warning
    with ``warn_only=True``, in eager mode: a compiled graph cannot warn, so it raises).
    """
    if backend != "triton" or not torch.are_deterministic_algorithms_enabled():
        return backend
    if requested == "auto":
        return "torch"
    message = ("the Triton backward of backend='triton' accumulates gradients with atomics, which is not "
               "deterministic; under torch.use_deterministic_algorithms(True) use backend='auto', whose backward "
               "then runs the deterministic PyTorch path")
    if torch.compiler.is_compiling() or not torch.is_deterministic_algorithms_warn_only_enabled():
        raise RuntimeError(message)
    warnings.warn(message, stacklevel=2)
    return backend


class PatchSample(torch.autograd.Function):
    """(images, line taps, line fractions, sample taps, sample fractions) → (B, N, C, P, P).

    Differentiable in ``images``, ``line_frac`` and ``sample_frac``; the integer taps are not.
    ``backend`` runs the forward; ``requested`` (what the caller asked for, default ``backend``)
    decides the backward in deterministic mode (:func:`backward_backend`).
    """

    @staticmethod
    def forward(ctx, images, line_top, line_frac, sample_left, sample_frac, backend, requested=None):
        ctx.backend, ctx.requested = backend, requested or backend
        ctx.save_for_backward(images, line_top, line_frac, sample_left, sample_frac)
        return patch_sample_op(images, line_top, line_frac, sample_left, sample_frac, backend)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_patches):
        images, line_top, line_frac, sample_left, sample_frac = ctx.saved_tensors
        need_images = ctx.needs_input_grad[0]
        backend = backward_backend(ctx.backend, ctx.requested)
        grad_images, grad_line, grad_sample = patch_sample_backward_op(
            grad_patches.contiguous(), images, line_top, line_frac, sample_left, sample_frac, backend, need_images
        )
        grads = ((grad_images if need_images else None), None, grad_line, None, grad_sample, None, None)
        return grads[: len(ctx.needs_input_grad)]  # one per input given to apply (requested may be left out)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Interpolation weights and accumulators: float64 for float64 images, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sample_strip_patches(
    images: torch.Tensor, line_y: torch.Tensor, sample_x: torch.Tensor, backend: Backend = "auto"
) -> torch.Tensor:
    """Sample P×P patches at the given line heights and strip positions (DESIGN.md §1 step 6).

    Args:
        images: (B, C, H, W), any float dtype.
        line_y: (B, R, P) heights of the P lines of each row, pixel-index coordinates; clamped to
            [0, H - 1] (border padding).
        sample_x: (B, N, P) positions on the strip of the R rows laid side by side (S = R·W
            columns, pixel-index coordinates); columns outside [0, S) read as zero. A NaN or
            infinite position gives NaN values (every backend).
        backend: ``"auto"`` (Triton for CUDA tensors, the compiled C kernels for CPU tensors),
            ``"torch"``, ``"triton"`` or ``"native"`` (see :func:`resolve_backend`).

    Returns:
        (B, N, C, P, P) patches in the images' dtype, ``[b, n, c, k, t]`` = line k, sample t;
        differentiable in ``images``, ``line_y`` and ``sample_x``.
    """
    if images.dim() != 4 or line_y.dim() != 3 or sample_x.dim() != 3:
        raise ValueError(
            f"expected images (B, C, H, W), line_y (B, R, P), sample_x (B, N, P); got shapes "
            f"{tuple(images.shape)}, {tuple(line_y.shape)}, {tuple(sample_x.shape)}"
        )
    if not (line_y.shape[0] == sample_x.shape[0] == images.shape[0]) or line_y.shape[2] != sample_x.shape[2]:
        raise ValueError(
            f"batch sizes and patch sizes must agree: images {tuple(images.shape)}, line_y "
            f"{tuple(line_y.shape)}, sample_x {tuple(sample_x.shape)}"
        )
    if min(images.shape[2:]) < 1 or min(line_y.shape[1:]) < 1:
        raise ValueError(
            f"nothing to sample: images {tuple(images.shape)} and line_y {tuple(line_y.shape)} need at least one "
            "pixel per side, one row and one line per row"
        )
    requested, backend = backend, resolve_backend(images.device, backend)
    height, length = images.shape[2], line_y.shape[1] * images.shape[3]
    dtype = compute_dtype(images.dtype)
    # The integer taps are clamped into ranges every backend indexes safely (lines to the image,
    # x taps to just past the strip, where they read zero either way); a NaN position keeps its
    # NaN fraction, so its values come out NaN on every backend, with no host sync to check.
    y = line_y.clamp(0.0, float(height - 1))
    line_top = y.detach().floor().nan_to_num(0.0).long()
    line_frac = (y - line_top.to(y.dtype)).to(dtype)
    x = sample_x.flatten(1)
    sample_left = x.detach().floor().clamp(-2.0, length + 1.0).nan_to_num(-2.0).long()
    sample_frac = (x - sample_left.to(x.dtype)).to(dtype)
    return PatchSample.apply(
        images.contiguous(), line_top.contiguous(), line_frac.contiguous(), sample_left.contiguous(),
        sample_frac.contiguous(), backend, requested,
    )
