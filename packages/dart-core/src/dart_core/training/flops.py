"""Count a model's FLOPs with ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode counts matrix multiplications and convolutions (2 FLOPs per multiply-add); it
does not see the CPU fused attention kernel, so timm's fused attention must be off. The helper
switches every module's ``fused_attn`` flag off for the count and restores it afterwards, so it
is right whatever ``TIMM_FUSED_ATTN`` says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Set ``fused_attn = False`` on every submodule that has the flag; restore it after."""
    saved = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    for m, _ in saved:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, flag in saved:
            m.fused_attn = flag


@torch.no_grad()
def count_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """Total FLOPs of ``model(inputs)`` in eval mode (the model's train/eval mode is restored).

    Args:
        model: any module; all of it is counted (e.g. a DART model's scorer too).
        inputs: (B, C, H, W) a batch; divide by B for FLOPs per image.
    """
    was_training = model.training
    model.eval()
    try:
        with unfused_attention(model), FlopCounterMode(display=False) as counter:
            model(inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not), each shared tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
