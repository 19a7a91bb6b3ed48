"""Deterministic training on a GPU, as far as a CPU can check it.

Under ``torch.use_deterministic_algorithms(True)`` PyTorch raises on CUDA for ops that only have
nondeterministic kernels (its documentation lists them). A DART training step must dispatch
none of them: the scorer's score map is resized by :func:`dart_core.resize.bilinear_resize`
(matrix products) instead of ``F.interpolate``, whose bilinear CUDA backward is on that list, and
the sampler's Triton backward is replaced in that mode (tests/test_kernels.py).
"""

from __future__ import annotations

import collections

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from dart_core.resize import bilinear_matrix, bilinear_resize
from hypothesis import given, settings
from tiny_dart_models import TINY_DART_MODELS, tiny_dart_model
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops (by name prefix) that raise on CUDA in deterministic mode, from the documentation of
# torch.use_deterministic_algorithms (the backward kernels of the listed modules and functions).
REFUSED_ON_CUDA = (
    "upsample_linear1d_backward", "upsample_bilinear2d_backward", "upsample_bicubic2d_backward",
    "upsample_trilinear3d_backward", "_upsample_bilinear2d_aa_backward", "_upsample_bicubic2d_aa_backward",
    "grid_sampler_2d_backward", "grid_sampler_3d_backward", "avg_pool3d_backward",
    "adaptive_avg_pool2d_backward", "_adaptive_avg_pool2d_backward", "adaptive_avg_pool3d_backward",
    "adaptive_max_pool2d_backward", "adaptive_max_pool3d_backward", "fractional_max_pool2d_backward",
    "fractional_max_pool3d_backward", "max_unpool", "reflection_pad1d_backward", "reflection_pad2d_backward",
    "reflection_pad3d_backward", "nll_loss", "_ctc_loss_backward", "embedding_bag", "_embedding_bag", "put_",
    "put.", "histc", "bincount", "median", "nanmedian",
)


class RefusedOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.found = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name().removeprefix("aten::")
        if name.startswith(REFUSED_ON_CUDA):
            self.found[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", sorted(TINY_DART_MODELS))
def test_a_training_step_uses_no_op_deterministic_mode_refuses_on_cuda(name):
    model, inputs = tiny_dart_model(name)
    logits = model(inputs)  # the frozen scorer folds once
    with RefusedOps() as watch:
        logits = model(inputs)
        torch.log_softmax(logits, 1)[:, 0].sum().backward()  # the training tools' losses: log-softmax sums
    assert not watch.found, dict(watch.found)


def test_the_watch_sees_what_the_resize_replaced():
    """The op list catches F.interpolate's bilinear backward (what the scorers used before)."""
    maps = torch.randn(2, 1, 7, 7, requires_grad=True)
    with RefusedOps() as watch:
        F.interpolate(maps, size=(14, 14), mode="bilinear", align_corners=False).sum().backward()
    assert watch.found == {"upsample_bilinear2d_backward": 1}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(1, 20), st.integers(1, 20))
def test_bilinear_resize_is_f_interpolate(height, width, out_height, out_width):
    maps = torch.randn(3, 2, height, width, dtype=torch.float64)
    want = F.interpolate(maps, size=(out_height, out_width), mode="bilinear", align_corners=False)
    torch.testing.assert_close(bilinear_resize(maps, (out_height, out_width)), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("out_size", "in_size"), [(14, 7), (7, 14), (5, 5), (9, 1), (1, 6)])
def test_interpolation_rows_are_convex_weights(out_size, in_size):
    weights = bilinear_matrix(out_size, in_size, torch.float64, torch.device("cpu"))
    assert weights.shape == (out_size, in_size) and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(out_size, dtype=torch.float64))
    assert ((weights > 0).sum(1) <= 2).all()  # two neighbouring cells at most


def test_bilinear_resize_gradients():
    maps = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: bilinear_resize(m, (7, 4)), (maps,))
    assert bilinear_resize(maps, (3, 5)) is maps  # the same size: no work


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bilinear_resize_of_low_precision_maps_rounds_once(dtype):
    maps = (torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(1)) * 10).to(dtype)
    want = F.interpolate(maps.double().unsqueeze(1), size=(14, 14), mode="bilinear", align_corners=False).squeeze(1)
    got = bilinear_resize(maps, (14, 14))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=torch.finfo(dtype).eps, atol=0)  # within one rounding


def test_bilinear_resize_keeps_float32_maps_float32_under_autocast():
    maps = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(2)) * 10
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bilinear_resize(maps, (14, 14))
    want = F.interpolate(maps.unsqueeze(1), size=(14, 14), mode="bilinear", align_corners=False).squeeze(1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


def test_bilinear_resize_refuses_what_f_interpolate_refuses():
    with pytest.raises(ValueError, match="sizes must be positive"):
        bilinear_resize(torch.rand(2, 3, 3), (0, 4))
    with pytest.raises(TypeError, match="floating-point maps"):
        bilinear_resize(torch.ones(2, 3, 3, dtype=torch.long), (4, 4))
