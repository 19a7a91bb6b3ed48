"""Logging the images whose scores fell back to a uniform warp (see :mod:`dart_core.fallbacks`)."""

from __future__ import annotations

from dart_core.training import fallback_fields
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class ScoreFallbackHook(Hook):
    """After every training iteration, log ``score_fallbacks``: the images, summed over the
    ranks, whose scores were non-finite, negative or all zero since the last iteration
    (validation included), which the warp therefore sampled on a uniform grid. The logger shows
    its mean over the logging window. The first non-zero count also gets a warning.

    Runs before mmengine's LoggerHook (priority NORMAL). :class:`dart_dense.checkpoint.DartRunner`
    registers it. Each call reads one number from the device and sums it over the ranks.
    """

    priority = "NORMAL"

    def __init__(self) -> None:
        self.warned = False

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        fields = fallback_fields(runner.model)
        if not fields:
            return
        count = fields["score_fallbacks"]
        runner.message_hub.update_scalar("train/score_fallbacks", count)
        if count and not self.warned:
            self.warned = True
            runner.logger.warning(
                f"iteration {runner.iter + 1}: {count} images had non-finite, negative or all-zero scores and were "
                "warped on a uniform grid (is the scorer diverging?); train/score_fallbacks logs the count"
            )
