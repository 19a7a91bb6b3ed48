"""The temporal-difference scorer (DESIGN.md §2): scores that see motion.

A frozen lightweight CNN stage (MobileNetV3-Small by default) gives features ``f_t`` of every
frame. The head works on two feature sets per frame: the features themselves and their change
since the previous frame, ``m_t = f_t - f_{t-1}`` (``m_0 = 0``). Small FC layers read the
per-frame pooled ``[f_t, m_t]`` together with the features pooled over the whole clip and emit a
multiplicative sigmoid gate over the 2F channels; the score map of frame t is
``Σ_c gate_{t,c} · [f_t, m_t]_c`` (like the v2 head, with motion channels). So the gate can keep an
object's appearance in the frame where it first shows and rely on the change channels elsewhere:
a static object need not be encoded again in every frame. The maps are resized to the frame's
score grid, stacked into the (T·h, w) tall grid, standardised over the whole clip and activated
with ``sigmoid(2·s)`` (shared with :mod:`dart_core.scorers`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from dart_core.scorers import ScoreHeadV2, Scorer, build_scorer, feature_channels, standardise
from timm.layers import Mlp

from .tokenizer import tall_to_frames


class TemporalGateHead(nn.Module):
    """Gate over [features, temporal differences] from per-frame and clip-pooled features.

    Args:
        feature_dim: F, the backbone's channels.
        hidden_dim: width of the FC layers.
    """

    def __init__(self, feature_dim: int, hidden_dim: int = 96):
        super().__init__()
        self.mlp = Mlp(3 * feature_dim, hidden_dim, 2 * feature_dim)

    def raw_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, F, h', w') frame features → (B, T, h', w') raw scores."""
        # Nothing to compare the first frame with: its change channels are zero.
        motion = torch.cat([torch.zeros_like(features[:, :1]), features[:, 1:] - features[:, :-1]], dim=1)
        joint = torch.cat([features, motion], dim=2)  # (B, T, 2F, h', w')
        per_frame = joint.mean(dim=(3, 4))  # (B, T, 2F)
        clip = features.mean(dim=(1, 3, 4))[:, None].expand(-1, features.shape[1], -1)  # (B, T, F)
        gate = torch.sigmoid(self.mlp(torch.cat([per_frame, clip], dim=-1)))  # (B, T, 2F)
        return torch.einsum("btchw,btc->bthw", joint, gate)

    activate = staticmethod(ScoreHeadV2.activate)


class TemporalDifferenceScorer(Scorer):
    """Frozen backbone + :class:`TemporalGateHead` → (B, T·h, w) scores for a tall clip image.

    Args:
        backbone: maps (B·T, C, H, W) frames to (B·T, F, h', w') features.
        feature_dim: F.
        num_frames: T.
        grid_size: (h, w), one frame's score grid.
        hidden_dim: FC width.
        batch_stats: standardise with the batch's statistics instead of each clip's.
        freeze_backbone: keep the backbone frozen (default).
        contrast: multiplies the standardised scores before the activation (1: published; see
            :class:`dart_core.scorers.Scorer`). A small object in a long clip sits on few cells,
            which caps its density at a few times the background's unless this is raised.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_frames: int, grid_size=(14, 14),
                 hidden_dim: int = 96, batch_stats: bool = False, freeze_backbone: bool = True,
                 contrast: float = 1.0):
        super().__init__(backbone, feature_dim, grid_size=grid_size, version="v2", hidden_dim=hidden_dim,
                         batch_stats=batch_stats, freeze_backbone=freeze_backbone, contrast=contrast)
        self.head = TemporalGateHead(feature_dim, hidden_dim)
        self.num_frames = num_frames

    def forward(self, tall: torch.Tensor) -> torch.Tensor:
        """(B, C, T·H, W) tall clip image → (B, T·h, w) positive scores."""
        video = tall_to_frames(tall, self.num_frames)  # (B, C, T, H, W)
        batch, channels, frames, height, width = video.shape
        flat = video.transpose(1, 2).reshape(batch * frames, channels, height, width)
        features = self.features(flat)
        features = features.view(batch, frames, *features.shape[1:])
        raw = self.head.raw_scores(features)  # (B, T, h', w')
        raw = F.interpolate(raw.flatten(0, 1).unsqueeze(1), size=self.grid_size, mode="bilinear", align_corners=False)
        raw = raw.view(batch, frames * self.grid_size[0], self.grid_size[1])
        return self.head.activate(self.contrast * standardise(raw, self.batch_stats))


def build_temporal_scorer(
    num_frames: int,
    grid_size=(14, 14),
    backbone: str = "mobilenet_v3_small",
    weights=None,
    stage: int | None = None,
    hidden_dim: int = 96,
    batch_stats: bool = False,
    freeze_backbone: bool = True,
) -> TemporalDifferenceScorer:
    """A :class:`TemporalDifferenceScorer` on a backbone built like :func:`dart_core.build_scorer`
    (torchvision presets sliced like the paper, or any timm name; weights from a local file)."""
    net = build_scorer(backbone, "v1", grid_size=grid_size, weights=weights, stage=stage,
                       freeze_backbone=freeze_backbone).backbone
    return TemporalDifferenceScorer(net, feature_channels(net), num_frames, grid_size, hidden_dim, batch_stats,
                                    freeze_backbone)
