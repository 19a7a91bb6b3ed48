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
    # CPU and CUDA always have autocast; asking torch about them would break a torch.compile graph
    # on torch releases whose compiler cannot trace the question (2.11, for one).
    if kind in ("cpu", "cuda") or torch.amp.is_autocast_available(kind):
        return torch.autocast(kind, enabled=False)
    return nullcontext()


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
