"""DeiT + DART: timm's VisionTransformer with the DART tokenizer, registered with timm.

Registered names (``timm.create_model(name)`` after ``import dart_core``):
``deit_{tiny,small,base}_dart_patch16_448`` (196 tokens) and
``deit_{tiny,small,base}_dart{121,144,288,392}_patch16_448`` for the other published budgets.
All take a 448 input, keep DeiT's 14×14 positional table, and accept ``num_tokens=``,
``scorer=`` (a module) or ``scorer_backbone=`` / ``scorer_version=`` / ``scorer_weights=`` /
``scorer_batch_stats=`` to build one, and ``strict_img_size=False`` for inputs of other sizes.
Published checkpoints load with ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)``
(through :func:`dart_core.checkpoint.load_published_checkpoint`; with another ``num_classes``
the checkpoint's classifier is dropped, as timm does).
"""

from __future__ import annotations

from collections.abc import Container
from functools import partial

import torch
import torch.nn as nn
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer
from torch.utils.checkpoint import checkpoint

from ..checkpoint import PathLike, load_published_checkpoint
from ..pos_embed import split_prefix_pos_embed
from ..scorers import build_scorer
from ..tokenizer import DART
from .intermediates import DART_HAS_NO_GRID, pack_intermediates, token_output_fmt

TOKEN_BUDGETS = (121, 144, 196, 288, 392)

# Published score networks: DeiT-Tiny scores with MobileNetV3-Small, DeiT-Small with -Large.
DEFAULT_SCORER = {"tiny": "mobilenet_v3_small", "small": "mobilenet_v3_large", "base": "mobilenet_v3_large"}
SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}


class DARTViTMixin:
    """Replaces a VisionTransformer's patch embedding + positional embedding with DART's.

    The positional table stays timm's ``pos_embed`` (prefix entries first unless
    ``no_embed_class``); its grid part is resampled per image for the DART tokens. timm's
    ``prune_intermediate_layers`` applies unchanged (it keeps the first blocks and drops the final
    norm and the head on request); :meth:`forward_intermediates` returns tokens, not maps.
    """

    def dart_prefix_index(self) -> tuple[int, ...]:
        return () if self.no_embed_class else tuple(range(self.num_prefix_tokens))

    def dart_embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → (B, prefix + N, D) tokens with positional embeddings."""
        batch = images.shape[0]
        prefix_pos, grid = (None, None)
        if self.pos_embed is not None:
            prefix_pos, grid = split_prefix_pos_embed(self.pos_embed, self.patch_embed.grid_size, self.dart_prefix_index())
        out = self.patch_embed(images, pos_grid=grid, return_details=True)
        tokens = out.tokens if out.pos_embed is None else out.tokens + out.pos_embed
        # timm's prefix order: class, distillation (DeiT distilled), register tokens.
        prefix = [
            token.expand(batch, -1, -1)
            for token in (self.cls_token, getattr(self, "dist_token", None), self.reg_token)
            if token is not None
        ]
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            if prefix_pos is not None and prefix_pos.shape[1]:
                prefix = prefix + prefix_pos
            tokens = torch.cat([prefix, tokens], dim=1)
        return self.pos_drop(tokens)

    def dart_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → the (B, prefix + N, D) tokens the first block sees."""
        return self.norm_pre(self.patch_drop(self.dart_embed(images)))

    def dart_blocks(
        self, x: torch.Tensor, take: Container[int] = (), depth: int | None = None,
        attn_mask: torch.Tensor | None = None, is_causal: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the first ``depth`` blocks (all by default) on (B, prefix + N, D) tokens; after
        ``set_grad_checkpointing()``, each block's activations are recomputed in the backward pass
        instead of kept (as timm's ViTs do).

        Returns:
            The last block's (B, prefix + N, D) output and the outputs of the blocks in ``take``.
        """
        masking = dict(attn_mask=attn_mask, is_causal=is_causal) if attn_mask is not None or is_causal else {}
        recompute = self.grad_checkpointing and not torch.jit.is_scripting()
        outputs = []
        for i, block in enumerate(self.blocks[:depth]):
            x = checkpoint(block, x, use_reentrant=False, **masking) if recompute else block(x, **masking)
            if i in take:
                outputs.append(x)
        return x, outputs

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        """(B, C, H, W) images → (B, prefix + N, D) normalised token features."""
        x, _ = self.dart_blocks(self.dart_tokens(x), attn_mask=attn_mask, is_causal=is_causal)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NLC",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ):
        """timm's ``forward_intermediates`` for DART tokens: the output of chosen blocks.

        An intermediate is block i's output with the prefix tokens (class, distillation,
        register) split off: (B, N, D) for N DART tokens, in the tokenizer's order. The tokens lie
        on no patch grid, so only ``output_fmt='NLC'`` is supported; the partition from
        ``patch_embed(x, return_details=True)`` maps token j to its image region.

        Args:
            x: (B, C, H, W) images.
            indices: the last n blocks (int), the blocks at these indices (list; negative counts
                from the end) or all (None), as :func:`timm.models._features.feature_take_indices`.
            return_prefix_tokens: each intermediate becomes ((B, N, D) tokens, (B, prefix, D)
                prefix tokens) (a model without prefix tokens returns the tokens alone).
            norm: apply the final norm to the intermediates.
            stop_early: run no block after the last one asked for (the final features are then
                the final norm of that block's output).
            output_fmt: ``'NLC'``.
            intermediates_only: return the intermediates alone.
            output_dict: return ``{'image_intermediates': [...], 'image_intermediates_prefix':
                [...] (with return_prefix_tokens), 'image_features': ...}`` as timm does.
            attn_mask, is_causal: passed to every block, as in :meth:`forward_features`.

        Returns:
            ((B, prefix + N, D) final features, [intermediates]), or the list alone with
            ``intermediates_only``, or the dict with ``output_dict``.

        Raises:
            ValueError: ``output_fmt`` is not ``'NLC'`` (``'NCHW'`` needs a patch grid).
        """
        token_output_fmt(output_fmt, DART_HAS_NO_GRID)
        take, last = feature_take_indices(len(self.blocks), indices)
        x, outputs = self.dart_blocks(self.dart_tokens(x), take, last + 1 if stop_early else None, attn_mask, is_causal)
        prefix = self.num_prefix_tokens
        intermediates = [(y[:, prefix:], y[:, :prefix]) for y in (map(self.norm, outputs) if norm else outputs)]
        return pack_intermediates(
            intermediates, None if intermediates_only else self.norm(x),
            return_prefix_tokens and prefix > 0, output_dict,
        )


class DARTVisionTransformer(DARTViTMixin, VisionTransformer):
    """timm's VisionTransformer with a :class:`DART` tokenizer."""

    def load_pretrained(self, path: PathLike) -> None:
        """timm's ``custom_load`` hook: a published ``darvit-*.pth`` (or one of ours) from a local file."""
        load_published_checkpoint(self, path)


def default_scorer(
    in_chans: int,
    grid_size: tuple[int, int],
    backbone: str,
    version: str,
    weights: PathLike | None = None,
    batch_stats: bool = False,
) -> nn.Module:
    """The scorer built when none is given (:func:`dart_core.build_scorer`), for ``in_chans`` input.

    Raises:
        ValueError: ``in_chans`` is not 3: the scorer backbones are ImageNet RGB networks.
    """
    if in_chans != 3:
        raise ValueError(
            f"in_chans={in_chans}, but the default scorer ({backbone}) is an ImageNet RGB network that takes "
            "3-channel images: pass scorer= a module mapping (B, C, H, W) images to (B, h, w) scores, or "
            "feed 3-channel images"
        )
    return build_scorer(backbone, version, grid_size=grid_size, weights=weights, batch_stats=batch_stats)


def dart_embed_layer(
    num_tokens: int | None,
    num_rows: int | None,
    sample_scale: int,
    scorer: nn.Module | None,
    scorer_backbone: str,
    scorer_version: str,
    scorer_weights: PathLike | None,
    scorer_batch_stats: bool,
    on_invalid: str = "uniform",
    strict_img_size: bool = True,
):
    """An ``embed_layer`` factory for timm's VisionTransformer that builds DART with its scorer."""

    def build(img_size=224, patch_size=16, in_chans=3, **kwargs) -> DART:
        grid = tuple(side // (patch_size * sample_scale) for side in to_2tuple(img_size))
        net = scorer or default_scorer(
            in_chans, grid, scorer_backbone, scorer_version, weights=scorer_weights, batch_stats=scorer_batch_stats
        )
        kwargs.setdefault("strict_img_size", strict_img_size)
        return DART(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_tokens=num_tokens,
            num_rows=num_rows,
            sample_scale=sample_scale,
            scorer=net,
            on_invalid=on_invalid,
            **kwargs,
        )

    return build


def embed_layer_from_kwargs(kwargs: dict, scorer_backbone: str, scorer_version: str, sample_scale: int):
    """Pop the DART options out of a model's keyword arguments and build its ``embed_layer``
    (the arguments give the model family's defaults).

    Raises:
        ValueError: ``features_only=True``: timm's feature maps need a fixed patch grid.
    """
    if kwargs.get("features_only"):
        raise ValueError(
            "features_only=True needs a fixed patch grid, and DART's content-adaptive tokens have none: build the "
            "model without it and use forward_features (B, prefix + N, D token features), with "
            "patch_embed(images, return_details=True).partition to map tokens to image regions"
        )
    return dart_embed_layer(
        num_tokens=kwargs.pop("num_tokens", None),
        num_rows=kwargs.pop("num_rows", None),
        sample_scale=kwargs.pop("sample_scale", sample_scale),
        scorer=kwargs.pop("scorer", None),
        scorer_backbone=kwargs.pop("scorer_backbone", scorer_backbone),
        scorer_version=kwargs.pop("scorer_version", scorer_version),
        scorer_weights=kwargs.pop("scorer_weights", None),
        scorer_batch_stats=kwargs.pop("scorer_batch_stats", False),
        on_invalid=kwargs.pop("on_invalid", "uniform"),
        strict_img_size=kwargs.pop("strict_img_size", True),
    )


def local_file_overlay(kwargs: dict) -> dict:
    """Keep our loader (weights-only, allow-listed, converts the published layout) for
    ``pretrained_cfg_overlay=dict(file=...)``: timm resets ``custom_load`` for overlay sources
    unless it is set explicitly."""
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and overlay.get("file"):
        kwargs["pretrained_cfg_overlay"] = dict(overlay, custom_load=overlay.get("custom_load", True))
    return kwargs


def create_deit_dart(variant: str, size: str, pretrained: bool = False, **kwargs) -> DARTVisionTransformer:
    """Build a DeiT + DART model (see the module docstring for the keyword arguments)."""
    embed_layer = embed_layer_from_kwargs(kwargs, DEFAULT_SCORER[size], "v1", sample_scale=2)
    kwargs = local_file_overlay(kwargs)
    model_args = dict(
        img_size=448, patch_size=16, mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        embed_layer=embed_layer, **SIZES[size],
    )
    return build_model_with_cfg(
        DARTVisionTransformer, variant, pretrained, **dict(model_args, **kwargs)
    )


def _default_cfg(**overrides) -> dict:
    cfg = dict(
        num_classes=1000, input_size=(3, 448, 448), pool_size=None, crop_pct=0.875, interpolation="bicubic",
        fixed_input_size=True, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv="patch_embed.proj", classifier="head", custom_load=True, license="mit",
    )
    cfg.update(overrides)
    return cfg


def model_name(size: str, budget: int) -> str:
    """The registered name: the published 196-token budget carries no number."""
    return f"deit_{size}_dart_patch16_448" if budget == 196 else f"deit_{size}_dart{budget}_patch16_448"


def _register(size: str, budget: int) -> None:
    name = model_name(size, budget)

    def entrypoint(pretrained: bool = False, **kwargs) -> DARTVisionTransformer:
        kwargs.setdefault("num_tokens", budget)
        return create_deit_dart(name, size, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"DeiT-{size.capitalize()} + DART, {budget} tokens, 448 input."
    register_model(entrypoint)


# timm's register_model reads the pretrained configs from this module's ``default_cfgs``.
default_cfgs = generate_default_cfgs(
    {model_name(size, budget): _default_cfg() for size in SIZES for budget in TOKEN_BUDGETS}
)
for _size in SIZES:
    for _budget in TOKEN_BUDGETS:
        _register(_size, _budget)
