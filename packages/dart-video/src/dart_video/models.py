"""VideoMamba with a fixed patch grid or the tall-frame DART tokenizer, registered with timm.

Registered names (``timm.create_model(name, num_frames=T)`` after ``import dart_video``):

* ``videomamba_{tiny,small,middle}_patch16_224``: VideoMamba (bidirectional Mamba, branches
  summed, class token first, spatial table + temporal embedding), with the key layout of the
  VideoMamba release (``patch_embed.proj`` is a Conv3d with a 1×P×P kernel): its video
  checkpoints load unchanged.
* ``videomamba_{tiny,small,middle}_dart_patch16_224``: the same with :class:`VideoDART` and the
  temporal-difference scorer; ``num_tokens=`` sets the joint budget (default 196·T/2),
  ``scorer=`` a scorer module, or ``scorer_backbone=`` / ``scorer_weights=`` (and
  ``scorer_stage=``, ``scorer_trainable=``) to build one.

Defaults: 8 frames, 224 input, 174 classes (Something-Something V2). Local checkpoints load with
``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)``; see :mod:`dart_video.checkpoint` for
image checkpoints (inflation) and for starting a DART model from a VideoMamba checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from dart_core.mamba.encoder import MambaEncoder
from dart_core.mamba.intermediates import MambaIntermediates
from dart_core.models.intermediates import DART_HAS_NO_GRID
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .scorer import build_temporal_scorer
from .tokenizer import VideoDART, video_pos_grid

SIZES = {
    "tiny": dict(embed_dim=192, depth=24),
    "small": dict(embed_dim=384, depth=24),
    "middle": dict(embed_dim=576, depth=32),
}


class VideoPatchEmbed(nn.Module):
    """VideoMamba's per-frame patch embedding: Conv3d with a 1×P×P kernel and stride.

    Returns (B, T·h·w, D) tokens in frame-major, then row-major order.
    """

    def __init__(self, num_frames: int, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.num_frames, self.frame_size = num_frames, (img_size, img_size)
        self.frame_grid_size = (img_size // patch_size, img_size // patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, (1, patch_size, patch_size), stride=(1, patch_size, patch_size))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) → (B, T·h·w, D)."""
        if video.dim() != 5 or video.shape[2] != self.num_frames:
            raise ValueError(f"expected clips (B, C, T={self.num_frames}, H, W); got shape {tuple(video.shape)}")
        if tuple(video.shape[-2:]) != self.frame_size:
            raise ValueError(f"frames of {video.shape[-2]}x{video.shape[-1]} (H x W) do not fit this model's "
                             f"{self.frame_size[0]}x{self.frame_size[1]} frames; crop or resize them, or build the "
                             f"model with img_size={video.shape[-2]}")
        return self.proj(video).flatten(2).transpose(1, 2)


class VideoMamba(MambaIntermediates, MambaEncoder):
    """VideoMamba: frame patches (+ spatial and temporal embeddings) after a class token, through
    bidirectional Mamba blocks; the class token's feature is classified.

    Args:
        img_size, patch_size, in_chans: frame geometry.
        num_frames: T.
        num_classes: classifier outputs (0: no head).
        embed_dim, depth: D and the number of blocks.
        drop_rate: dropout after the positional embeddings.
        drop_path_rate: stochastic depth.
        fc_drop_rate: dropout before the classifier.
        embed_layer: builds the tokenizer from ``num_frames=, img_size=, patch_size=, in_chans=,
            embed_dim=`` (:class:`VideoPatchEmbed` or a :class:`VideoDART` factory).
        mixer_kwargs: passed to :class:`dart_core.mamba.BiMamba` (VideoMamba sums the two
            directions: ``divide_out=False`` by default).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_frames: int = 8,
        num_classes: int = 174,
        embed_dim: int = 192,
        depth: int = 24,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        fc_drop_rate: float = 0.0,
        embed_layer: Callable[..., nn.Module] = VideoPatchEmbed,
        **mixer_kwargs,
    ):
        mixer_kwargs.setdefault("divide_out", False)
        super().__init__(embed_dim, depth, drop_path_rate=drop_path_rate, **mixer_kwargs)
        self.num_classes, self.num_features, self.embed_dim = num_classes, embed_dim, embed_dim
        self.num_frames, self.num_prefix_tokens = num_frames, 1
        self.patch_embed = embed_layer(num_frames=num_frames, img_size=img_size, patch_size=patch_size,
                                       in_chans=in_chans, embed_dim=embed_dim)
        height, width = self.patch_embed.frame_grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, height * width + 1, embed_dim))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.head_drop = nn.Dropout(fc_drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "temporal_pos_embedding"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise learning-rate decay, as in the release: the
        embeddings, then one group per block; the final norm, the head and a DART scorer (new, not
        in image checkpoints) are left out and keep the full rate."""
        return dict(stem=r"^cls_token|^pos_embed|^temporal_pos_embedding|^patch_embed\.(?!scorer\.)",
                    blocks=r"^layers\.(\d+)")

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) → (B, 1 + N, D) tokens with positional embeddings, class token first."""
        height, width = self.patch_embed.frame_grid_size
        # A copy, not a view: torch's module tracker (used by FlopCounterMode) cannot hook a view of
        # a parameter made under no_grad when it is passed to a submodule.
        spatial = self.pos_embed[:, 1:].reshape(1, height, width, -1).clone()
        if isinstance(self.patch_embed, VideoDART):
            out = self.patch_embed(video, spatial, self.temporal_pos_embedding, return_details=True)
            tokens = out.tokens + out.pos_embed
        else:
            tokens = self.patch_embed(video) + video_pos_grid(spatial, self.temporal_pos_embedding).flatten(1, 2)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, tokens], dim=1))

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) → (B, 1 + N, D) normalised features."""
        return super().forward(self.embed(video))

    def class_token_index(self, length: int) -> int:
        """The class token comes first."""
        return 0

    def no_grid_reason(self) -> str:
        """Why a clip's tokens make no (B, D, h, w) maps (``forward_intermediates``)."""
        if isinstance(self.patch_embed, VideoDART):
            return DART_HAS_NO_GRID
        return ("a clip's tokens form a frame-major T x h x w grid: use output_fmt='NLC' and reshape the (B, N, D) "
                "tokens to (B, T, h, w, D)")

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, 1 + N, D) → (B, num_classes) logits from the class token."""
        pooled = features[:, 0]
        return pooled if pre_logits else self.head(self.head_drop(pooled))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def load_pretrained(self, path) -> None:
        """timm's ``custom_load`` hook: a VideoMamba-release or own video checkpoint (local file)."""
        from .checkpoint import load_video_checkpoint

        load_video_checkpoint(self, path)


def video_dart_layer(num_tokens: int | None, num_rows: int | None, scorer: nn.Module | None,
                     scorer_backbone: str, scorer_weights, scorer_batch_stats: bool, scorer_stage: int | None = None,
                     scorer_trainable: bool = False, scorer_contrast: float = 1.0,
                     scorer_appearance_gate: float = 0.5) -> Callable[..., VideoDART]:
    """An ``embed_layer`` factory for :class:`VideoMamba` that builds :class:`VideoDART` and its scorer
    (``scorer_stage``: backbone slice end / feature index; ``scorer_trainable``: train the backbone too;
    ``scorer_contrast``, ``scorer_appearance_gate``: see :class:`dart_video.scorer.TemporalDifferenceScorer`)."""

    def build(num_frames: int, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> VideoDART:
        grid = (img_size // patch_size, img_size // patch_size)
        net = scorer or build_temporal_scorer(num_frames, grid, scorer_backbone, weights=scorer_weights,
                                              stage=scorer_stage, batch_stats=scorer_batch_stats,
                                              freeze_backbone=not scorer_trainable, contrast=scorer_contrast,
                                              appearance_gate=scorer_appearance_gate)
        return VideoDART(num_frames, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                         embed_dim=embed_dim, num_tokens=num_tokens, num_rows=num_rows, scorer=net)

    return build


def create_videomamba(variant: str, size: str, dart: bool, pretrained: bool = False, **kwargs) -> VideoMamba:
    """Build a VideoMamba (``dart=False``) or VideoMamba + DART model; see the module docstring."""
    if dart:
        kwargs["embed_layer"] = video_dart_layer(
            num_tokens=kwargs.pop("num_tokens", None),
            num_rows=kwargs.pop("num_rows", None),
            scorer=kwargs.pop("scorer", None),
            scorer_backbone=kwargs.pop("scorer_backbone", "mobilenet_v3_small"),
            scorer_weights=kwargs.pop("scorer_weights", None),
            scorer_batch_stats=kwargs.pop("scorer_batch_stats", False),
            scorer_stage=kwargs.pop("scorer_stage", None),
            scorer_trainable=kwargs.pop("scorer_trainable", False),
            scorer_contrast=kwargs.pop("scorer_contrast", 1.0),
            scorer_appearance_gate=kwargs.pop("scorer_appearance_gate", 0.5),
        )
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and overlay.get("file"):  # timm drops custom_load for overlay files unless set explicitly
        kwargs["pretrained_cfg_overlay"] = dict(overlay, custom_load=overlay.get("custom_load", True))
    model_args = dict(img_size=224, patch_size=16, **SIZES[size])
    return build_model_with_cfg(VideoMamba, variant, pretrained, **dict(model_args, **kwargs))


VARIANTS = {
    f"videomamba_{size}{'_dart' if dart else ''}_patch16_224": (size, dart) for size in SIZES for dart in (False, True)
}
default_cfgs = generate_default_cfgs({
    name: dict(num_classes=174, input_size=(3, 224, 224), pool_size=None, crop_pct=1.0, interpolation="bilinear",
               fixed_input_size=True, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
               first_conv="patch_embed.proj", classifier="head", custom_load=True, license="apache-2.0")
    for name in VARIANTS
})


def _register(name: str, size: str, dart: bool) -> None:
    def entrypoint(pretrained: bool = False, **kwargs) -> VideoMamba:
        return create_videomamba(name, size, dart, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"VideoMamba-{size.capitalize()}{' + DART' if dart else ''}, 224 frames, 8 frames by default."
    register_model(entrypoint)


for _name, (_size, _dart) in VARIANTS.items():
    _register(_name, _size, _dart)
