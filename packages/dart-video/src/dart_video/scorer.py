"""The temporal-difference scorer (DESIGN.md §2): scores that see motion.

A frozen lightweight CNN stage (MobileNetV3-Small by default) gives features ``f_t`` of every
frame. The head works on two feature sets per frame: the features themselves and how much they
change around that frame, ``m_t = mean(|f_t − f_{t−1}|, |f_{t+1} − f_t|)`` (the differences that
exist: frame 0 has only the next one, frame T−1 only the previous one; ``m = 0`` for one frame).
Magnitudes, not signed differences: every channel of ``[f_t, m_t]`` is then an energy that is
large where something is, or moves, so a positive gate can only add evidence. Small FC layers read
the per-frame pooled ``[f_t, m_t]`` together with the features pooled over the whole clip and emit
a multiplicative sigmoid gate over the 2F channels; the score map of frame t is
``Σ_c gate_{t,c} · [f_t, m_t]_c`` (like the v2 head, with motion channels). So the gate can keep an
object's appearance in the frame where it first shows and rely on the change channels elsewhere:
a static object need not be encoded again in every frame. ``appearance_gate`` sets where the
appearance half of the gate starts (½ by default; small: the scores start from motion alone). The
maps are resized to the frame's score grid, stacked into the (T·h, w) tall grid, standardised over
the whole clip and activated with ``sigmoid(2·s)`` (shared with :mod:`dart_core.scorers`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from dart_core.resize import bilinear_resize
from dart_core.scorers import ScoreHeadV2, Scorer, build_scorer, feature_channels
from timm.layers import Mlp

from .tokenizer import tall_to_frames


class TemporalGateHead(nn.Module):
    """Gate over [features, temporal differences] from per-frame and clip-pooled features.

    Args:
        feature_dim: F, the backbone's channels.
        hidden_dim: width of the FC layers.
        appearance_gate: the appearance channels' gate at initialisation, in (0, 1) (the output
            bias of the FC layers; the motion channels start at ½).
    """

    def __init__(self, feature_dim: int, hidden_dim: int = 96, appearance_gate: float = 0.5):
        super().__init__()
        if not 0 < appearance_gate < 1:
            raise ValueError(f"appearance_gate is a sigmoid gate's starting value, in (0, 1); got {appearance_gate}")
        self.mlp = Mlp(3 * feature_dim, hidden_dim, 2 * feature_dim)
        with torch.no_grad():
            self.mlp.fc2.bias[:feature_dim] += math.log(appearance_gate / (1 - appearance_gate))

    @staticmethod
    def motion(features: torch.Tensor) -> torch.Tensor:
        """(B, T, F, h', w') → (B, T, F, h', w') ``m_t``: the mean magnitude of the changes into
        and out of frame t (see the module docstring)."""
        if features.shape[1] < 2:
            return torch.zeros_like(features)
        change = (features[:, 1:] - features[:, :-1]).abs()  # (B, T-1, ...): change t -> t+1
        into = torch.cat([change[:, :1], change], dim=1)  # frame 0 has no "into": use its "out of"
        out_of = torch.cat([change, change[:, -1:]], dim=1)
        return (into + out_of) / 2

    def raw_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, F, h', w') frame features → (B, T, h', w') raw scores."""
        motion = self.motion(features)
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
        appearance_gate: see :class:`TemporalGateHead`.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_frames: int, grid_size=(14, 14),
                 hidden_dim: int = 96, batch_stats: bool = False, freeze_backbone: bool = True,
                 contrast: float = 1.0, appearance_gate: float = 0.5):
        super().__init__(backbone, feature_dim, grid_size=grid_size, version="v2", hidden_dim=hidden_dim,
                         batch_stats=batch_stats, freeze_backbone=freeze_backbone, contrast=contrast)
        self.head = TemporalGateHead(feature_dim, hidden_dim, appearance_gate)
        self.num_frames = num_frames

    def forward(self, tall: torch.Tensor) -> torch.Tensor:
        """(B, C, T·H, W) tall clip image → (B, T·h, w) positive scores."""
        video = tall_to_frames(tall, self.num_frames)  # (B, C, T, H, W)
        batch, channels, frames, height, width = video.shape
        flat = video.transpose(1, 2).reshape(batch * frames, channels, height, width)
        features = self.features(flat)
        features = features.view(batch, frames, *features.shape[1:])
        raw = self.head.raw_scores(features)  # (B, T, h', w')
        raw = bilinear_resize(raw, self.grid_size)  # deterministic backward, unlike F.interpolate on CUDA
        raw = raw.reshape(batch, frames * self.grid_size[0], self.grid_size[1])
        return self.activate(raw)


def build_temporal_scorer(
    num_frames: int,
    grid_size=(14, 14),
    backbone: str = "mobilenet_v3_small",
    weights=None,
    stage: int | None = None,
    hidden_dim: int = 96,
    batch_stats: bool = False,
    freeze_backbone: bool = True,
    contrast: float = 1.0,
    appearance_gate: float = 0.5,
) -> TemporalDifferenceScorer:
    """A :class:`TemporalDifferenceScorer` on a backbone built like :func:`dart_core.build_scorer`
    (torchvision presets sliced like the paper, or any timm name; weights from a local file)."""
    net = build_scorer(backbone, "v1", grid_size=grid_size, weights=weights, stage=stage,
                       freeze_backbone=freeze_backbone).backbone
    return TemporalDifferenceScorer(net, feature_channels(net), num_frames, grid_size, hidden_dim, batch_stats,
                                    freeze_backbone, contrast, appearance_gate)
