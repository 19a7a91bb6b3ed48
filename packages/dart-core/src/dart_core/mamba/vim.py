"""Vision Mamba (Vim) with a middle class token, with a fixed patch grid or DART, registered with timm.

Registered names (``timm.create_model(name)`` after ``import dart_core.mamba``):

* ``vim_tiny_patch16_224``, ``vim_small_patch16_224``: Vim v2 (bidirectional, branches averaged,
  middle class token, absolute positional table), the layout of the Vim release
  (``vim_*_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2``): its
  checkpoints load unchanged.
* ``vim_tiny_dart_patch16_224``, ``vim_small_dart_patch16_224``: the same with the DART tokenizer
  (published score networks: MobileNetV3-Small / -Large with the v2 head). ``num_tokens=`` sets
  the budget; ``scorer=`` / ``scorer_backbone=`` / ``scorer_version=`` / ``scorer_weights=`` /
  ``scorer_batch_stats=`` / ``sample_scale=`` as for the DeiT + DART models.

The class token sits in the middle of the token sequence (after ``N // 2`` patch tokens) and
takes the positional-table entry at index ``h·w // 2``, as in the release; the other entries form
the h×w grid that DART resamples for its tokens. Local checkpoints load with
``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from timm.layers import PatchEmbed, resample_abs_pos_embed_nhwc, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..checkpoint import PathLike, load_published_checkpoint
from ..models.deit import embed_layer_from_kwargs, local_file_overlay
from ..models.intermediates import DART_HAS_NO_GRID
from ..pos_embed import split_prefix_pos_embed
from ..tokenizer import DART
from .encoder import MambaEncoder
from .intermediates import MambaIntermediates

SIZES = {"tiny": dict(embed_dim=192, depth=24), "small": dict(embed_dim=384, depth=24)}
DEFAULT_SCORER = {"tiny": "mobilenet_v3_small", "small": "mobilenet_v3_large"}


class VisionMamba(MambaIntermediates, MambaEncoder):
    """Vim: patch tokens with a middle class token through bidirectional Mamba blocks.

    Args:
        img_size, patch_size, in_chans: input geometry.
        num_classes: classifier outputs (0: no head).
        embed_dim, depth: D and the number of blocks.
        drop_rate: dropout after the positional embedding.
        drop_path_rate: stochastic depth.
        embed_layer: builds the tokenizer from ``img_size=, patch_size=, in_chans=, embed_dim=``
            (timm's ``PatchEmbed`` by default; a :class:`DART` factory for the DART models).
        mixer_kwargs: passed to :class:`~dart_core.mamba.mixer.BiMamba` (Vim v2 averages the
            two directions: ``divide_out=True`` by default).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 24,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        embed_layer: Callable[..., nn.Module] = PatchEmbed,
        **mixer_kwargs,
    ):
        mixer_kwargs.setdefault("divide_out", True)
        super().__init__(embed_dim, depth, drop_path_rate=drop_path_rate, **mixer_kwargs)
        self.num_classes, self.num_features, self.embed_dim = num_classes, embed_dim, embed_dim
        self.num_prefix_tokens = 1
        self.patch_embed = embed_layer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        grid_cells = self.patch_embed.grid_size[0] * self.patch_embed.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_cells + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def class_table_index(self) -> int:
        """Index of the class token's entry in ``pos_embed`` (the middle of the h·w grid)."""
        return self.class_token_index(self.pos_embed.shape[1])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, N + 1, D) tokens with positional embeddings, class token at N // 2."""
        cls_pos, grid = split_prefix_pos_embed(self.pos_embed, self.patch_embed.grid_size, (self.class_table_index(),))
        if isinstance(self.patch_embed, DART):
            out = self.patch_embed(images, pos_grid=grid, return_details=True)
            tokens = out.tokens + out.pos_embed
        else:
            tokens = self.patch_embed(images) + grid.flatten(1, 2)
        middle = tokens.shape[1] // 2
        cls = (self.cls_token + cls_pos).expand(tokens.shape[0], -1, -1)
        return self.pos_drop(torch.cat([tokens[:, :middle], cls, tokens[:, middle:]], dim=1))

    def set_input_size(self, img_size: int | tuple[int, int] | None = None, patch_size=None) -> None:
        """timm's ``model.set_input_size``: a new input size moves the tokenizer's grid and resamples
        the positional table's grid to it (bicubic, as timm's ViTs do); the class token's entry
        keeps its value and moves to the new grid's middle. A DART tokenizer keeps its token budget.
        """
        old_grid = tuple(self.patch_embed.grid_size)
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        cls_pos, grid = split_prefix_pos_embed(self.pos_embed, old_grid, (self.class_table_index(),))
        grid = resample_abs_pos_embed_nhwc(grid, list(self.patch_embed.grid_size)).flatten(1, 2)
        middle = grid.shape[1] // 2
        table = torch.cat([grid[:, :middle], cls_pos, grid[:, middle:]], dim=1)
        self.pos_embed = nn.Parameter(table.detach(), requires_grad=self.pos_embed.requires_grad)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, N + 1, D) normalised token features (class token at N // 2)."""
        return super().forward(self.embed(images))

    def class_token_index(self, length: int) -> int:
        """The middle class token's index among ``length`` = N + 1 tokens."""
        return (length - 1) // 2

    def no_grid_reason(self) -> str | None:
        """Why the tokens make no (B, D, h, w) maps: DART's lie on no grid; None for patches."""
        return DART_HAS_NO_GRID if isinstance(self.patch_embed, DART) else None

    def token_maps(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) patch tokens in row-major order → (B, D, h, w) maps."""
        return tokens.unflatten(1, tuple(self.patch_embed.grid_size)).permute(0, 3, 1, 2).contiguous()

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, N + 1, D) features → (B, num_classes) logits from the middle class token."""
        pooled = features[:, self.class_token_index(features.shape[1])]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def load_pretrained(self, path: PathLike) -> None:
        """timm's ``custom_load`` hook: a Vim-release, DART-release or own checkpoint from a local file."""
        load_published_checkpoint(self, path)


def _cfg(input_size: int) -> dict:
    return dict(
        num_classes=1000, input_size=(3, input_size, input_size), pool_size=None, crop_pct=0.875,
        interpolation="bicubic", fixed_input_size=True, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv="patch_embed.proj", classifier="head", custom_load=True, license="apache-2.0",
    )


def create_vim(variant: str, size: str, dart: bool, pretrained: bool = False, **kwargs) -> VisionMamba:
    """Build a Vim (``dart=False``) or Vim + DART model; see the module docstring for kwargs."""
    if dart:
        kwargs["embed_layer"] = embed_layer_from_kwargs(kwargs, DEFAULT_SCORER[size], "v2", sample_scale=1)
    model_args = dict(img_size=224, patch_size=16, **SIZES[size])
    return build_model_with_cfg(VisionMamba, variant, pretrained, **dict(model_args, **local_file_overlay(kwargs)))


VARIANTS = {
    f"vim_{size}{'_dart' if dart else ''}_patch16_224": (size, dart) for size in SIZES for dart in (False, True)
}
default_cfgs = generate_default_cfgs({name: _cfg(224) for name in VARIANTS})


def _register(name: str, size: str, dart: bool) -> None:
    def entrypoint(pretrained: bool = False, **kwargs) -> VisionMamba:
        return create_vim(name, size, dart, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"Vim-{size.capitalize()}{' + DART' if dart else ''}, 224 input, middle class token."
    register_model(entrypoint)


for _name, (_size, _dart) in VARIANTS.items():
    _register(_name, _size, _dart)
