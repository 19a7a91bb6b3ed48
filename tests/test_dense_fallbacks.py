"""The dense warp counts the images whose scores fell back to a uniform grid, and the runner's
hook logs the count with each training log line (dart_core.fallbacks, dart_dense.fallback_hook).
The sum over ranks is checked under torchrun in tests/test_score_fallbacks.py."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from dart_dense import DartWarp
from dart_dense.checkpoint import DartRunner
from dart_dense.fallback_hook import ScoreFallbackHook
from mmengine.hooks import LoggerHook
from mmengine.logging import MessageHub, MMLogger
from mmengine.runner import LogProcessor


class ImageScores(torch.nn.Module):
    """(B, 3, 32, 32) → (B, 4, 4) positive scores; a NaN pixel gives NaN scores."""

    def forward(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images[:, 0], (4, 4)).abs() + 0.1


def warp_batch(warp: DartWarp, spoiled: list[int]) -> None:
    images = torch.rand(3, 3, 32, 32)
    for i in spoiled:
        images[i, 0, 5, 5] = float("nan")
    warp(images, torch.tensor([[32, 32]] * 3))


def fake_runner(name: str, model: torch.nn.Module, interval: int):
    """What the hook and mmengine's LogProcessor read of a runner; warnings are collected in a list."""
    warned = []
    runner = SimpleNamespace(model=model, message_hub=MessageHub.get_instance(name), iter=0,
                             logger=SimpleNamespace(warning=warned.append), hooks=[LoggerHook(interval=interval)],
                             train_dataloader=list(range(100)))
    return runner, warned


def train_iterations(runner, warp, spoiled_per_iteration) -> list:
    """Run the hook after each iteration; what the LogProcessor would log after each (None: no log line)."""
    hook, logged = ScoreFallbackHook(), []
    for runner.iter, spoiled in enumerate(spoiled_per_iteration):
        warp_batch(warp, spoiled)
        runner.message_hub.update_scalar("train/loss", 1.0)
        hook.after_train_iter(runner, runner.iter)
        if runner.hooks[0].every_n_inner_iters(runner.iter, runner.hooks[0].interval):
            logged.append(dict(LogProcessor(window_size=runner.hooks[0].interval)._collect_scalars([], runner, "train")))
    return logged


def test_each_log_line_carries_the_count_of_its_whole_window():
    warp = DartWarp((2, 2), 8, ImageScores(), score_input_size=(32, 32))
    runner, warned = fake_runner("test_dense_fallbacks_window", torch.nn.Sequential(warp), interval=3)
    # windows of 3 iterations: 3 images fell back in the first (none in its last iteration), none in the second
    logged = train_iterations(runner, warp, ([0, 2], [1], [], [], [], []))
    assert [record["score_fallbacks"] for record in logged] == [3, 0]
    assert len(warned) == 1 and "iteration 3: 3 images since the last log" in warned[0]
    assert int(warp.score_fallbacks) == 0


def test_the_hook_leaves_a_model_without_scorer_alone():
    warp = DartWarp((2, 2), 8)
    assert "score_fallbacks" not in warp.state_dict() and not dict(warp.named_buffers())
    runner, _ = fake_runner("test_dense_fallbacks_baseline", warp, interval=1)
    ScoreFallbackHook().after_train_iter(runner, 0)
    assert "train/score_fallbacks" not in runner.message_hub.log_scalars


def bare_runner() -> DartRunner:
    """A DartRunner with only what register_hooks and wrap_model read (no config, no work dir)."""
    runner = object.__new__(DartRunner)
    runner._hooks, runner._distributed = [], False
    runner.logger = MMLogger.get_instance("test_dense_fallbacks_runner")
    return runner


def test_the_runner_adds_one_hook_and_keeps_the_counters_out_of_ddp_broadcasts():
    listed = bare_runner()
    listed.register_hooks(custom_hooks=[dict(type="ScoreFallbackHook")])
    assert sum(isinstance(hook, ScoreFallbackHook) for hook in listed.hooks) == 1
    plain = bare_runner()
    plain.register_hooks()
    assert sum(isinstance(hook, ScoreFallbackHook) for hook in plain.hooks) == 1
    model = torch.nn.ModuleDict({"warp": DartWarp((2, 2), 8, ImageScores())})
    plain.wrap_model(None, model)
    assert model._ddp_params_and_buffers_to_ignore == ["warp.score_fallbacks"]


def test_a_meta_device_build_gets_a_zero_counter_back():
    with torch.device("meta"):
        warp = DartWarp((2, 2), 8, ImageScores())
    warp = warp.to_empty(device="cpu")
    for module in warp.modules():  # timm's reinit_non_persistent_buffers convention
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    assert int(warp.score_fallbacks) == 0
