"""timm backbones for dense heads: any ``features_only`` model, channels-first outputs."""

from __future__ import annotations

import os
from collections.abc import Sequence

import timm
import torch
import torch.nn as nn
from dart_core.pretrained import timm_model_from_file


class TimmFeatures(nn.Module):
    """A timm ``features_only`` backbone returning (B, C_i, H_i, W_i) maps.

    CNNs, Swin (whose features come channels-last and are permuted here) and hybrids all work:
    the warp hands them an ordinary fixed-size image.

    Args:
        name: a timm model name.
        out_indices: the feature levels to return.
        weights: a local weights file for the timm model (read weights-only, every backbone key
            required: :func:`dart_core.pretrained.timm_model_from_file`); no downloads.
        **kwargs: passed to ``timm.create_model`` (e.g. ``img_size`` for Swin).

    Attributes:
        channels: channels of each returned level.
        strides: reduction of each returned level relative to the input.
    """

    def __init__(
        self,
        name: str,
        out_indices: Sequence[int] = (1, 2, 3),
        weights: str | os.PathLike | None = None,
        **kwargs,
    ):
        super().__init__()
        kwargs.update(features_only=True, out_indices=tuple(out_indices))
        self.net = timm.create_model(name, **kwargs) if weights is None else timm_model_from_file(name, weights, **kwargs)
        self.channels = list(self.net.feature_info.channels())
        self.strides = list(self.net.feature_info.reduction())
        self.channels_last = str(getattr(self.net, "output_fmt", "NCHW")).endswith("NHWC")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) → one (B, C_i, H / s_i, W / s_i) map per level."""
        features = self.net(images)
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)
