"""The input pipeline settings a model was built for."""

from __future__ import annotations

import torch.nn as nn
from timm.data import resolve_data_config


def built_data_config(model: nn.Module) -> dict:
    """timm's data config for ``model`` (mean, std, interpolation, crop), with ``input_size`` the
    (C, H, W) its patch embedding was built for: timm's resolved config reports the pretrained
    config's size (448 for ``deit_tiny_dart_patch16_448``) even for a model built with
    ``img_size=224``, which a strict DART tokenizer then refuses."""
    config = resolve_data_config({}, model=model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        config["input_size"] = (config["input_size"][0], int(height), int(width))
    return config
