"""Logging the images whose scores fell back to a uniform warp (see :mod:`dart_core.fallbacks`)."""

from __future__ import annotations

from dart_core.training import fallback_fields
from mmengine.hooks import Hook, LoggerHook
from mmengine.registry import HOOKS


def logger_hook_logs(runner, batch_idx: int) -> bool:
    """Whether mmengine's LoggerHook writes a training log line after this iteration (its own
    rule: every ``interval`` inner iterations, and at the end of an epoch unless ``ignore_last``);
    every iteration when the runner has no LoggerHook."""
    logger = next((hook for hook in runner.hooks if isinstance(hook, LoggerHook)), None)
    if logger is None:
        return True
    if logger.every_n_inner_iters(batch_idx, logger.interval):
        return True
    return logger.end_of_epoch(runner.train_dataloader, batch_idx) and (
        not logger.ignore_last or len(runner.train_dataloader) <= logger.interval
    )


@HOOKS.register_module()
class ScoreFallbackHook(Hook):
    """Log ``score_fallbacks`` with each training log line: the images, summed over the ranks,
    whose scores were non-finite, negative or all zero since the previous log line (validation
    included), which the warp therefore sampled on a uniform grid. A non-zero count also gets a
    warning.

    The counters add up on the device; this hook reads them only at the iterations the
    LoggerHook logs (one host sync and one all-reduce each), before it (priority NORMAL).
    :class:`dart_dense.checkpoint.DartRunner` registers one unless the config lists it.
    """

    priority = "NORMAL"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not logger_hook_logs(runner, batch_idx):
            return
        fields = fallback_fields(runner.model)
        if not fields:
            return
        count = fields["score_fallbacks"]
        runner.message_hub.update_scalar("train/score_fallbacks", count)
        if count:
            runner.logger.warning(
                f"iteration {runner.iter + 1}: {count} images since the last log had non-finite, negative or "
                "all-zero scores and were warped on a uniform grid (is the scorer diverging?)"
            )
