"""Shared kernels: the fused patch sampler (Triton on CUDA, compiled C on the CPU, a PyTorch fallback)."""

from .patch_function import (
    PatchSample,
    resolve_backend,
    sample_strip_patches,
    triton_available,
    triton_interpreted,
)

__all__ = ["PatchSample", "sample_strip_patches", "triton_available", "triton_interpreted", "resolve_backend"]
