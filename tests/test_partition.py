"""The functional core against the slow reference, the degenerate-case contract and properties."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import reference_dart as ref
import torch
from dart_core import density_quantiles, partition, resample_pos_embed, sample_patches
from hypothesis import given, settings
from hypothesis import strategies as st


def random_scores(batch, h, w, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, h, w, generator=g, dtype=dtype) ** 3 + 0.05).to(dtype)


@pytest.mark.parametrize("h,w,rows,tokens", [(6, 5, 3, 11), (4, 4, 4, 16), (5, 7, 2, 9), (3, 8, 5, 20)])
def test_partition_matches_reference(h, w, rows, tokens):
    scores = random_scores(3, h, w, seed=h * w + tokens)
    part = partition(scores, rows, tokens)
    row_ref, tok_ref = ref.partition(scores, rows, tokens)
    torch.testing.assert_close(part.row_edges, row_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(part.token_edges, tok_ref, rtol=0, atol=1e-12)


def test_partition_units_and_defaults():
    part = partition(random_scores(2, 14, 14), num_tokens=196)
    assert part.num_rows == 14 and part.num_tokens == 196
    assert torch.all(part.row_edges[:, 0] == 0) and torch.all(part.row_edges[:, -1] == 1)
    assert torch.all(part.token_edges[:, 0] == 0) and torch.all(part.token_edges[:, -1] == 14)


@pytest.mark.parametrize("h,w,rows,tokens,size,patch", [(4, 5, 3, 7, (20, 25), 5), (3, 3, 3, 9, (24, 24), 4),
                                                         (4, 4, 2, 6, (17, 31), 3)])
def test_patches_and_pos_match_reference(h, w, rows, tokens, size, patch):
    scores = random_scores(2, h, w, seed=7)
    images = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    part = partition(scores, rows, tokens)
    got = sample_patches(images, part, patch)
    want = ref.sample_patches(images, part.row_edges, part.token_edges, patch)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    table = torch.randn(1, h, w, 6, dtype=torch.float64)
    torch.testing.assert_close(resample_pos_embed(table, part), ref.pos_embed(table, scores, rows, tokens),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grid,patch", [((14, 14), 16), ((4, 6), 8)])
def test_uniform_scores_equal_vit_patch_embedding(dtype, grid, patch):
    """DESIGN.md degenerate case: tokens and positional embeddings equal a standard ViT's."""
    h, w = grid
    torch.manual_seed(0)
    images = torch.rand(2, 3, h * patch, w * patch, dtype=dtype)
    part = partition(torch.ones(2, h, w, dtype=dtype), h, h * w)
    patches = sample_patches(images, part, patch)
    conv = torch.nn.Conv2d(3, 24, patch, stride=patch).to(dtype)
    tokens = patches.flatten(2) @ conv.weight.flatten(1).T + conv.bias
    standard = conv(images).flatten(2).transpose(1, 2)
    grid_patches = images.unfold(2, patch, patch).unfold(3, patch, patch).permute(0, 2, 3, 1, 4, 5).flatten(1, 2)
    # The 1e-8 guards move boundaries by ~1e-6 of a cell: patch values by ~1e-4 of the image scale.
    assert (patches - grid_patches).abs().max() < 1e-4
    # The projection is linear: its error is bounded by the patch error times the weights' L1 norm.
    bound = 1e-4 * conv.weight.abs().sum(dim=(1, 2, 3)).max() + 1e-5
    assert (tokens - standard).abs().max() < bound
    table = torch.randn(1, h, w, 10, dtype=dtype)
    pos = resample_pos_embed(table, part)
    assert (pos - table.reshape(1, h * w, 10)).abs().max() < 1e-4 * table.abs().max()


def test_high_resolution_mode_samples_the_larger_image():
    """A 2x image with uniform scores gives every other pixel of each 2P×2P cell (bilinear at integer sites)."""
    images = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    part = partition(torch.ones(1, 4, 4, dtype=torch.float64), 4, 16)
    patches = sample_patches(images, part, 8)
    expected = images[:, :, ::2, ::2].unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5).flatten(1, 2)
    assert (patches - expected).abs().max() < 1e-5


def test_quantiles_are_piecewise_linear_cdf_inverse():
    density = torch.tensor([[0.1, 0.0, 0.6, 0.3]], dtype=torch.float64)
    q = density_quantiles(density, torch.tensor([0.05, 0.1, 0.4, 0.7, 0.85], dtype=torch.float64))
    # CDF: 0.1 at 1, 0.1 at 2, 0.7 at 3, 1.0 at 4.
    expected = torch.tensor([[0.5, 1.0, 2.5, 3.0, 3.5]], dtype=torch.float64)
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-6)


def test_gradcheck_scores_and_image_to_tokens():
    torch.manual_seed(3)
    scores = (torch.rand(2, 3, 4, dtype=torch.float64) + 0.2).requires_grad_()
    images = torch.randn(2, 2, 12, 16, dtype=torch.float64, requires_grad=True)
    table = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2 * 4 * 4, 5, dtype=torch.float64)

    def tokens(s, img, tab):
        part = partition(s, 2, 7)
        patches = sample_patches(img, part, 4)
        return patches.flatten(2) @ weight + resample_pos_embed(tab, part)

    assert torch.autograd.gradcheck(tokens, (scores, images, table), eps=1e-6, atol=1e-5)


def test_gradients_flow_from_patches_to_scores():
    scores = (torch.rand(1, 4, 4) + 0.5).requires_grad_()
    images = torch.randn(1, 3, 32, 32)
    sample_patches(images, partition(scores, 4, 16), 8).square().sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0


def test_invalid_scores_fall_back_to_uniform_or_raise():
    scores = torch.rand(3, 4, 4) + 0.1
    scores[0, 1, 1] = float("nan")
    scores[1] = 0
    scores[2, 0, 0] = -1
    part = partition(scores, 4, 16)
    uniform = partition(torch.ones(1, 4, 4), 4, 16)
    for i in range(3):
        torch.testing.assert_close(part.token_edges[i], uniform.token_edges[0])
    patches = sample_patches(torch.randn(3, 3, 16, 16), part, 4)
    assert torch.isfinite(patches).all()
    with pytest.raises(ValueError, match="non-finite, negative or all zero"):
        partition(scores, 4, 16, on_invalid="raise")


def test_bfloat16_inputs():
    scores = (torch.rand(2, 14, 14) + 0.1).bfloat16()
    images = torch.randn(2, 3, 224, 224).bfloat16()
    part = partition(scores, 14, 196)
    assert part.token_edges.dtype == torch.float64
    patches = sample_patches(images, part, 16)
    assert patches.dtype == torch.bfloat16 and torch.isfinite(patches.float()).all()
    pos = resample_pos_embed(torch.randn(1, 14, 14, 8).bfloat16(), part)
    assert pos.dtype == torch.bfloat16


def score_maps():
    shape = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9))
    elements = st.one_of(
        st.floats(0, 1),  # flat / noisy
        st.sampled_from([0.0, 0.0, 0.0, 1e-30, 1.0]),  # zero-heavy
        st.floats(1e-30, 1e30),  # huge range
    )
    return shape.flatmap(lambda s: hnp.arrays(np.float64, s, elements=elements))


@settings(max_examples=150, deadline=None)
@given(scores=score_maps(), rows=st.integers(1, 8), tokens=st.integers(1, 40), peak=st.booleans())
def test_partitions_are_valid_for_any_positive_scores(scores, rows, tokens, peak):
    s = torch.from_numpy(scores)
    if peak:
        s[:, 0, 0] += 1e6  # a single dominant cell
    part = partition(s, rows, tokens)
    for edges, top in ((part.row_edges, 1.0), (part.token_edges, float(rows))):
        assert torch.isfinite(edges).all()
        assert torch.all(edges[:, 1:] >= edges[:, :-1])
        assert torch.all(edges[:, 0] == 0) and torch.all(edges[:, -1] == top)
    patches = sample_patches(torch.rand(s.shape[0], 2, 9, 11, dtype=torch.float64), part, 3)
    assert torch.isfinite(patches).all()
    pos = resample_pos_embed(torch.randn(1, s.shape[1], s.shape[2], 4, dtype=torch.float64), part)
    assert torch.isfinite(pos).all()
