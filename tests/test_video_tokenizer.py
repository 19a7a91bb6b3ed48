"""Tall-frame video tokenizer and temporal-difference scorer."""

import math

import pytest
import reference_dart as ref
import torch
import torch.nn as nn
import torch.nn.functional as F
from dart_core.scorers import standardise
from dart_video import (
    TemporalDifferenceScorer,
    VideoDART,
    build_temporal_scorer,
    frames_to_tall,
    video_num_rows,
    video_pos_grid,
)
from dart_video.scorer import TemporalGateHead
from fixed_scores import GivenScores


def test_row_count_keeps_tokens_square():
    assert video_num_rows(196, 14, 14) == 14
    assert video_num_rows(196 * 8, 14 * 8, 14) == 14 * 8
    assert video_num_rows(196 * 4, 14 * 8, 14) == round((196 * 4 * 8) ** 0.5)
    for bad in (0, -3):  # a budget or row count below 1 is an error, not the default
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            VideoDART(2, img_size=32, patch_size=8, embed_dim=4, num_tokens=bad, scorer=GivenScores((8, 4)))
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            VideoDART(2, img_size=32, patch_size=8, embed_dim=4, num_tokens=8, num_rows=bad, scorer=GivenScores((8, 4)))


def test_pos_grid_is_spatial_plus_temporal():
    spatial, temporal = torch.randn(1, 2, 3, 4), torch.randn(1, 5, 4)
    grid = video_pos_grid(spatial, temporal)
    for t in range(5):
        for i in range(2):
            torch.testing.assert_close(grid[0, t * 2 + i], spatial[0, i] + temporal[0, t])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_full_budget_equals_videomamba_patch_embedding(dtype):
    """Uniform scores, budget T·h·w: VideoMamba's Conv3d(1×P×P) tokens + spatial + temporal embeddings."""
    frames, h, w, patch, dim = 3, 2, 3, 8, 6
    tokenizer = VideoDART(frames, img_size=(h * patch, w * patch), patch_size=patch, embed_dim=dim,
                          num_tokens=frames * h * w, scorer=GivenScores((frames * h, w))).to(dtype)
    assert tokenizer.num_rows == frames * h
    video = torch.rand(2, 3, frames, h * patch, w * patch, dtype=dtype)
    spatial, temporal = torch.randn(1, h, w, dim, dtype=dtype), torch.randn(1, frames, dim, dtype=dtype)
    out = tokenizer(video, spatial, temporal, return_details=True)

    conv3d = nn.Conv3d(3, dim, (1, patch, patch), stride=(1, patch, patch)).to(dtype)
    with torch.no_grad():
        conv3d.weight.copy_(tokenizer.proj.weight.unsqueeze(2))
        conv3d.bias.copy_(tokenizer.proj.bias)
    standard = conv3d(video).flatten(2).transpose(1, 2)  # (B, T·h·w, D), frame-major
    bound = 1e-4 * tokenizer.proj.weight.abs().sum(dim=(1, 2, 3)).max() + 1e-5
    assert (out.tokens - standard).abs().max() < bound
    expected_pos = (spatial.reshape(1, 1, h * w, dim) + temporal[:, :, None]).reshape(1, -1, dim)
    assert (out.pos_embed - expected_pos).abs().max() < 1e-4 * expected_pos.abs().max()


def test_video_dart_frame_grid_follows_sample_scale():
    """sample_scale = input size / (grid × P): a 32-pixel clip with P = 8 at scale 2 has a 2 × 2 grid per
    frame, a default budget of half of T·h·w = 4 tokens, and takes (1, 2, 2, D) spatial embeddings."""
    tokenizer = VideoDART(2, img_size=32, patch_size=8, embed_dim=4, sample_scale=2, scorer=GivenScores((4, 2)))
    assert tokenizer.frame_grid_size == (2, 2) and tokenizer.num_tokens == 4
    out = tokenizer(torch.rand(1, 3, 2, 32, 32), torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 4), return_details=True)
    assert out.tokens.shape == (1, 4, 4)


def test_tall_partition_matches_reference_on_the_stacked_image():
    frames, h, w, patch = 2, 3, 3, 4
    scores = torch.rand(1, frames * h, w, dtype=torch.float64) ** 2 + 0.05
    tokenizer = VideoDART(frames, img_size=h * patch, patch_size=patch, embed_dim=5, num_tokens=7, num_rows=3,
                          scorer=GivenScores((frames * h, w), scores)).double()
    video = torch.randn(2, 3, frames, h * patch, w * patch, dtype=torch.float64)
    spatial, temporal = torch.randn(1, h, w, 5, dtype=torch.float64), torch.randn(1, frames, 5, dtype=torch.float64)
    out = tokenizer(video, spatial, temporal, return_details=True)
    tall = torch.cat([video[:, :, t] for t in range(frames)], dim=2)  # frames stacked top to bottom
    rows, tokens = ref.partition(scores.expand(2, -1, -1), 3, 7)
    torch.testing.assert_close(out.partition.row_edges, rows, rtol=0, atol=1e-12)
    patches = ref.sample_patches(tall, rows, tokens, patch)
    want = patches.flatten(2) @ tokenizer.proj.weight.flatten(1).T + tokenizer.proj.bias
    torch.testing.assert_close(out.tokens, want, rtol=1e-10, atol=1e-10)
    table = torch.cat([spatial + temporal[:, t, None, None] for t in range(frames)], dim=1)
    torch.testing.assert_close(out.pos_embed, ref.pos_embed(table, scores, 3, 7).expand(2, -1, -1),
                               rtol=1e-10, atol=1e-10)


def test_budget_flows_to_the_informative_frame():
    frames, h, w = 4, 4, 4
    scores = torch.full((1, frames * h, w), 0.05)
    scores[:, 2 * h:3 * h] = 1.0  # frame 2 carries the information
    tokenizer = VideoDART(frames, img_size=16, patch_size=4, embed_dim=4, num_tokens=32,
                          scorer=GivenScores((frames * h, w), scores))
    part = tokenizer(torch.rand(1, 3, frames, 16, 16), return_details=True).partition
    row_mid = (part.row_edges[0, :-1] + part.row_edges[0, 1:]) / 2
    token_frame = (row_mid[part.token_rows()[0]] * frames).floor()
    assert (token_frame == 2).sum() > 32 * 0.6


def test_bad_clips_are_named():
    tokenizer = VideoDART(2, img_size=16, patch_size=8, embed_dim=4, scorer=GivenScores((4, 2)))
    with pytest.raises(ValueError, match="T=2"):
        tokenizer(torch.rand(1, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="needs spatial_pos"):
        tokenizer(torch.rand(1, 3, 2, 16, 16), temporal_pos=torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="video batch"):
        frames_to_tall(torch.rand(3, 2, 16, 16))


def tiny_scorer(frames, grid=(2, 2)):
    backbone = nn.Sequential(nn.Conv2d(3, 5, 8, stride=8), nn.ReLU())
    return TemporalDifferenceScorer(backbone, 5, frames, grid_size=grid, hidden_dim=7)


def test_scorer_matches_written_out_head():
    torch.manual_seed(0)
    scorer = tiny_scorer(3).double()
    video = torch.rand(2, 3, 3, 32, 32, dtype=torch.float64)
    got = scorer(frames_to_tall(video))
    mlp = scorer.head.mlp
    maps = []
    for b in range(2):
        feats = [scorer.backbone(video[b:b + 1, :, t])[0] for t in range(3)]  # (F, 4, 4) each
        clip = torch.stack(feats).mean(dim=(0, 2, 3))
        for t in range(3):
            changes = [(feats[u] - feats[v]).abs() for u, v in ((t, t - 1), (t + 1, t)) if 0 <= v and u < 3]
            motion = sum(changes) / len(changes)  # frames 0 and 2 have one neighbour, frame 1 two
            joint = torch.cat([feats[t], motion])
            gate = torch.sigmoid(mlp(torch.cat([joint.mean(dim=(1, 2)), clip])))
            raw = (joint * gate[:, None, None]).sum(0)
            maps.append(F.interpolate(raw[None, None], size=(2, 2), mode="bilinear", align_corners=False)[0, 0])
    raw = torch.stack(maps).view(2, 3 * 2, 2)
    want = torch.sigmoid(2 * standardise(raw))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_static_clip_scores_every_frame_alike_and_clips_are_independent():
    torch.manual_seed(1)
    scorer = tiny_scorer(4)
    frame = torch.rand(1, 3, 1, 16, 16)
    static = scorer(frames_to_tall(frame.expand(-1, -1, 4, -1, -1))).view(1, 4, 2, 2)
    for t in range(1, 4):
        torch.testing.assert_close(static[:, t], static[:, 0])
    moving = torch.rand(1, 3, 4, 16, 16)
    pair = scorer(frames_to_tall(torch.cat([moving, frame.expand(-1, -1, 4, -1, -1)])))
    torch.testing.assert_close(pair[1:], static.view(1, 8, 2))  # per-clip standardisation


def test_motion_channels_are_mean_neighbour_change_magnitudes():
    features = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64)
    motion = TemporalGateHead.motion(features)
    step = [(features[:, t + 1] - features[:, t]).abs() for t in range(3)]  # change t -> t + 1
    for t, want in enumerate([step[0], (step[0] + step[1]) / 2, (step[1] + step[2]) / 2, step[2]]):
        torch.testing.assert_close(motion[:, t], want)
    assert TemporalGateHead.motion(features[:, :1]).eq(0).all()  # one frame: nothing moves
    assert TemporalGateHead.motion(features[:, :1].expand(-1, 4, -1, -1, -1)).eq(0).all()  # a still clip


def test_appearance_gate_shifts_only_the_appearance_half_of_the_gate_logits():
    features = torch.rand(2, 3, 5, 4, 4)
    joint = torch.cat([features, TemporalGateHead.motion(features)], dim=2).mean(dim=(3, 4))
    clip = features.mean(dim=(1, 3, 4))[:, None].expand(-1, 3, -1)
    logits = {}
    for gate in (0.5, 0.05):
        torch.manual_seed(0)
        logits[gate] = TemporalGateHead(5, 7, appearance_gate=gate).mlp(torch.cat([joint, clip], dim=-1))
    shift = logits[0.05] - logits[0.5]
    torch.testing.assert_close(shift[..., :5], torch.full_like(shift[..., :5], math.log(0.05 / 0.95)))
    torch.testing.assert_close(shift[..., 5:], torch.zeros_like(shift[..., 5:]))
    with pytest.raises(ValueError, match="appearance_gate"):
        TemporalGateHead(5, appearance_gate=1.0)


def test_a_motion_scorer_puts_a_moving_square_above_a_still_one():
    """Backbone = the frame itself (one channel per colour): with the appearance gate near zero
    the scores see only change, so the moving square outranks the still one in every frame."""
    video = torch.zeros(1, 3, 4, 32, 32)
    video[..., 24:32, 0:8] = 1.0  # still, bottom left
    for t in range(4):
        video[:, :, t, 0:8, 8 * t:8 * t + 8] = 1.0  # moving along the top
    scorer = TemporalDifferenceScorer(nn.AvgPool2d(8), 3, 4, grid_size=(4, 4), appearance_gate=1e-4)
    scores = scorer(frames_to_tall(video)).view(4, 4, 4)
    for t in range(4):
        assert scores[t, 0, t] > 2 * scores[t, 3, 0]


def test_scorer_trains_only_its_head():
    scorer = build_temporal_scorer(2, grid_size=(2, 2))
    assert all(not p.requires_grad for p in scorer.backbone.parameters())
    scorer.train()
    assert not scorer.backbone.training
    scores = scorer(torch.rand(2, 3, 2 * 32, 32))
    assert scores.shape == (2, 4, 2) and (scores > 0).all()
    scores.square().sum().backward()
    assert scorer.head.mlp.fc1.weight.grad.abs().sum() > 0
