"""Loading VideoMamba-layout checkpoints, inflating image checkpoints, starting DART from VideoMamba.

All files are read weights-only through :func:`dart_core.checkpoint.read_state_dict` and loaded
with :func:`dart_core.checkpoint.load_exact` (one clear error listing every mismatch).

* Video checkpoints (VideoMamba release or ours) load as they are. The release's
  ``patch_embed.proj.weight`` is a Conv3d weight (D, C, 1, P, P); a DART model's projection is the
  same map as a (D, C, P, P) Conv2d weight, so the time axis is squeezed (and a VideoMamba
  checkpoint without a score network starts a DART model: the scorer keeps its own weights).
* Image checkpoints (``image=True``): the projection is inflated to the Conv3d (``center=True``:
  the kernel on the middle time step, zeros elsewhere; else the kernel / t on every step), the
  temporal embedding keeps the model's initialisation and a classifier of another size is
  replaced by the model's. VideoMamba image checkpoints put the class token first, like the
  video model; Vim checkpoints (``source="vim"``) put it in the middle of the positional table
  and average the two Mamba directions, so their class entry is moved to the front and their
  ``out_proj`` weights are halved (VideoMamba sums the directions: out(a + b)/2 = (out/2)(a + b)).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn as nn
from dart_core.checkpoint import PathLike, convert_published_state_dict, load_exact, read_state_dict

PROJ = "patch_embed.proj.weight"


def fit_patch_weight(weight: torch.Tensor, shape: torch.Size, center: bool = True) -> torch.Tensor:
    """Convert a patch projection between Conv2d (D, C, P, P) and Conv3d (D, C, t, P, P) layouts."""
    if weight.dim() == 4 and len(shape) == 5:
        time = shape[2]
        if center:
            inflated = weight.new_zeros(*weight.shape[:2], time, *weight.shape[2:])
            inflated[:, :, time // 2] = weight
            return inflated
        return weight.unsqueeze(2).repeat(1, 1, time, 1, 1) / time
    if weight.dim() == 5 and len(shape) == 4:
        if weight.shape[2] != 1:
            raise ValueError(
                f"{PROJ} has a tubelet of {weight.shape[2]} frames; the DART tokenizer embeds single frames "
                "(use a checkpoint trained with kernel_size=1)"
            )
        return weight.squeeze(2)
    return weight


def vim_to_videomamba(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Vim image layout (middle class entry, averaged directions) → VideoMamba's (first, summed)."""
    converted = dict(state_dict)
    table = converted["pos_embed"]
    middle = (table.shape[1] - 1) // 2
    converted["pos_embed"] = torch.cat([table[:, middle:middle + 1], table[:, :middle], table[:, middle + 1:]], 1)
    for key, value in state_dict.items():
        if re.fullmatch(r"layers\.\d+\.mixer\.out_proj\.(weight|bias)", key):
            converted[key] = value / 2
    return converted


def adapt_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: nn.Module,
    image: bool = False,
    center: bool = True,
    source: Literal["videomamba", "vim"] = "videomamba",
) -> dict[str, torch.Tensor]:
    """Fit a checkpoint's tensors to a :class:`dart_video.models.VideoMamba` (see the module docstring)."""
    if source not in ("videomamba", "vim"):
        raise ValueError(f"source must be 'videomamba' or 'vim', got {source!r}")
    converted = convert_published_state_dict(state_dict)  # the DART release nests its score network deeper
    if source == "vim":
        converted = vim_to_videomamba(converted)
    own = model.state_dict()
    if PROJ in converted and PROJ in own:
        converted[PROJ] = fit_patch_weight(converted[PROJ], own[PROJ].shape, center)
    if not any(key.startswith("patch_embed.scorer.") for key in converted):
        converted.update({k: v for k, v in own.items() if k.startswith("patch_embed.scorer.")})
    if image:
        converted.setdefault("temporal_pos_embedding", own["temporal_pos_embedding"])
        for key in ("head.weight", "head.bias"):
            if key in own and (key not in converted or converted[key].shape != own[key].shape):
                converted[key] = own[key]
    return converted


def load_video_checkpoint(
    model: nn.Module,
    path: PathLike,
    image: bool = False,
    center: bool = True,
    source: Literal["videomamba", "vim"] = "videomamba",
) -> None:
    """Load a local checkpoint into a VideoMamba (+ DART) model, or raise
    :class:`dart_core.CheckpointMismatchError` listing what does not fit."""
    state_dict = adapt_state_dict(read_state_dict(path), model, image=image, center=center, source=source)
    load_exact(model, state_dict, source=str(path))
