"""One call that swaps DART into a stock timm VisionTransformer, without forking timm."""

from __future__ import annotations

import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from ..tokenizer import DART
from .deit import DARTViTMixin, default_scorer

_PATCHED_CLASSES: dict[type, type] = {}


class PatchedViT(DARTViTMixin):
    """Front of the classes :func:`patch_timm` makes. They are built at run time, so pickle cannot
    find them by name: a patched model pickles as (its stock class, its state) and is rebuilt
    through :func:`dart_class`."""

    dart_base: type

    def __reduce_ex__(self, protocol):
        return dart_instance, (self.dart_base,), self.__getstate__()


def dart_class(cls: type) -> type:
    """A subclass of ``cls`` with :class:`DARTViTMixin` in front (one per class)."""
    if issubclass(cls, DARTViTMixin):
        return cls
    if cls not in _PATCHED_CLASSES:
        _PATCHED_CLASSES[cls] = type(f"{cls.__name__}WithDART", (PatchedViT, cls), {"dart_base": cls})
    return _PATCHED_CLASSES[cls]


def dart_instance(base: type) -> nn.Module:
    """An empty instance of ``dart_class(base)``, for unpickling (the state follows)."""
    cls = dart_class(base)
    return cls.__new__(cls)


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
    what it did before). The new embedding (scorer included) takes the projection's dtype and
    device; the patched model pickles and deep-copies. ``sample_scale=2`` feeds the model twice
    the input size while the grid, token budget and positional table stay.

    Args:
        model: a timm ``VisionTransformer`` (or subclass) with a fixed-size patch embedding.
        num_tokens: the token budget (default: the grid's cell count).
        num_rows: R (default :func:`~dart_core.partition.default_num_rows` for the grid: h when
            N = h·w, round(sqrt(N)) on a square grid).
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
    scorer = scorer or default_scorer(old.proj.in_channels, grid, scorer_backbone, scorer_version, weights=scorer_weights)
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
    new.to(device=old.proj.weight.device, dtype=old.proj.weight.dtype)
    new.proj.load_state_dict(old.proj.state_dict())
    new.norm = old.norm
    model.patch_embed = new
    model.__class__ = dart_class(type(model))
    return model
