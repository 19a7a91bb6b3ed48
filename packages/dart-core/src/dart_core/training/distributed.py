"""torchrun-aware process-group setup and small collectives.

``init_distributed`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` or a rendezvous endpoint, all set by torchrun for single- and
multi-node runs). Without them it returns a single-process context and creates no group.
The backend is NCCL when the device is CUDA and gloo otherwise.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..fallbacks import fallback_counters
from .rng import seed_everything


@dataclass(frozen=True)
class DistContext:
    """Where this process sits. ``device`` is the device it should compute on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def init_distributed(device: str | None = None) -> DistContext:
    """Join the torchrun process group (if launched by torchrun) and pick the device.

    Args:
        device: ``"cpu"``, ``"cuda"`` or None (CUDA if available). Under torchrun with CUDA,
            each process takes GPU ``LOCAL_RANK``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but CUDA is not available; use --device cpu.")
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError(
                "WORLD_SIZE > 1 but MASTER_ADDR is not set: launch with torchrun "
                "(e.g. torchrun --nproc_per_node=2 ...), which sets the rendezvous variables."
            )
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


# How long the main thread gives the backend's worker threads, after leaving the group, to drop
# their last references (see ``teardown_distributed``).
BACKEND_SETTLE_SECONDS = 0.2


def teardown_distributed(wait: bool = True) -> None:
    """Leave the process group, if one was created; ``wait``: first wait for the other ranks
    (skip it when leaving on an error, so a failing rank does not hang).

    Then let the backend's threads settle before the interpreter shuts down. A gloo worker thread
    drops its reference to a finished collective only after the caller has been released, and
    where it holds the last reference to a tensor that Python created, it needs the GIL to free
    it. If the main thread is already finalising the interpreter by then, the worker thread is
    killed inside a destructor and the process aborts ("terminate called without an active
    exception", pytorch/pytorch#190489). ``destroy_process_group`` does not join those threads
    while DDP still holds the group. So the main thread collects garbage and then sleeps
    without the GIL for ``BACKEND_SETTLE_SECONDS``.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()
        time.sleep(BACKEND_SETTLE_SECONDS)


@contextmanager
def leaving_process_group() -> Iterator[None]:
    """Leave the process group (if one was created) when the block ends: after waiting for the
    other ranks when it ends normally, at once when it raises (see ``teardown_distributed``)."""
    finished = False
    try:
        yield
        finished = True
    finally:
        teardown_distributed(wait=finished)


def seed_rank(seed: int, rank: int) -> int:
    """Seed all RNGs with ``seed + rank`` (different augmentation / drop-path draws per rank);
    returns the seed used."""
    rank_seed = seed + rank
    seed_everything(rank_seed)
    return rank_seed


def keep_fallback_counters_per_rank(model: nn.Module) -> None:
    """Mark ``model``'s ``score_fallbacks`` counters (:mod:`dart_core.fallbacks`) as buffers that a
    DistributedDataParallel wrapper built afterwards leaves alone (DDP's own hook for this,
    ``_ddp_params_and_buffers_to_ignore``; names already there are kept)."""
    ignored = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    ignored += [name for name in fallback_counters(model) if name not in ignored]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` under DistributedDataParallel when ``ctx`` has several ranks, else ``model``.

    The tokenizers' ``score_fallbacks`` counters (:mod:`dart_core.fallbacks`) are left out of
    DDP's buffer broadcast, so that each rank keeps its own count; the other buffers are
    broadcast from rank 0 as usual.
    """
    if ctx.world_size <= 1:
        return model
    keep_fallback_counters_per_rank(model)
    return DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (identity without a process group). Returns a new tensor."""
    out = values.clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
