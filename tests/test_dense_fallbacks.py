"""The dense warp counts the images whose scores fell back to a uniform grid, and the runner's
hook logs the count (dart_core.fallbacks, dart_dense.fallback_hook)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from dart_dense import DartWarp
from dart_dense.fallback_hook import ScoreFallbackHook
from mmengine.logging import MessageHub, MMLogger


class ImageScores(torch.nn.Module):
    """(B, 3, 32, 32) → (B, 4, 4) positive scores; a NaN pixel gives NaN scores."""

    def forward(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images[:, 0], (4, 4)).abs() + 0.1


def warp_batch(warp: DartWarp, spoiled: list[int]) -> None:
    images = torch.rand(3, 3, 32, 32)
    for i in spoiled:
        images[i, 0, 5, 5] = float("nan")
    warp(images, torch.tensor([[32, 32]] * 3))


def test_the_hook_logs_each_iteration_count_and_warns_once():
    warp = DartWarp((2, 2), 8, ImageScores(), score_input_size=(32, 32))
    assert "score_fallbacks" not in DartWarp((2, 2), 8).state_dict() and not dict(DartWarp((2, 2), 8).named_buffers())
    hub = MessageHub.get_instance("test_dense_fallbacks")
    logger = MMLogger.get_instance("test_dense_fallbacks")
    runner = SimpleNamespace(model=torch.nn.Sequential(warp), message_hub=hub, logger=logger, iter=0)
    hook, logged = ScoreFallbackHook(), []
    for runner.iter, spoiled in enumerate(([0, 2], [], [1])):
        warp_batch(warp, spoiled)
        hook.after_train_iter(runner, runner.iter)
        logged.append(hub.get_scalar("train/score_fallbacks").current())
    assert logged == [2, 0, 1]
    assert hook.warned and int(warp.score_fallbacks) == 0  # read and cleared each iteration


def test_the_hook_leaves_a_model_without_scorer_alone():
    hub = MessageHub.get_instance("test_dense_fallbacks_baseline")
    runner = SimpleNamespace(model=DartWarp((2, 2), 8), message_hub=hub, logger=None, iter=0)
    ScoreFallbackHook().after_train_iter(runner, 0)
    assert "train/score_fallbacks" not in hub.log_scalars
