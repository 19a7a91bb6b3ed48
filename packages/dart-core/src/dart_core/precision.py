"""Precision guards for DART's small geometric computations (positions, resampling weights)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch


def autocast_off(device: torch.device) -> AbstractContextManager:
    """A context with autocast disabled on ``device``'s type (a no-op where autocast does not
    exist, e.g. the meta device): matrix products inside it keep their operands' dtype instead of
    running in bf16/fp16, which would round positions and weights."""
    kind = device.type
    return torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind) else nullcontext()


def in_float32_at_least(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Decorate ``function(values, ...)``: bfloat16/float16 ``values`` are computed on in float32
    and the result is rounded once to their dtype; float32/float64 values pass straight through."""

    @functools.wraps(function)
    def wrapper(values: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        work = torch.promote_types(values.dtype, torch.float32)
        if work == values.dtype:
            return function(values, *args, **kwargs)
        return function(values.to(work), *args, **kwargs).to(values.dtype)

    return wrapper
