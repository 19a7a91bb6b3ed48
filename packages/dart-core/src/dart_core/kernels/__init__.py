"""Shared kernels: the fused patch sampler (Triton on CUDA, vectorised PyTorch elsewhere)."""

from .patch_function import (
    PatchSample,
    sample_strip_patches,
    triton_available,
    triton_interpreted,
    use_triton,
)

__all__ = ["PatchSample", "sample_strip_patches", "triton_available", "triton_interpreted", "use_triton"]
