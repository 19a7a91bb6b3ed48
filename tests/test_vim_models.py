"""Vim and Vim + DART models: timm registration, release key layout, forward, degenerate case."""

import dart_core.mamba  # noqa: F401  (registers the models)
import pytest
import timm
import torch
import torch.nn as nn
from dart_core.mamba.vim import VisionMamba

TINY = dict(img_size=64, depth=2, embed_dim=32, num_classes=7, d_state=4)


class ConstantScorer(nn.Module):
    """Uniform (or given) scores on an h×w grid, whatever the image."""

    def __init__(self, grid, scores=None):
        super().__init__()
        self.grid = grid
        self.scores = scores

    def forward(self, images):
        if self.scores is None:
            return images.new_ones(images.shape[0], *self.grid)
        return self.scores.to(images.dtype).expand(images.shape[0], -1, -1)


def vim_release_keys(depth):
    """State-dict keys of the Vim release's vim_*_bimambav2_..._midclstok_div2 models."""
    mixer = ["A_log", "A_b_log", "D", "D_b", "in_proj.weight", "conv1d.weight", "conv1d.bias", "conv1d_b.weight",
             "conv1d_b.bias", "x_proj.weight", "x_proj_b.weight", "dt_proj.weight", "dt_proj.bias",
             "dt_proj_b.weight", "dt_proj_b.bias", "out_proj.weight"]
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm_f.weight",
            "head.weight", "head.bias"}
    for i in range(depth):
        keys |= {f"layers.{i}.norm.weight"} | {f"layers.{i}.mixer.{k}" for k in mixer}
    return keys


def test_registered_and_published_sizes():
    assert {"vim_tiny_patch16_224", "vim_small_patch16_224", "vim_tiny_dart_patch16_224",
            "vim_small_dart_patch16_224"} <= set(timm.list_models("vim_*"))
    # Vim paper, Table 1: Vim-Ti 7M and Vim-S 26M parameters.
    with torch.device("meta"):
        tiny, small = timm.create_model("vim_tiny_patch16_224"), timm.create_model("vim_small_patch16_224")
    assert round(sum(p.numel() for p in tiny.parameters()) / 1e6) == 7
    assert round(sum(p.numel() for p in small.parameters()) / 1e6) == 26
    assert set(tiny.state_dict()) == vim_release_keys(24)


def written_out_vim(model, images):
    """Vim's forward as in the release: conv patches, class token inserted at M // 2, + pos_embed."""
    tokens = model.patch_embed.proj(images).flatten(2).transpose(1, 2)
    middle = tokens.shape[1] // 2
    x = torch.cat([tokens[:, :middle], model.cls_token.expand(len(images), -1, -1), tokens[:, middle:]], 1)
    x = x + model.pos_embed
    return model.head(MambaEncoderForward(model, x)[:, middle])


def MambaEncoderForward(model, x):  # noqa: N802  the encoder part, block by block
    hidden, residual = x, None
    for layer in model.layers:
        residual = hidden if residual is None else residual + hidden
        hidden = layer.mixer(layer.norm(residual))
    return model.norm_f(residual + hidden)


def test_vim_forward_matches_release_layout():
    model = timm.create_model("vim_tiny_patch16_224", **TINY).double().eval()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(model(images), written_out_vim(model, images), rtol=1e-10, atol=1e-10)
    assert model.forward_features(images).shape == (2, 17, 32)


def test_dart_vim_with_uniform_scores_equals_vim():
    """DESIGN.md degenerate case through the whole model: same weights, same logits."""
    vim = timm.create_model("vim_tiny_patch16_224", **TINY).eval()
    dart = timm.create_model("vim_tiny_dart_patch16_224", scorer=ConstantScorer((4, 4)), **TINY).eval()
    missing = dart.load_state_dict(vim.state_dict(), strict=False)
    assert not missing.unexpected_keys and not missing.missing_keys
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dart(images), vim(images), rtol=0, atol=2e-4)


def test_dart_vim_budget_middle_class_token_and_gradients():
    scores = torch.rand(1, 4, 4) + 0.1
    scores.requires_grad_(True)
    model = timm.create_model("vim_tiny_dart_patch16_224", scorer=ConstantScorer((4, 4), scores), num_tokens=10,
                              **TINY)
    images = torch.rand(2, 3, 64, 64)
    features = model.forward_features(images)
    assert features.shape == (2, 11, 32)
    # The class token is the 6th of 11 (after 10 // 2 = 5 patch tokens) with pos_embed entry 16 // 2.
    embedded = model.embed(images)
    cls = model.cls_token[0, 0] + model.pos_embed[0, 8]
    torch.testing.assert_close(embedded[:, 5], cls.expand(2, -1))
    model(images).sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


def test_real_scorer_builds_and_runs():
    model = timm.create_model("vim_tiny_dart_patch16_224", num_tokens=12, **TINY)
    assert model.patch_embed.scorer.version == "v2"
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 7)


def test_release_checkpoints_load_from_local_files(tmp_path):
    source = timm.create_model("vim_tiny_patch16_224", **TINY)
    path = tmp_path / "vim_release.pth"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    loaded = timm.create_model("vim_tiny_patch16_224", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)), **TINY)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # The DART release nests its score network under patch_embed.spn.spn.spn.
    dart = timm.create_model("vim_tiny_dart_patch16_224", **TINY)
    published = {k.replace("patch_embed.scorer.backbone.", "patch_embed.spn.spn.spn.features.")
                 .replace("patch_embed.scorer.head.mlp.fc1.", "patch_embed.spn.spn.spn.mlp.net.0.")
                 .replace("patch_embed.scorer.head.mlp.fc2.", "patch_embed.spn.spn.spn.mlp.net.2."): v
                 for k, v in dart.state_dict().items()}
    path = tmp_path / "darvim.pth"
    torch.save({"model": published}, path)
    again = timm.create_model("vim_tiny_dart_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)), **TINY)
    torch.testing.assert_close(again.state_dict()["patch_embed.scorer.head.mlp.fc2.weight"],
                               dart.state_dict()["patch_embed.scorer.head.mlp.fc2.weight"])
    bad = tmp_path / "bad.pth"
    torch.save({"model": {k: v for k, v in published.items() if k != "norm_f.weight"}}, bad)
    with pytest.raises(RuntimeError, match="missing keys.*norm_f.weight"):
        timm.create_model("vim_tiny_dart_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(bad)),
                          **TINY)


def test_classifier_api():
    model = VisionMamba(**TINY)
    model.reset_classifier(3)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3)
    assert model.forward_head(torch.zeros(2, 17, 32), pre_logits=True).shape == (2, 32)
    assert {"pos_embed", "cls_token"} == model.no_weight_decay()


@pytest.mark.parametrize("name", ["vim_tiny_patch16_224", "vim_tiny_dart_patch16_224"])
def test_set_input_size_moves_the_grid_and_resamples_the_table_around_the_middle_class_token(name):
    model = timm.create_model(name, img_size=64, depth=1, embed_dim=32, d_state=4, num_classes=3).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
        model.set_input_size(img_size=64)  # the same size: nothing moves
        assert torch.equal(model(images), before)
        middle = model.class_table_index()
        model.pos_embed.fill_(0.25)
        model.pos_embed[:, middle] = 7.0
    tokens = getattr(model.patch_embed, "num_tokens", None)
    model.set_input_size(img_size=(96, 80))
    assert tuple(model.patch_embed.grid_size) == (6, 5) and model.pos_embed.shape == (1, 6 * 5 + 1, 32)
    # a constant grid stays constant under resampling; the class entry keeps its value, in the new middle
    cls = model.pos_embed[0, model.class_table_index()]
    grid = torch.cat([model.pos_embed[0, :15], model.pos_embed[0, 16:]])
    assert model.class_table_index() == 15 and torch.equal(cls, torch.full((32,), 7.0))
    torch.testing.assert_close(grid, torch.full_like(grid, 0.25))
    assert getattr(model.patch_embed, "num_tokens", None) == tokens  # DART keeps its budget
    assert model.pos_embed.requires_grad and any(p is model.pos_embed for p in model.parameters())
    assert model(torch.rand(2, 3, 96, 80)).shape == (2, 3)
