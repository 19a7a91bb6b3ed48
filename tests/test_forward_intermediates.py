"""timm's forward_intermediates / prune_intermediate_layers on the DeiT + DART, Vim and VideoMamba
models.

The oracle is what the blocks themselves compute in forward_features: forward hooks record each
ViT block's output, and forward pre-hooks on each Vim block's norm (and on the final norm) record
the residual stream that norm sees.
"""

import copy

import dart_core  # noqa: F401  (registers the DeiT + DART models)
import dart_core.mamba  # noqa: F401  (registers the Vim models)
import dart_video  # noqa: F401  (registers the VideoMamba models)
import pytest
import timm
import torch
from dart_core import patch_timm
from fixed_scores import GivenScores
from timm.models.vision_transformer import VisionTransformer

DEPTH = 4
# indices → the absolute block indices they take, written out for DEPTH = 4.
INDICES = [(None, [0, 1, 2, 3]), (2, [2, 3]), ([0, -1], [0, 3]), ((-3, 2), [1, 2]), ([-4], [0])]
VIM = dict(img_size=64, depth=DEPTH, embed_dim=32, d_state=4, num_classes=5)


def scores(h, w):
    torch.manual_seed(1)
    return GivenScores((h, w), torch.rand(1, h, w) + 0.1)


def deit_dart():
    """DeiT + DART (class token), 10 tokens from a 2×2 score grid (sample_scale 2)."""
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_dart_patch16_448", img_size=64, depth=DEPTH, embed_dim=48, num_heads=3,
                             num_tokens=10, num_classes=5, scorer=scores(2, 2)).eval()


def patched_distilled_deit():
    """timm's distilled DeiT (class + distillation tokens) through patch_timm, 12 tokens."""
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, depth=DEPTH, embed_dim=48,
                              num_heads=3, num_classes=5)
    return patch_timm(model, num_tokens=12, scorer=scores(4, 4)).eval()


def vim(dart):
    torch.manual_seed(0)
    if dart:
        return timm.create_model("vim_tiny_dart_patch16_224", num_tokens=12, scorer=scores(4, 4), **VIM).eval()
    return timm.create_model("vim_tiny_patch16_224", **VIM).eval()


def videomamba(dart):
    """VideoMamba (+ DART): 2 frames of 32×32, class token first."""
    torch.manual_seed(0)
    name = "videomamba_tiny_dart_patch16_224" if dart else "videomamba_tiny_patch16_224"
    return timm.create_model(name, img_size=32, num_frames=2, patch_size=8, depth=DEPTH, embed_dim=32, d_state=4,
                             num_classes=5).eval()


VITS = {"deit_dart": deit_dart, "patched_distilled": patched_distilled_deit}
VIMS = {"vim": lambda: vim(False), "vim_dart": lambda: vim(True)}
VIDEOS = {"videomamba": lambda: videomamba(False), "videomamba_dart": lambda: videomamba(True)}


def images():
    torch.manual_seed(2)
    return torch.rand(2, 3, 64, 64)


def inputs(kind):
    """A batch of 2 inputs for the model kind: images, or clips of 2 frames for VideoMamba."""
    if kind != "video":
        return images()
    torch.manual_seed(2)
    return torch.rand(2, 3, 2, 32, 32)


def record(model, kind):
    """Hooks that record what each block computed, in order: a ViT block's output; for a Vim block,
    the residual stream after it, i.e. what the next block's norm (after the last block, norm_f)
    sees. Returns the list they fill and their handles."""
    seen, handles = [], []
    if kind == "vit":
        for block in model.blocks:
            handles.append(block.register_forward_hook(lambda module, args, output: seen.append(output)))
    else:
        for norm in [layer.norm for layer in model.layers[1:]] + [model.norm_f]:
            handles.append(norm.register_forward_pre_hook(lambda module, args: seen.append(args[0])))
    return seen, handles


def block_outputs(model, kind, x):
    """The oracle: each block's (B, L, D) output in one forward_features call, block by block."""
    seen, handles = record(model, kind)
    with torch.no_grad():
        model.forward_features(x)
    for handle in handles:
        handle.remove()
    assert len(seen) == len(model.blocks if kind == "vit" else model.layers)
    return seen


def vit_split(model, y):
    return y[:, model.num_prefix_tokens:], y[:, : model.num_prefix_tokens]


def vim_split(model, y):
    """Patch tokens in order (the class token sits after N // 2 of them) and the class token."""
    middle = (y.shape[1] - 1) // 2
    return torch.cat([y[:, :middle], y[:, middle + 1:]], 1), y[:, middle:middle + 1]


def video_split(model, y):
    """The tokens after the class token, which comes first, and the class token."""
    return y[:, 1:], y[:, :1]


def build(kind, name):
    """The model, its prefix split and its final norm."""
    if kind == "vit":
        model = VITS[name]()
        return model, vit_split, model.norm
    if kind == "video":
        model = VIDEOS[name]()
        return model, video_split, model.norm_f
    model = VIMS[name]()
    return model, vim_split, model.norm_f


CASES = [("vit", name) for name in VITS] + [("vim", name) for name in VIMS] + [("video", name) for name in VIDEOS]


@pytest.mark.parametrize("kind,name", CASES)
@pytest.mark.parametrize("indices,expected", INDICES)
def test_intermediates_are_the_block_outputs(kind, name, indices, expected):
    model, split, _ = build(kind, name)
    x = inputs(kind)
    oracle = block_outputs(model, kind, x)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=indices, return_prefix_tokens=True)
        _, plain = model.forward_intermediates(x, indices=indices)
    assert len(inter) == len(expected)
    for (tokens, prefix), i in zip(inter, expected, strict=True):
        want_tokens, want_prefix = split(model, oracle[i])
        assert tokens.shape == (2, want_tokens.shape[1], model.embed_dim) and prefix.shape[1] >= 1
        torch.testing.assert_close(tokens, want_tokens, rtol=0, atol=0)
        torch.testing.assert_close(prefix, want_prefix, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
    # without return_prefix_tokens: the same tokens alone
    for tokens, (want, _) in zip(plain, inter, strict=True):
        assert torch.equal(tokens, want)


@pytest.mark.parametrize("kind,name", CASES)
def test_norm_intermediates_only_stop_early_and_dict(kind, name):
    model, split, final_norm = build(kind, name)
    x = inputs(kind)
    oracle = block_outputs(model, kind, x)
    with torch.no_grad():
        normed = model.forward_intermediates(x, indices=[1, -1], norm=True, intermediates_only=True)
        assert isinstance(normed, list) and len(normed) == 2
        for tokens, i in zip(normed, [1, 3], strict=True):
            torch.testing.assert_close(tokens, split(model, final_norm(oracle[i]))[0], rtol=0, atol=0)
        # the last normed intermediate is forward_features' patch tokens
        torch.testing.assert_close(normed[1], split(model, model.forward_features(x))[0], rtol=0, atol=0)
        full = model.forward_intermediates(x, indices=[0, 1])[1]
        ran = []
        for i, module in enumerate(model.blocks if kind == "vit" else [layer.mixer for layer in model.layers]):
            module.register_forward_hook(lambda *_, i=i: ran.append(i))
        final, early = model.forward_intermediates(x, indices=[0, 1], stop_early=True)
    assert ran == [0, 1]  # blocks 2 and 3 never ran
    for a, b in zip(early, full, strict=True):
        assert torch.equal(a, b)
    # the final features are then the final norm of block 1's output
    torch.testing.assert_close(final, final_norm(oracle[1]), rtol=0, atol=0)
    with torch.no_grad():
        out = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, output_dict=True)
        only = model.forward_intermediates(x, indices=1, output_dict=True, intermediates_only=True)
    assert set(out) == {"image_intermediates", "image_intermediates_prefix", "image_features"}
    assert set(only) == {"image_intermediates"}
    torch.testing.assert_close(out["image_features"], model.forward_features(x), rtol=0, atol=0)
    last_tokens, last_prefix = split(model, oracle[3])  # indices=1: the last block
    torch.testing.assert_close(out["image_intermediates_prefix"][0], last_prefix, rtol=0, atol=0)
    torch.testing.assert_close(only["image_intermediates"][0], last_tokens, rtol=0, atol=0)


@pytest.mark.parametrize("kind,name", CASES)
def test_prune_keeps_the_intermediates(kind, name):
    model, split, _ = build(kind, name)
    x = inputs(kind)
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[0, -2], return_prefix_tokens=True, intermediates_only=True)
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([0, -2]) == [0, 2]
    assert len(pruned.blocks if kind == "vit" else pruned.layers) == 3
    assert pruned.num_classes == 0 and isinstance(pruned.head, torch.nn.Identity)
    with torch.no_grad():
        got = pruned.forward_intermediates(x, indices=[0, 2], return_prefix_tokens=True, intermediates_only=True)
        final, _ = pruned.forward_intermediates(x, indices=1)
    for (tokens, prefix), (want_tokens, want_prefix) in zip(got, want, strict=True):
        torch.testing.assert_close(tokens, want_tokens, rtol=0, atol=1e-6)
        torch.testing.assert_close(prefix, want_prefix, rtol=0, atol=1e-6)
    # the pruned model's final features are the final norm of its last block's output (per token)
    norm = pruned.norm if kind == "vit" else pruned.norm_f
    torch.testing.assert_close(split(pruned, final)[0], norm(got[1][0]), rtol=0, atol=1e-6)
    # prune_norm: the final features are the last block's raw output
    unnormed = copy.deepcopy(model)
    unnormed.prune_intermediate_layers(2, prune_norm=True, prune_head=False)
    assert unnormed.num_classes == 5
    with torch.no_grad():
        features, (tokens,) = unnormed.forward_intermediates(x, indices=1)
    assert features.shape == final.shape
    torch.testing.assert_close(split(unnormed, features)[0], tokens, rtol=0, atol=0)


def test_vim_training_intermediates_are_what_the_next_block_sees():
    """With stochastic depth in training, each intermediate is the sum the next block normalised
    (recorded during the same call: norm_f runs once, on the final features)."""
    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224", drop_path_rate=0.5, **VIM).train()
    seen, _ = record(model, "vim")
    torch.manual_seed(3)
    _, inter = model.forward_intermediates(images(), return_prefix_tokens=True)
    assert len(seen) == DEPTH
    for (tokens, cls), stream in zip(inter, seen, strict=True):
        want_tokens, want_cls = vim_split(model, stream)
        assert torch.equal(tokens, want_tokens) and torch.equal(cls, want_cls)


def test_fixed_grid_vim_nchw_maps():
    model = vim(dart=False)
    x = images()
    oracle = block_outputs(model, "vim", x)
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=[1, 3], output_fmt="NCHW", intermediates_only=True)
    for m, i in zip(maps, [1, 3], strict=True):
        assert m.shape == (2, 32, 4, 4)
        stream = oracle[i]  # (B, 17, D): 8 patch tokens, the class token, 8 patch tokens, row-major
        for r in range(4):
            for c in range(4):
                k = 4 * r + c
                torch.testing.assert_close(m[:, :, r, c], stream[:, k if k < 8 else k + 1], rtol=0, atol=0)


NO_GRID = r"lie on no grid.*output_fmt='NLC'.*return_details=True"


@pytest.mark.parametrize("build_model,kind,refusal", [
    (deit_dart, "vit", NO_GRID), (patched_distilled_deit, "vit", NO_GRID), (lambda: vim(True), "vim", NO_GRID),
    (lambda: videomamba(True), "video", NO_GRID),
    (lambda: videomamba(False), "video", r"frame-major T x h x w grid.*output_fmt='NLC'.*\(B, T, h, w, D\)"),
])
def test_models_without_a_patch_grid_refuse_nchw_and_unknown_formats(build_model, kind, refusal):
    model = build_model()
    with pytest.raises(ValueError, match=refusal):
        model.forward_intermediates(inputs(kind), output_fmt="NCHW")
    with pytest.raises(ValueError, match="output_fmt='NHWC'"):
        model.forward_intermediates(inputs(kind), output_fmt="NHWC")
    with pytest.raises(AssertionError, match="out of range"):
        model.forward_intermediates(inputs(kind), indices=[DEPTH])
    with pytest.raises(AssertionError, match="out of range"):
        model.prune_intermediate_layers(DEPTH + 1)


def test_stock_timm_vit_keeps_its_own_methods():
    """Importing dart_core changes no stock timm class: a plain DeiT keeps timm's NCHW maps."""
    model = timm.create_model("deit_tiny_patch16_224", img_size=64, depth=2, embed_dim=48, num_heads=3).eval()
    assert type(model).forward_intermediates is VisionTransformer.forward_intermediates
    with torch.no_grad():
        maps = model.forward_intermediates(images(), indices=1, intermediates_only=True)
    assert maps[0].shape == (2, 48, 4, 4)


def test_vit_attention_mask_and_dino_interface():
    model = deit_dart()
    x = images()
    mask = torch.zeros(11, 11)  # class token + 10 DART tokens
    mask[:, -3:] = float("-inf")  # no token attends to the last three
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[-1], attn_mask=mask)
        torch.testing.assert_close(final, model.forward_features(x, attn_mask=mask), rtol=0, atol=0)
        assert not torch.allclose(final, model.forward_features(x))
        torch.testing.assert_close(model.norm(inter[0]), vit_split(model, final)[0], rtol=0, atol=0)
        # timm's DINO-style get_intermediate_layers goes through forward_intermediates
        dino = model.get_intermediate_layers(x, n=2, return_prefix_tokens=True)
        want = model.forward_intermediates(x, indices=2, return_prefix_tokens=True, intermediates_only=True)
    for (tokens, prefix), (want_tokens, want_prefix) in zip(dino, want, strict=True):
        assert torch.equal(tokens, want_tokens) and torch.equal(prefix, want_prefix)
    with pytest.raises(ValueError, match="lie on no grid"):
        model.get_intermediate_layers(x, reshape=True)
