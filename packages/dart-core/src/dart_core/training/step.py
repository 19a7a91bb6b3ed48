"""The optimizer update shared by the training loops (image pretraining, video)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def optimizer_update(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    parameters: Iterable[torch.nn.Parameter],
    clip_grad: float | None = None,
) -> None:
    """Apply the accumulated gradients: unscale, clip the global norm (if ``clip_grad``), step
    through the (possibly disabled) scaler, update it, and clear the gradients."""
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
