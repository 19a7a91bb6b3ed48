"""The two tiny ViTs of the demo: a fixed grid and DART, same architecture and token budget."""

from __future__ import annotations

from functools import partial

import timm
import torch
import torch.nn as nn

from ..models import patch_timm
from ..scorers import FeatureContrast, Scorer, build_scorer

EMBED_DIM, DEPTH, HEADS = 64, 4, 4


def tiny_vit(img_size: int, patch_size: int, num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dim=EMBED_DIM, depth=DEPTH, num_heads=HEADS, class_token=False, global_pool="avg",
    )


def small_cnn(channels: int = 32, stages: int = 3) -> nn.Sequential:
    """``stages`` stride-2 convolutions: (B, 1, S, S) → (B, channels, S/2^stages, S/2^stages)."""
    layers, width = [], 1
    for out in (16,) + (channels,) * (stages - 1):
        layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.GELU()]
        width = out
    return nn.Sequential(*layers)


class FixedGridClassifier(nn.Module):
    """The baseline: the canvas area-downsampled so that a plain ViT gets the same token budget."""

    def __init__(self, canvas: int, tokens_per_side: int, patch_size: int):
        super().__init__()
        self.size = tokens_per_side * patch_size
        self.vit = tiny_vit(self.size, patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit(nn.functional.interpolate(images, size=(self.size, self.size), mode="area"))


class GrayToImageNet(nn.Module):
    """(B, 1, H, W) intensities in [0, 1] → (B, 3, H, W) as EfficientNet-Lite0 expects ((x - 0.5) / 0.5)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images * 2 - 1).expand(-1, 3, -1, -1)


def lite0_scorer(grid: int, contrast: float = 1.0, version: str = "v2") -> Scorer:
    """A frozen ImageNet CNN (EfficientNet-Lite0, real weights shipped in a pip package; its
    stride-8 stage) and a trainable head, as in the paper; ``contrast`` as in :class:`Scorer`.

    ``version="v2"`` (the demo's default): the v2 head on :class:`~dart_core.scorers.FeatureContrast`
    features, so the scorer starts from "where does something stand out" (digit and fragments)
    rather than from noise. ``"v1"``: the v1 head on the raw features (the published DeiT setting).
    """
    scorer = build_scorer(
        "tf_efficientnet_lite0", version, grid_size=(grid, grid), weights="packaged", stage=2, contrast=contrast
    )
    after = [FeatureContrast()] if version == "v2" else []
    scorer.backbone = nn.Sequential(GrayToImageNet(), scorer.backbone, *after)
    return scorer


def cnn_scorer(grid: int, contrast: float = 1.0) -> Scorer:
    """A small CNN scorer trained from scratch with the head."""
    return Scorer(small_cnn(), 32, grid_size=(grid, grid), version="v1", freeze_backbone=False, contrast=contrast)


SCORERS = {"lite0": lite0_scorer, "lite0-v1": partial(lite0_scorer, version="v1"), "cnn": cnn_scorer}


def dart_classifier(
    canvas: int, grid: int, num_tokens: int, patch_size: int, scorer: str = "lite0", contrast: float = 1.0
) -> nn.Module:
    """A tiny ViT whose h×w grid (and positional table) is ``grid``², fed the full canvas
    (``sample_scale = canvas / (grid·P)``), with a scorer trained end to end through the partition."""
    scale = canvas // (grid * patch_size)
    vit = tiny_vit(grid * patch_size, patch_size)
    return patch_timm(vit, num_tokens=num_tokens, sample_scale=scale, scorer=SCORERS[scorer](grid, contrast))


class BoxOracleScorer(nn.Module):
    """Diagnostic only: scores from the ground-truth digit box, carried as a second image channel.

    Gives each grid cell ``0.1 + peak × (fraction of the cell inside the box)``: the v1 head's
    range (0.1..1.1) for ``peak=1``. It tells how well the tokenizer and the ViT do when the
    scorer knows where to look, i.e. the ceiling a learned scorer can reach at this budget.
    """

    def __init__(self, grid: int, peak: float = 1.0):
        super().__init__()
        self.grid, self.peak = grid, peak

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 2, S, S) canvas + box mask → (B, grid, grid) scores."""
        return 0.1 + self.peak * nn.functional.adaptive_avg_pool2d(images[:, 1:2], self.grid)[:, 0]


def oracle_classifier(canvas: int, grid: int, num_tokens: int, patch_size: int) -> nn.Module:
    """The DART classifier with :class:`BoxOracleScorer`. Its input has the box mask as channel 1;
    the projection's weights for that channel are held at zero, so the ViT sees only the canvas."""
    scale = canvas // (grid * patch_size)
    vit = patch_timm(tiny_vit(grid * patch_size, patch_size, in_chans=2), num_tokens=num_tokens,
                     sample_scale=scale, scorer=BoxOracleScorer(grid))
    weight = vit.patch_embed.proj.weight
    with torch.no_grad():
        weight[:, 1] = 0
    canvas_only = torch.zeros_like(weight)
    canvas_only[:, 0] = 1
    weight.register_hook(lambda grad: grad * canvas_only)
    return vit
