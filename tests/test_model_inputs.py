"""DART image models at their edges: non-square grids, dtypes, pickling, timm options, bad arguments."""

import copy
import pickle

import dart_core.mamba  # noqa: F401  (registers the Vim models)
import pytest
import timm
import torch
from dart_core import DART, default_num_rows, partition, patch_timm
from fixed_scores import GivenScores

DEIT = "deit_tiny_dart_patch16_448"
TINY_DEIT = dict(img_size=64, depth=1)  # 2×2 grid at sample_scale 2
TINY_VIM = dict(img_size=64, depth=1, embed_dim=32, d_state=4)


def test_default_row_count_follows_a_non_square_grid():
    """DESIGN.md's degenerate case needs R = h: with N = h·w the default must give it on any grid."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=(64, 48), depth=1, num_classes=3).eval()
    images = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        before = vit(images)
        patch_timm(vit, scorer=GivenScores((4, 3)))
        assert (vit(images) - before).abs().max() < 1e-3
        assert vit.patch_embed.num_rows == 4
    assert partition(torch.ones(1, 4, 3), num_tokens=12).num_rows == 4
    assert default_num_rows(140, (14, 10)) == 14
    assert default_num_rows(35, (5, 7)) == 5
    # Square grids keep the published round(sqrt(N)).
    for n in (121, 144, 196, 288, 392):
        assert default_num_rows(n, (14, 14)) == default_num_rows(n) == round(n ** 0.5)


def write_checkpoint(model, path):
    torch.save({"model": model.state_dict()}, path)
    return dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


@pytest.mark.parametrize("name,kwargs", [(DEIT, TINY_DEIT), ("vim_tiny_dart_patch16_224", TINY_VIM)])
def test_pretrained_checkpoint_loads_under_a_new_class_count(tmp_path, name, kwargs):
    """Like timm: another num_classes drops the checkpoint's classifier and loads the rest strictly."""
    torch.manual_seed(0)
    source = timm.create_model(name, num_classes=1000, **kwargs)
    load = write_checkpoint(source, tmp_path / "ck.pth")
    torch.manual_seed(1)
    fresh = timm.create_model(name, num_classes=10, **kwargs)
    torch.manual_seed(1)
    model = timm.create_model(name, num_classes=10, **load, **kwargs)
    own, theirs, init = model.state_dict(), source.state_dict(), fresh.state_dict()
    for key, value in own.items():
        if key.startswith("head."):
            assert value.shape[0] == 10 and torch.equal(value, init[key]), key
        else:
            assert torch.equal(value, theirs[key]), key
    headless = timm.create_model(name, num_classes=0, **load, **kwargs)
    assert torch.equal(headless.state_dict()["cls_token"], theirs["cls_token"])
    # Everything but the classifier still has to fit.
    broken = {k: v for k, v in theirs.items() if k != "cls_token"}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match="missing keys.*cls_token"):
        timm.create_model(name, num_classes=10, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "broken.pth")), **kwargs)


def test_distilled_classifier_is_dropped_too(tmp_path):
    from dart_core.checkpoint import drop_resized_classifier

    source = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, depth=1, num_classes=5)
    model = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, depth=1, num_classes=2)
    state = drop_resized_classifier(model, source.state_dict())
    for key in ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias"):
        assert torch.equal(state[key], model.state_dict()[key])
    assert torch.equal(state["pos_embed"], source.state_dict()["pos_embed"])


@pytest.mark.filterwarnings("ignore:the DART scorer.s backbone is frozen")
def test_patch_timm_builds_the_embed_in_the_models_dtype():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=1, num_classes=3).eval().to(torch.bfloat16)
    patch_timm(vit, num_tokens=9, scorer_version="v1")
    assert {p.dtype for p in vit.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert vit(torch.rand(1, 3, 64, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_patched_model_pickles_and_deepcopies(monkeypatch):
    import dart_core.models.patch as patch_module

    torch.manual_seed(0)
    vit = patch_timm(timm.create_model("vit_tiny_patch16_224", img_size=64, depth=1, num_classes=3).eval(),
                     num_tokens=9)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = vit(images)
    pickled = pickle.dumps(vit)
    for clone in (pickle.loads(pickled), copy.deepcopy(vit)):
        assert type(clone) is type(vit) and isinstance(clone.patch_embed, DART)
        with torch.no_grad():
            torch.testing.assert_close(clone(images), want, rtol=0, atol=0)
    # A fresh process has not made the patched class yet: unpickling makes it.
    monkeypatch.setattr(patch_module, "_PATCHED_CLASSES", {})
    fresh = pickle.loads(pickled)
    assert type(fresh).__name__ == "VisionTransformerWithDART" and type(fresh) is not type(vit)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), want, rtol=0, atol=0)


def test_feat_ratio_follows_timm_and_features_only_is_refused_clearly():
    embed = timm.create_model(DEIT, **TINY_DEIT).patch_embed
    assert embed.feat_ratio() == 16 and embed.feat_ratio(as_scalar=False) == (16, 16)
    for name in (DEIT, "vim_tiny_dart_patch16_224"):
        with pytest.raises(ValueError, match="features_only.*forward_features"):
            timm.create_model(name, features_only=True)


def test_set_input_size_moves_grid_scorer_and_positional_table():
    torch.manual_seed(0)
    model = timm.create_model(DEIT, img_size=128, depth=1, num_tokens=9).eval()  # 4×4 grid
    grid = model.pos_embed[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    model.set_input_size(img_size=(64, 96))
    embed = model.patch_embed
    assert embed.img_size == (64, 96) and embed.grid_size == (2, 3) and embed.num_patches == 6
    assert embed.scorer.grid_size == (2, 3) and embed.num_tokens == 9
    assert model.pos_embed.shape == (1, 7, 192)
    # timm's resampling: bicubic, corners not aligned, antialiased.
    want = torch.nn.functional.interpolate(grid, size=(2, 3), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(model.pos_embed[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 6, -1))
    assert model(torch.rand(1, 3, 64, 96)).shape == (1, 1000)
    with pytest.raises(NotImplementedError, match="patch_size"):
        model.set_input_size(patch_size=8)
    fixed = timm.create_model(DEIT, scorer=GivenScores((2, 2)), **TINY_DEIT)
    with pytest.raises(NotImplementedError, match="GivenScores has no grid_size"):
        fixed.set_input_size(img_size=128)


def test_strict_img_size_reaches_the_embed_and_the_message_fits_the_model():
    model = timm.create_model(DEIT, strict_img_size=False, **TINY_DEIT).eval()
    assert model(torch.rand(1, 3, 96, 80)).shape == (1, 1000)
    loose = timm.create_model("vim_tiny_dart_patch16_224", strict_img_size=False, **TINY_VIM).eval()
    assert loose(torch.rand(1, 3, 96, 96)).shape == (1, 1000)
    vim = timm.create_model("vim_tiny_dart_patch16_224", **TINY_VIM)
    with pytest.raises(ValueError, match="strict_img_size=False") as info:
        vim(torch.rand(1, 3, 96, 96))
    assert "448" not in str(info.value) and "64x64" in str(info.value)


def test_channel_counts_are_checked_up_front():
    model = timm.create_model(DEIT, **TINY_DEIT)
    with pytest.raises(ValueError, match="3 channels.*got 1"):
        model(torch.rand(1, 1, 64, 64))
    for name in (DEIT, "vim_tiny_dart_patch16_224"):
        with pytest.raises(ValueError, match="in_chans=1.*RGB.*scorer="):
            timm.create_model(name, in_chans=1, img_size=64, depth=1)
    with pytest.raises(ValueError, match="in_chans=1.*RGB.*scorer="):
        patch_timm(timm.create_model("vit_tiny_patch16_224", img_size=64, depth=1, in_chans=1))
    with pytest.raises(ValueError, match=r"look channels-last \(B, H, W, C\).*permute\(0, 3, 1, 2\)"):
        model(torch.rand(1, 64, 64, 3))
    with pytest.raises(ValueError, match="floating-point images, got torch.uint8"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    # A scorer of one's own may take any channels.
    gray = timm.create_model(DEIT, in_chans=1, scorer=GivenScores((2, 2)), **TINY_DEIT)
    assert gray(torch.rand(1, 1, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("argument", ["num_tokens", "num_rows"])
@pytest.mark.parametrize("value", [0, -5, 2.5])
def test_token_and_row_counts_must_be_positive_integers(argument, value):
    with pytest.raises(ValueError, match=f"{argument} must be an integer >= 1"):
        DART(img_size=64, patch_size=16, embed_dim=8, scorer=GivenScores((4, 4)), **{argument: value})
    with pytest.raises(ValueError, match=f"{argument} must be an integer >= 1"):
        partition(torch.ones(1, 4, 4), **{argument: value})
