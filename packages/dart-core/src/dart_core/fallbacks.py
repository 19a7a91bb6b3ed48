"""Counting the samples whose scores could not be partitioned.

With ``on_invalid="uniform"`` (the default) a sample whose scores are non-finite, negative or all
zero is tokenised on a uniform grid instead (:func:`dart_core.partition.score_density`), and the
model trains on. A diverging scorer would go unnoticed, so the tokenizers count such samples in a
non-persistent int64 buffer named ``score_fallbacks``: on the module's device, with no host sync,
and under ``torch.compile`` like any buffer update. A trainer reads and clears the counts at its
log interval (:func:`take_fallback_count`); under DDP the counters must not be broadcast from
rank 0 (:func:`dart_core.training.wrap_ddp` leaves them out).
"""

from __future__ import annotations

import torch
from torch import nn

from .partition import usable_scores

FALLBACK_COUNTER = "score_fallbacks"


def add_fallback_counter(module: nn.Module, device: torch.device | str | None = None) -> None:
    """Give ``module`` a zero ``score_fallbacks`` buffer (int64 scalar on ``device``, not saved in
    state dicts). A module built on the meta device and materialised with ``to_empty`` must
    zero it again: timm's ``init_non_persistent_buffers`` convention, see :func:`zero_fallback_counter`."""
    module.register_buffer(FALLBACK_COUNTER, torch.zeros((), dtype=torch.int64, device=device), persistent=False)


def zero_fallback_counter(module: nn.Module) -> None:
    """Set ``module.score_fallbacks`` to zero (its ``init_non_persistent_buffers``)."""
    getattr(module, FALLBACK_COUNTER).zero_()


def count_fallbacks(module: nn.Module, scores: torch.Tensor) -> None:
    """Add the number of samples of ``scores`` (B, h, w) that cannot be partitioned to
    ``module.score_fallbacks``."""
    getattr(module, FALLBACK_COUNTER).add_((~usable_scores(scores.detach())).sum())


def fallback_counters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``score_fallbacks`` buffers in ``model``, by their qualified names."""
    return {
        name: buffer
        for name, buffer in model.named_buffers()
        if name.rpartition(".")[2] == FALLBACK_COUNTER
    }


def take_fallback_count(model: nn.Module) -> torch.Tensor | None:
    """The total of ``model``'s ``score_fallbacks`` counters (a 0-d int64 tensor on their device),
    which are then reset to zero; None when the model has none."""
    counters = list(fallback_counters(model).values())
    if not counters:
        return None
    total = torch.stack([counter.to(counters[0].device) for counter in counters]).sum()
    for counter in counters:
        counter.zero_()
    return total
