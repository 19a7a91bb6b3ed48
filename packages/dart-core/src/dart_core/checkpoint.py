"""Reading model weights safely, and converting the published DART release's checkpoints.

Files from users never run code: everything is read through
:func:`dart_core.training.load_checkpoint` (``torch.load(weights_only=True)`` with the project's
allow-list, which admits only the ``argparse.Namespace`` DeiT-style scripts store under "args").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from .training.checkpoint import CheckpointError, load_checkpoint

PathLike = str | os.PathLike

# Keys under which training scripts nest the weights, in order of preference (the live model
# before its EMA: the published checkpoints were evaluated from "model").
STATE_DICT_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema")


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint file (see :func:`state_dict_in`)."""
    return state_dict_in(load_checkpoint(path), path)


def state_dict_in(checkpoint: Any, path: PathLike) -> dict[str, torch.Tensor]:
    """The model weights in a loaded checkpoint (unwrapping ``model`` / ``state_dict`` / EMA keys and
    a ``module.`` prefix left by DistributedDataParallel); ``path`` names it in errors."""
    if isinstance(checkpoint, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


class CheckpointMismatchError(RuntimeError):
    """A converted checkpoint does not fit the model: lists what is missing and unexpected."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str], mismatched: list[str]):
        lines = [f"checkpoint {source} does not fit the model"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" …" if len(keys) > 20 else ""))
        lines.append("  Check the model name (size, token budget, scorer backbone and head version) matches the file.")
        super().__init__("\n".join(lines))
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched


def checkpoint_problem(error: CheckpointError | CheckpointMismatchError, program: str, model_options: str) -> str:
    """One line about a checkpoint for the user of a command line, who cannot pass
    ``extra_safe_globals`` and builds the model with ``model_options`` (e.g. "--model and
    --num-tokens"), not with the library's arguments."""
    if isinstance(error, CheckpointMismatchError):
        findings = [line.strip() for line in str(error).splitlines()[:-1]]  # the last line is library advice
        return "; ".join([*findings, f"check that {model_options} describe the model the file holds"])
    if error.refused is not None:
        what = ", ".join(error.refused) or "a Python object outside the allow-list"
        return (f"checkpoint {error.path!r} holds {what}; {program} loads checkpoints weights-only and will not "
                "unpickle it. Re-save it with plain tensors and containers, e.g. "
                "torch.save({'model': model.state_dict()}, PATH)")
    return " ".join(str(error).split())


def load_exact(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """``load_state_dict`` that reports every missing, unexpected or misshapen key in one clear error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if state_dict[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    model.load_state_dict(state_dict)


# The published tokenizer nests its score network three deep (MobileNet*Pred → ScorePredNet →
# ScorePredNetV1/V2); its MLP is an nn.Sequential (Linear, GELU, Linear).
_PUBLISHED_RENAMES = (
    ("patch_embed.spn.spn.spn.features.", "patch_embed.scorer.backbone."),
    ("patch_embed.spn.spn.spn.mlp.net.0.", "patch_embed.scorer.head.mlp.fc1."),
    ("patch_embed.spn.spn.spn.mlp.net.2.", "patch_embed.scorer.head.mlp.fc2."),
)


def convert_published_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the keys of the original release's checkpoints (``darvit-*.pth`` from ``models_deit.py``,
    ``darvim-*.pth``; score network from ``dart/spn.py``) onto our DART models. Transformer keys
    already follow timm's / Vim's layout; the score network moves from ``patch_embed.spn.spn.spn``
    to ``patch_embed.scorer``. Keys already in our layout pass through unchanged."""
    converted = {}
    for key, value in state_dict.items():
        for old, new in _PUBLISHED_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        converted[key] = value
    return converted


def classifier_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The classifier modules timm's ``pretrained_cfg["classifier"]`` names (``"head"``, or
    ``("head", "head_dist")`` for distilled DeiT); none without a config."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def drop_resized_classifier(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give the model's own classifier in place of a checkpoint's that does not fit it.

    As timm does when ``num_classes`` differs from the checkpoint's: for each classifier of
    :func:`classifier_names` whose checkpoint tensors are absent from the model (``num_classes=0``)
    or shaped otherwise, the checkpoint's ``{name}.*`` entries are replaced by the model's own
    (fresh) ones. Everything else is left for a strict load to check.
    """
    own = model.state_dict()
    state = dict(state_dict)
    for name in classifier_names(model):
        theirs = [key for key in state if key.startswith(f"{name}.")]
        if any(key not in own or own[key].shape != state[key].shape for key in theirs):
            for key in theirs:
                del state[key]
            state.update({key: value for key, value in own.items() if key.startswith(f"{name}.")})
    return state


def load_published_checkpoint(model: torch.nn.Module, path: PathLike) -> None:
    """Load a published ``darvit-*.pth`` / ``darvim-*.pth`` file (or one of ours) into a DART model,
    or raise :class:`CheckpointMismatchError` listing what does not fit. A classifier for another
    number of classes is dropped (:func:`drop_resized_classifier`); the rest must fit exactly."""
    state = convert_published_state_dict(read_state_dict(path))
    load_exact(model, drop_resized_classifier(model, state), source=str(path))
