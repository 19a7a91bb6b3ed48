"""The optimizer update shared by the training loops (image pretraining, video), and resuming an optimizer."""

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


def resume_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer state (the moments) but keep this run's group settings.

    The learning rates, weight decays and layer-decay scales come from the current config, so a
    resume with a longer ``--epochs`` or another ``--lr`` follows the new schedule (timm's
    schedulers are pure functions of the step: the caller builds one from the config and does not
    load the saved one). Same settings, same run: an exact resume is unchanged.

    Raises:
        ValueError: the checkpoint's parameter groups do not match the optimizer's (from
            ``Optimizer.load_state_dict``).
    """
    settings = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)


def resume_scaler(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Load a checkpoint's grad-scaler state into this run's scaler.

    A run without float16 (bfloat16, float32 or the CPU) saves a disabled scaler's empty state;
    resumed with ``--amp-dtype float16`` the scaler then starts from its initial scale, as a
    fresh float16 run would (``GradScaler.load_state_dict`` refuses an empty state). A disabled
    scaler ignores whatever it is given.
    """
    if state:
        scaler.load_state_dict(state)
