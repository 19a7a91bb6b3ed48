"""Scorers, the DART tokenizer, timm registration, patch_timm and published-checkpoint loading."""

import argparse

import dart_core
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from dart_core import (
    DART,
    build_scorer,
    partition,
    patch_timm,
    sample_patches,
    standardise,
)
from dart_core.checkpoint import CheckpointMismatchError, read_state_dict
from dart_core.training import CheckpointError
from fixed_scores import GivenScores


def test_standardise_per_sample_and_batch():
    s = torch.randn(3, 4, 5, dtype=torch.float64) * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1)
    per = standardise(s)
    for i in range(3):
        flat = s[i].flatten()
        torch.testing.assert_close(per[i].flatten(), (flat - flat.mean()) / (flat.std(unbiased=True) + 1e-8))
    both = standardise(s, batch_stats=True)
    torch.testing.assert_close(both, (s - s.mean()) / (s.std() + 1e-8))
    # Per-sample scores of one image do not depend on its batch-mates; batch statistics do.
    assert torch.allclose(standardise(s[:1]), per[:1])
    assert not torch.allclose(standardise(s[:1], batch_stats=True), both[:1])


@pytest.mark.parametrize("backbone,version,channels", [("mobilenet_v3_small", "v1", 96), ("mobilenet_v3_small", "v2", 576),
                                                        ("mobilenet_v3_large", "v1", 160)])
def test_published_scorer_slices(backbone, version, channels):
    scorer = build_scorer(backbone, version, grid_size=(14, 14))
    images = torch.randn(2, 3, 448, 448)
    features = scorer.features(images)
    # The published slices all end at stride 32: 14×14 features on a 448 input (DESIGN.md's
    # "features[:11] has stride 16" does not hold for torchvision's MobileNetV3-Small: block 9 strides).
    assert features.shape[1] == channels and features.shape[-2:] == (14, 14)
    scores = scorer(images)
    assert scores.shape == (2, 14, 14)
    low, high = (0.1, 1.1) if version == "v1" else (0.0, 1.0)
    assert torch.all(scores > low) and torch.all(scores < high)


def test_scorer_v1_matches_formula_and_backbone_is_frozen():
    scorer = build_scorer("mobilenet_v3_small", "v1", grid_size=(7, 7))
    images = torch.randn(2, 3, 224, 224)
    feats = scorer.backbone(images)
    raw = scorer.head.mlp.fc2(F.gelu(scorer.head.mlp.fc1(feats.permute(0, 2, 3, 1))))[..., 0]
    raw = F.interpolate(raw[:, None], size=(7, 7), mode="bilinear", align_corners=False)[:, 0]
    mean = raw.flatten(1).mean(1).view(2, 1, 1)
    std = raw.flatten(1).std(1).view(2, 1, 1)
    torch.testing.assert_close(scorer(images), torch.sigmoid((raw - mean) / (std + 1e-8)) + 0.1)
    scorer.train()
    assert not scorer.backbone.training
    scorer(images).sum().backward()
    assert all(p.grad is None for p in scorer.backbone.parameters())
    assert all(p.grad is not None for p in scorer.head.parameters())


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_scorer_contrast_bounds_how_much_denser_an_object_is_sampled(version):
    """An object on 4 of 64 cells, background flat: standardisation maps them to z = a and z = b
    with 4a + 60b = 0 and (4a² + 60b²) / 63 = 1 (unbiased std), whatever the raw values, so the
    density ratio is a function of the activation alone."""
    scorer = build_scorer("timm:resnet18", version, grid_size=(8, 8))
    raw = torch.zeros(1, 8, 8, dtype=torch.float64)
    raw[0, 2:4, 5:7] = 7.0
    scorer.head.raw_scores = lambda features: raw
    a = (63 / (4 + 60 * (4 / 60) ** 2)) ** 0.5
    b = -4 * a / 60
    activate = (lambda z: torch.sigmoid(torch.tensor(z)) + 0.1) if version == "v1" else (
        lambda z: torch.sigmoid(torch.tensor(2 * z)))
    images = torch.randn(1, 3, 32, 32)
    for contrast in (1.0, 4.0, 8.0):
        scorer.contrast = contrast
        scores = scorer(images).double()
        ratio = scores[0, 2, 5] / scores[0, 0, 0]
        torch.testing.assert_close(ratio, (activate(contrast * a) / activate(contrast * b)).double(), rtol=1e-6, atol=0)
        if contrast == 1.0:  # the published activation: at most ~2x (v1) / ~2.7x (v2) for 1/16 of the grid
            assert ratio < (2.1 if version == "v1" else 2.8)
    assert ratio > (5.0 if version == "v1" else 60.0)
    with pytest.raises(ValueError, match="contrast must be positive"):
        dart_core.Scorer(nn.Identity(), 3, grid_size=(8, 8), version=version, contrast=0.0)


def test_frozen_backbone_in_chunks_gives_the_whole_batch_features():
    scorer = build_scorer("mobilenet_v3_small", "v1", grid_size=(4, 4))
    images = torch.randn(2 * scorer.frozen_cpu_chunk + 3, 3, 64, 64)
    with torch.no_grad():
        whole = scorer.backbone(images.contiguous())
    torch.testing.assert_close(scorer.features(images), whole, rtol=1e-4, atol=1e-5)
    assert scorer.features(images[:1]).shape == whole[:1].shape


def test_feature_contrast_is_the_distance_to_the_image_mean():
    from dart_core.scorers import FeatureContrast

    features = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    want = torch.stack([
        torch.stack([(features[b, c] - features[b, c].sum() / 24).abs() for c in range(5)]) for b in range(2)
    ])
    torch.testing.assert_close(FeatureContrast()([features * 3, features]), want)
    assert FeatureContrast()(torch.full((1, 3, 4, 4), 2.5)).abs().max() == 0


def test_timm_features_only_scorer():
    scorer = build_scorer("timm:resnet18", "v2", grid_size=(4, 4))
    assert scorer(torch.randn(2, 3, 64, 64)).shape == (2, 4, 4)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenetv3_small_100"])
def test_timm_feature_scorer_runs_only_the_blocks_it_returns(name):
    import copy

    from dart_core.scorers import drop_blocks_after_last_feature

    full = timm.create_model(name, features_only=True, out_indices=(2,)).eval()
    pruned = drop_blocks_after_last_feature(copy.deepcopy(full))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(pruned(images), full(images), rtol=0, atol=0)
    assert len(pruned.blocks) < len(full.blocks)
    assert len(build_scorer(f"timm:{name}", "v1", grid_size=(4, 4), stage=2).backbone.blocks) == len(pruned.blocks)
    # Feature models that already stop at their last layer are left alone.
    resnet = timm.create_model("resnet18", features_only=True, out_indices=(2,))
    assert drop_blocks_after_last_feature(resnet) is resnet


def test_unknown_scorer_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown scorer backbone"):
        build_scorer("not_a_network")


def test_tokenizer_with_uniform_scores_equals_patch_embed():
    """The drop-in contract: uniform scores at H = h·P give timm's PatchEmbed exactly (up to the guards)."""
    embed = timm.layers.PatchEmbed(img_size=64, patch_size=16, in_chans=3, embed_dim=32)
    dart = DART(img_size=64, patch_size=16, in_chans=3, embed_dim=32, scorer=GivenScores((4, 4)))
    dart.proj.load_state_dict(embed.proj.state_dict())
    images = torch.rand(2, 3, 64, 64)
    out = dart(images, pos_grid=torch.randn(1, 4, 4, 32), return_details=True)
    assert (out.tokens - embed(images)).abs().max() < 1e-3
    assert out.pos_embed.shape == (2, 16, 32)


def test_tokenizer_matches_functional_pipeline_and_rejects_wrong_sizes():
    scorer = build_scorer("mobilenet_v3_small", "v1", grid_size=(4, 4))
    dart = DART(img_size=128, patch_size=16, embed_dim=24, num_tokens=10, sample_scale=2, scorer=scorer)
    assert dart.grid_size == (4, 4) and dart.num_patches == 16 and dart.num_rows == 3
    images = torch.randn(2, 3, 128, 128)
    out = dart(images, return_details=True)
    part = partition(scorer(images), 3, 10)
    patches = sample_patches(images, part, 16)
    torch.testing.assert_close(out.tokens, dart.proj(patches.flatten(0, 1)).view(2, 10, 24))
    with pytest.raises(ValueError, match=r"input size \(224, 224\) does not match the model's \(128, 128\)"):
        dart(torch.randn(1, 3, 224, 224))


def test_registered_models_build_and_train_end_to_end():
    names = timm.list_models("deit_*_dart*")
    assert {"deit_tiny_dart_patch16_448", "deit_small_dart392_patch16_448", "deit_base_dart121_patch16_448"} <= set(names)
    model = timm.create_model("deit_tiny_dart121_patch16_448", num_classes=5, depth=2, img_size=224)
    assert model.patch_embed.num_tokens == 121 and model.patch_embed.grid_size == (7, 7)
    assert model.pos_embed.shape == (1, 50, 192)
    logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    head = model.patch_embed.scorer.head
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert model.pos_embed.grad.abs().sum() > 0


def test_patch_timm_keeps_class_and_distillation_tokens():
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, depth=1, num_classes=3).eval()
    images = torch.rand(2, 3, 64, 64)
    before = deit(images)
    patch_timm(deit, scorer=GivenScores((4, 4)))
    assert (deit(images) - before).abs().max() < 1e-3


def test_patch_timm_keeps_a_pretrained_vit_exact_under_uniform_scores():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=3).eval()
    images = torch.rand(2, 3, 64, 64)
    before = vit(images)
    patch_timm(vit, scorer=GivenScores((4, 4)))
    assert isinstance(vit.patch_embed, DART)
    after = vit(images)
    assert (after - before).abs().max() < 1e-3
    vit2 = patch_timm(timm.create_model("vit_tiny_patch16_224", img_size=64, depth=1), num_tokens=9, sample_scale=2)
    assert vit2(torch.rand(1, 3, 128, 128)).shape == (1, 1000)
    with pytest.raises(ValueError, match="lie on no grid"):
        vit2.forward_intermediates(torch.rand(1, 3, 128, 128), output_fmt="NCHW")


# ---- published checkpoints --------------------------------------------------------------------
# An independent replica of the original release's module tree (models_deit.py / dart/spn.py): the
# state-dict keys below come from this structure, not from our converter's rename table.
class PublishedMLP(nn.Module):
    def __init__(self, i, h, o):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(i, h), nn.GELU(), nn.Linear(h, o))


class PublishedScorePredNetV1(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torchvision.models.mobilenet_v3_small(weights=None).features[:11]
        self.mlp = PublishedMLP(96, 96, 1)

    def forward(self, x, shape):
        f = self.mlp.net(self.features(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        f = F.interpolate(f, size=shape, mode="bilinear", align_corners=False)
        f = (f - f.mean()) / (f.std() + 1e-8)  # whole-batch statistics, as published
        return torch.sigmoid(f)[:, 0] + 0.1


class Wrap(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.spn = inner


def published_state_dict(grid=7, depth=2):
    torch.manual_seed(1)
    vit = timm.create_model("deit_tiny_patch16_224", img_size=grid * 16, depth=depth, num_classes=4)
    state = dict(vit.state_dict())
    spn = Wrap(Wrap(Wrap(PublishedScorePredNetV1())))  # MobileNetSmallPred.spn.spn(ScorePredNet).spn(V1)
    for module in spn.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    for key, value in spn.state_dict().items():
        state[f"patch_embed.{key}"] = value
    return state, spn.spn.spn.spn


def test_published_checkpoint_converts_and_scores_like_the_original(tmp_path):
    state, published_spn = published_state_dict()
    path = tmp_path / "darvit-tiny.pth"
    torch.save({"model": state, "epoch": 299, "args": argparse.Namespace(model="darvit_tiny")}, path)
    model = timm.create_model(
        "deit_tiny_dart_patch16_448", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
        img_size=224, depth=2, num_classes=4, scorer_batch_stats=True,
    ).eval()
    for key, value in model.state_dict().items():
        source = key.replace("patch_embed.scorer.backbone.", "patch_embed.spn.spn.spn.features.")
        source = source.replace("patch_embed.scorer.head.mlp.fc1.", "patch_embed.spn.spn.spn.mlp.net.0.")
        source = source.replace("patch_embed.scorer.head.mlp.fc2.", "patch_embed.spn.spn.spn.mlp.net.2.")
        assert torch.equal(value, state[source]), key
    images = torch.randn(3, 3, 224, 224)
    published_spn.eval()
    with torch.no_grad():
        # float32 reductions differ in channels-last (our frozen backbone's layout): ~1e-5
        torch.testing.assert_close(model.patch_embed.scorer(images), published_spn(images, (7, 7)), rtol=1e-4, atol=1e-4)


def test_published_checkpoint_with_missing_keys_is_a_clear_error(tmp_path):
    state, _ = published_state_dict()
    del state["blocks.1.mlp.fc2.weight"]
    state["patch_embed.spn.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    model = timm.create_model("deit_tiny_dart_patch16_448", img_size=224, depth=2, num_classes=4)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): blocks.1.mlp.fc2.weight") as info:
        dart_core.load_published_checkpoint(model, path)
    assert "patch_embed.spn.extra" in str(info.value)


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_checkpoints_that_would_run_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="Payload|builtins.print"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize("name", ["deit_tiny_dart_patch16_448", "vim_tiny_dart_patch16_224",
                                  "videomamba_tiny_dart_patch16_224"])
def test_an_empty_batch_gives_empty_logits_like_a_stock_timm_model(name):
    from tiny_dart_models import tiny_dart_model

    stock = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=1, num_classes=5).eval()
    model, inputs = tiny_dart_model(name)
    with torch.no_grad():
        assert model.eval()(inputs[:0]).shape == stock(torch.zeros(0, 3, 64, 64)).shape == (0, 5)
