"""Tiny instances of the three DART model families (DeiT, Vim, VideoMamba) for whole-model tests."""

from __future__ import annotations

import dart_core.mamba  # noqa: F401  (registers the Vim models)
import dart_video  # noqa: F401  (registers the VideoMamba models)
import timm
import torch

# name → (create_model kwargs, input shape)
TINY_DART_MODELS = {
    "deit_tiny_dart_patch16_448": (dict(img_size=64, depth=1, num_tokens=16), (2, 3, 64, 64)),
    "vim_tiny_dart_patch16_224": (dict(img_size=64, depth=2, embed_dim=32, d_state=4, num_tokens=12), (2, 3, 64, 64)),
    "videomamba_tiny_dart_patch16_224": (dict(img_size=64, depth=2, embed_dim=32, num_frames=3), (2, 3, 3, 64, 64)),
}


def tiny_dart_model(name: str, dtype: torch.dtype = torch.float32, **overrides) -> tuple[torch.nn.Module, torch.Tensor]:
    """A seeded tiny model with 5 classes (``overrides``: other create_model kwargs), in training
    mode, and a random input batch of 2."""
    kwargs, shape = TINY_DART_MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **{**kwargs, **overrides}).train().to(dtype)
    return model, torch.rand(shape, dtype=dtype)
