"""VideoMamba and VideoMamba + DART: registration, release layout, forward, checkpoints, inflation."""

import dart_video  # noqa: F401  (registers the models)
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from dart_core.checkpoint import CheckpointMismatchError
from dart_video.checkpoint import fit_patch_weight, load_video_checkpoint
from fixed_scores import GivenScores

TINY = dict(img_size=32, num_frames=3, depth=2, embed_dim=16, d_state=4, num_classes=5)


def videomamba_release_keys(depth):
    mixer = ["A_log", "A_b_log", "D", "D_b", "in_proj.weight", "conv1d.weight", "conv1d.bias", "conv1d_b.weight",
             "conv1d_b.bias", "x_proj.weight", "x_proj_b.weight", "dt_proj.weight", "dt_proj.bias",
             "dt_proj_b.weight", "dt_proj_b.bias", "out_proj.weight"]
    keys = {"cls_token", "pos_embed", "temporal_pos_embedding", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm_f.weight", "head.weight", "head.bias"}
    for i in range(depth):
        keys |= {f"layers.{i}.norm.weight"} | {f"layers.{i}.mixer.{k}" for k in mixer}
    return keys


def test_registered_sizes_and_release_layout():
    names = set(timm.list_models("videomamba_*"))
    assert {f"videomamba_{s}{d}_patch16_224" for s in ("tiny", "small", "middle") for d in ("", "_dart")} <= names
    # VideoMamba paper: Ti 7M, S 26M, M 74M parameters.
    with torch.device("meta"):
        sizes = {s: timm.create_model(f"videomamba_{s}_patch16_224", num_classes=1000) for s in ("tiny", "small", "middle")}
    counts = {s: round(sum(p.numel() for p in m.parameters()) / 1e6) for s, m in sizes.items()}
    assert counts == {"tiny": 7, "small": 26, "middle": 74}
    tiny = sizes["tiny"].state_dict()
    assert set(tiny) == videomamba_release_keys(24)
    assert tiny["patch_embed.proj.weight"].shape == (192, 3, 1, 16, 16)
    assert tiny["temporal_pos_embedding"].shape == (1, 8, 192) and tiny["pos_embed"].shape == (1, 197, 192)


def written_out_videomamba(model, video):
    """The release's forward: Conv3d, class token + pos_embed per frame, temporal embedding per patch."""
    batch, frames = video.shape[0], video.shape[2]
    x = model.patch_embed.proj(video)  # (B, D, T, h, w)
    dim = x.shape[1]
    x = x.permute(0, 2, 3, 4, 1).reshape(batch * frames, -1, dim)
    x = torch.cat([model.cls_token.expand(batch * frames, -1, -1), x], 1) + model.pos_embed
    cls, x = x[:batch, :1], x[:, 1:]
    patches = x.shape[1]
    x = x.reshape(batch, frames, patches, dim).transpose(1, 2).reshape(batch * patches, frames, dim)
    x = x + model.temporal_pos_embedding
    x = x.reshape(batch, patches, frames, dim).transpose(1, 2).reshape(batch, frames * patches, dim)
    hidden, residual = torch.cat([cls, x], 1), None
    for layer in model.layers:
        residual = hidden if residual is None else residual + hidden
        hidden = layer.mixer(layer.norm(residual))
    return model.head(model.norm_f(residual + hidden)[:, 0])


def test_forward_matches_release():
    model = timm.create_model("videomamba_tiny_patch16_224", **TINY).double().eval()
    with torch.no_grad():
        model.temporal_pos_embedding.normal_()
    video = torch.randn(2, 3, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(model(video), written_out_videomamba(model, video), rtol=1e-10, atol=1e-10)


def test_dart_with_uniform_scores_and_full_budget_equals_videomamba(tmp_path):
    """The degenerate case end to end; the VideoMamba checkpoint loads into the DART model."""
    plain = timm.create_model("videomamba_tiny_patch16_224", **TINY).eval()
    with torch.no_grad():
        plain.temporal_pos_embedding.normal_(std=0.1)
    path = tmp_path / "videomamba.pth"
    torch.save({"model": plain.state_dict()}, path)
    dart = timm.create_model("videomamba_tiny_dart_patch16_224", num_tokens=3 * 4, scorer=GivenScores((6, 2)),
                             **TINY).eval()
    load_video_checkpoint(dart, path)
    assert dart.patch_embed.num_rows == 6
    video = torch.rand(2, 3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dart(video), plain(video), rtol=0, atol=2e-4)


def test_dart_budget_sequence_and_gradients():
    scores = (torch.rand(1, 6, 2) + 0.1).requires_grad_(True)
    model = timm.create_model("videomamba_tiny_dart_patch16_224", scorer=GivenScores((6, 2), scores), **TINY)
    assert model.patch_embed.num_tokens == 6  # default budget: half of T·h·w
    video = torch.rand(2, 3, 3, 32, 32)
    assert model.forward_features(video).shape == (2, 7, 16)
    model(video).sum().backward()
    assert scores.grad.abs().sum() > 0 and model.temporal_pos_embedding.grad.abs().sum() > 0


def test_dart_model_trains_under_bfloat16_autocast():
    """The recipe's GPU precision, run with the CPU's autocast (the same ops and casts, but the
    mamba-ssm kernel): bf16 logits, finite gradients down to the scorer's head, and features near
    the float32 ones. Measured: the scorer's bf16 convolutions move token edges by ~0.05 of a
    cell (~6 % on the tokens of this smooth clip), two Mamba blocks in bf16 add ~4 %."""
    torch.manual_seed(0)
    model = timm.create_model("videomamba_tiny_dart_patch16_224", **{**TINY, "img_size": 64})
    video = F.interpolate(torch.rand(2, 3, 3, 6, 6), size=(3, 64, 64), mode="trilinear")
    reference = model.patch_embed(video, return_details=True).partition.token_edges
    features = model.forward_features(video)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.patch_embed(video, return_details=True).partition.token_edges
        mixed_features = model.forward_features(video)
        logits = model(video)
    assert logits.dtype == torch.bfloat16
    assert (mixed - reference).abs().max() < 0.1
    assert (mixed_features.float() - features).norm() < 0.15 * features.norm()
    logits.float().logsumexp(1).sum().backward()
    head = model.patch_embed.scorer.head.mlp.fc1.weight.grad
    assert torch.isfinite(head).all() and head.abs().sum() > 0


def test_default_dart_model_uses_the_temporal_scorer():
    model = timm.create_model("videomamba_tiny_dart_patch16_224", **{**TINY, "img_size": 64})
    assert type(model.patch_embed.scorer).__name__ == "TemporalDifferenceScorer"
    assert model(torch.rand(1, 3, 3, 64, 64)).shape == (1, 5)
    assert model.patch_embed.scorer.contrast == 1.0  # published activation by default
    tuned = timm.create_model("videomamba_tiny_dart_patch16_224", scorer_contrast=6.0, scorer_appearance_gate=0.05,
                              **{**TINY, "img_size": 64})
    head = tuned.patch_embed.scorer.head.mlp.fc2.bias  # appearance half first, started near sigmoid⁻¹(0.05)
    channels = head.shape[0] // 2
    assert tuned.patch_embed.scorer.contrast == 6.0 and head[:channels].mean() < head[channels:].mean() - 2


def test_dart_model_scorer_options_reach_the_scorer():
    """``scorer_trainable`` unfreezes the scorer's backbone (it then follows ``.train()``), and
    ``scorer_batch_stats`` makes a clip's scores depend on its batch-mates (per-clip statistics do not)."""
    model = timm.create_model("videomamba_tiny_dart_patch16_224", scorer_batch_stats=True, scorer_trainable=True,
                              **{**TINY, "img_size": 64, "num_frames": 2, "depth": 1})
    scorer = model.patch_embed.scorer
    assert all(p.requires_grad for p in scorer.backbone.parameters())
    model.train()
    assert scorer.backbone.training
    scorer.eval()
    torch.manual_seed(0)
    a, b = torch.rand(1, 3, 2 * 64, 64), torch.rand(1, 3, 2 * 64, 64) * 3
    with torch.no_grad():
        assert not torch.allclose(scorer(torch.cat([a, b]))[:1], scorer(a))


def test_video_checkpoints_load_through_timm_and_mismatches_are_listed(tmp_path):
    source = timm.create_model("videomamba_tiny_patch16_224", **TINY)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": source.state_dict()}, path)
    loaded = timm.create_model("videomamba_tiny_patch16_224", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)), **TINY)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(CheckpointMismatchError, match="temporal_pos_embedding"):
        timm.create_model("videomamba_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          **{**TINY, "num_frames": 4})


def test_patch_weight_inflation():
    weight = torch.randn(4, 3, 2, 2)
    centered = fit_patch_weight(weight, torch.Size([4, 3, 3, 2, 2]))
    assert torch.equal(centered[:, :, 1], weight) and not centered[:, :, [0, 2]].any()
    averaged = fit_patch_weight(weight, torch.Size([4, 3, 3, 2, 2]), center=False)
    torch.testing.assert_close(averaged.sum(2), weight)
    assert torch.equal(fit_patch_weight(weight.unsqueeze(2), weight.shape), weight)
    with pytest.raises(ValueError, match="tubelet"):
        fit_patch_weight(torch.zeros(4, 3, 2, 2, 2), weight.shape)


def test_image_checkpoint_inflates_to_video(tmp_path):
    """An image model's weights on a clip of identical frames: every frame's tokens are the image's."""
    video_model = timm.create_model("videomamba_tiny_patch16_224", **TINY)
    image_state = {k: v for k, v in video_model.state_dict().items() if k != "temporal_pos_embedding"}
    conv = nn.Conv2d(3, 16, 16, stride=16)
    image_state["patch_embed.proj.weight"] = conv.weight.detach()
    image_state["patch_embed.proj.bias"] = conv.bias.detach()
    image_state["head.weight"], image_state["head.bias"] = torch.zeros(1000, 16), torch.zeros(1000)
    path = tmp_path / "image.pth"
    torch.save(image_state, path)
    load_video_checkpoint(video_model, path, image=True)
    assert not video_model.temporal_pos_embedding.any()
    frame = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        tokens = video_model.patch_embed(frame.unsqueeze(2).expand(-1, -1, 3, -1, -1))
        per_frame = conv(frame).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, per_frame.repeat(1, 3, 1))


def test_vim_image_checkpoint_moves_class_entry_and_halves_out_proj(tmp_path):
    import dart_core.mamba  # noqa: F401

    vim = timm.create_model("vim_tiny_patch16_224", img_size=32, depth=2, embed_dim=16, d_state=4, num_classes=5)
    path = tmp_path / "vim.pth"
    torch.save({"model": vim.state_dict()}, path)
    video_model = timm.create_model("videomamba_tiny_patch16_224", **TINY)
    load_video_checkpoint(video_model, path, image=True, source="vim")
    table = vim.pos_embed[0]
    torch.testing.assert_close(video_model.pos_embed[0, 0], table[2])
    torch.testing.assert_close(video_model.pos_embed[0, 1:], torch.cat([table[:2], table[3:]]))
    torch.testing.assert_close(video_model.layers[1].mixer.out_proj.weight, vim.layers[1].mixer.out_proj.weight / 2)
    # A single-direction sum with halved out_proj equals the average with the original one.
    hidden = torch.randn(1, 5, 16)
    vim_mixer, video_mixer = vim.layers[0].mixer, video_model.layers[0].mixer
    torch.testing.assert_close(video_mixer(hidden), vim_mixer(hidden), rtol=1e-5, atol=1e-6)
