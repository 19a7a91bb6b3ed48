"""The steps of one resumable training epoch, shared by the image and video trainers."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from tqdm import tqdm

from ..fallbacks import take_fallback_count
from .data import EpochSampler
from .distributed import all_reduce_sum
from .jsonl import JsonlLogger


class RunningMean:
    """The mean training loss of the current epoch, kept across a mid-epoch checkpoint.

    The sum is accumulated step by step in the same order either way, so a resumed epoch reports
    exactly the mean an uninterrupted one does.
    """

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)

    def state_dict(self) -> dict[str, float | int]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.total, self.count = float(state["total"]), int(state["count"])


def fallback_fields(model: nn.Module) -> dict[str, int]:
    """``{"score_fallbacks": n}``: the samples, summed over ranks, whose scores fell back to a
    uniform grid since the last call (:mod:`dart_core.fallbacks`; evaluation passes included);
    the counters are cleared. Empty for a model without DART tokenizers. A collective: every
    rank must call it at the same step. One host sync."""
    count = take_fallback_count(model)
    return {} if count is None else {"score_fallbacks": int(all_reduce_sum(count))}


def train_epoch(
    trainer: Any,
    step: Callable[[Any], float],
    sampler: EpochSampler,
    loader: Iterable,
    steps_per_epoch: int,
    samples_per_step: int,
    *,
    log_interval: int,
    ckpt_interval: int,
    logger: JsonlLogger,
    save: Callable[[], None],
    running: RunningMean,
    progress: bool = True,
    on_log: Callable[[float, float], None] | None = None,
    kill_at_step: int | None = None,
    model: nn.Module | None = None,
) -> None:
    """Run epoch ``trainer.epoch`` from optimizer step ``trainer.step_in_epoch`` to its end.

    Args:
        trainer: holds ``epoch``, ``step_in_epoch``, ``global_step`` and ``optimizer``.
        step: ``step(batches)`` takes the next batch(es) from the iterator, makes one optimizer
            step (advancing the trainer's counters) and returns its loss.
        sampler, loader: the epoch's data; the sampler restarts mid-epoch after
            ``step_in_epoch × samples_per_step`` samples, so a resumed epoch sees the rest of the
            same order.
        log_interval: a ``train`` event (and ``on_log(loss, lr)``) every this many global steps
            and at the end of the epoch.
        ckpt_interval: ``save()`` every this many global steps inside the epoch (the end of the
            epoch is the caller's to save, after evaluation).
        running: the epoch's loss mean, reset at the epoch's first step and fed every step's loss;
            save it with the checkpoint so that a resumed epoch's mean covers the whole epoch.
        kill_at_step: tests only: SIGKILL the process at this global step, like a pre-empted job.
        model: the model being trained; each ``train`` event then carries its ``score_fallbacks``
            (:func:`fallback_fields`), and a non-zero count is also printed to stderr.
    """
    epoch = trainer.epoch
    sampler.set_epoch(epoch)
    sampler.set_start(trainer.step_in_epoch * samples_per_step)
    batches = iter(loader)
    if trainer.step_in_epoch == 0:
        running.reset()
    with tqdm(total=steps_per_epoch, initial=trainer.step_in_epoch, desc=f"epoch {epoch}", disable=not progress) as bar:
        while trainer.step_in_epoch < steps_per_epoch:
            loss = step(batches)
            running.add(loss)
            bar.update(1)
            lr = max(group["lr"] for group in trainer.optimizer.param_groups)
            if trainer.global_step % log_interval == 0 or trainer.step_in_epoch == steps_per_epoch:
                fields = fallback_fields(model) if model is not None else {}
                logger.log(event="train", epoch=epoch, step=trainer.step_in_epoch, global_step=trainer.global_step,
                           loss=loss, lr=lr, **fields)
                if fields.get("score_fallbacks") and logger.enabled:
                    tqdm.write(
                        f"warning: step {trainer.global_step}: {fields['score_fallbacks']} samples since the last log "
                        "had non-finite, negative or all-zero scores and were tokenised on a uniform grid (is the "
                        "scorer diverging? build the model with on_invalid='raise' to stop at the first)",
                        file=sys.stderr,
                    )
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if on_log is not None:
                    on_log(loss, lr)
            if trainer.global_step % ckpt_interval == 0 and trainer.step_in_epoch < steps_per_epoch:
                save()
            if kill_at_step == trainer.global_step:
                os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, on purpose
