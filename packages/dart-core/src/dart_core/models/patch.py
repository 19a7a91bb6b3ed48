"""One call that swaps DART into a stock timm VisionTransformer, without forking timm."""

from __future__ import annotations

import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from ..scorers import build_scorer
from ..tokenizer import DART
from .deit import DARTViTMixin

_PATCHED_CLASSES: dict[type, type] = {}


def _dart_class(cls: type) -> type:
    """A subclass of ``cls`` with :class:`DARTViTMixin` in front (one per class, so it pickles)."""
    if issubclass(cls, DARTViTMixin):
        return cls
    if cls not in _PATCHED_CLASSES:
        _PATCHED_CLASSES[cls] = type(f"{cls.__name__}WithDART", (DARTViTMixin, cls), {})
    return _PATCHED_CLASSES[cls]


def patch_timm(
    model: VisionTransformer,
    num_tokens: int | None = None,
    num_rows: int | None = None,
    sample_scale: int = 1,
    scorer: nn.Module | None = None,
    scorer_backbone: str = "mobilenet_v3_small",
    scorer_version: str = "v1",
    scorer_weights=None,
) -> VisionTransformer:
    """Replace a timm ViT's patch embedding with DART, in place; returns the model.

    The projection weights, the positional table and the class/register tokens are kept, so a
    pretrained ViT starts from its own patch embedding (with uniform scores it computes exactly
    what it did before). ``sample_scale=2`` feeds the model twice the input size while the grid,
    token budget and positional table stay.

    Args:
        model: a timm ``VisionTransformer`` (or subclass) with a fixed-size patch embedding.
        num_tokens: the token budget (default: the grid's cell count).
        num_rows: R (default round(sqrt(N))).
        sample_scale: input size / (grid × P).
        scorer: a scorer module; by default one is built from ``scorer_backbone`` /
            ``scorer_version`` / ``scorer_weights`` (see :func:`dart_core.build_scorer`).
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"patch_timm expects a timm VisionTransformer, got {type(model).__name__}")
    old = model.patch_embed
    if getattr(model, "dynamic_img_size", False):
        raise ValueError("patch_timm needs a model built with dynamic_img_size=False")
    grid = tuple(old.grid_size)
    patch = old.patch_size[0]
    img_size = tuple(g * patch * sample_scale for g in grid)
    scorer = scorer or build_scorer(scorer_backbone, scorer_version, grid_size=grid, weights=scorer_weights)
    new = DART(
        img_size=img_size,
        patch_size=patch,
        in_chans=old.proj.in_channels,
        embed_dim=old.proj.out_channels,
        bias=old.proj.bias is not None,
        num_tokens=num_tokens,
        num_rows=num_rows,
        sample_scale=sample_scale,
        scorer=scorer,
    )
    new.proj.load_state_dict(old.proj.state_dict())
    new.norm = old.norm
    new.to(old.proj.weight.device)
    model.patch_embed = new
    model.__class__ = _dart_class(type(model))
    return model
