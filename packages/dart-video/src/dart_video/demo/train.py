"""Train and measure one demo model with the ``dart-video train`` loop (:func:`dart_video.engine.fit`).

Each model trains in its own process (one CPU thread) so the two can run side by side; the
process writes ``log.jsonl``, ``last.pth`` and ``best.pth`` to its folder like the command does.
After every epoch the loop checks a small part of the validation clips (``monitor``); the
reported accuracy is the last epoch's model on all of them (no choosing the best epoch on them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import cli, data
from ..engine import eval_loader, evaluate, fit
from ..recipes import TrainConfig
from . import models


@dataclass(frozen=True)
class Job:
    """One model's run. ``settings`` holds the model geometry (:func:`models.build`'s keywords
    but ``dart`` and ``num_classes``) and the recipe (batch size, epochs, learning rate, seed)."""

    name: str
    dart: bool
    root: str
    out: str
    settings: dict
    monitor: int = 48  # validation clips checked after every epoch


def config_of(job: Job) -> TrainConfig:
    """The recipe both models share: AdamW, cosine after a one-epoch warm-up, no augmentation,
    no label smoothing, Mixup or stochastic depth (a few hundred clips, a few minutes), one clip per
    video per epoch, decoded videos kept in memory, one thread, no progress bars. The model
    settings are recorded too (the DART scorer is the demo's own: :func:`build_model` rebuilds it)."""
    s = job.settings
    return TrainConfig(
        model=f"videomamba_tiny{'_dart' if job.dart else ''}_patch16_224", num_frames=s["num_frames"],
        num_tokens=s["tokens_per_frame"] * s["num_frames"] if job.dart else None,
        model_kwargs=dict(patch_size=s["patch"], embed_dim=s["embed_dim"], depth=s["depth"], **models.MIXER),
        img_size=models.input_size(job.dart, s["frame"], s["patch"], s["tokens_per_frame"]), batch_size=s["batch_size"],
        eval_batch_size=64, epochs=s["epochs"], lr=s["lr"], warmup_epochs=1.0, min_blr=0.0, warmup_blr=0.0,
        weight_decay=0.05, layer_decay=1.0, drop_path=0.0, num_sample=1, aa="none", mixup=0.0, cutmix=0.0, smoothing=0.0,
        min_crop_scale=1.0, workers=0, cache_videos=True, seed=s["seed"], log_interval=10, progress=False, threads=1,
        device="cpu",
    )


def build_model(job: Job, num_classes: int) -> torch.nn.Module:
    s = job.settings
    return models.build(job.dart, num_classes, s["num_frames"], s["frame"], s["patch"], s["tokens_per_frame"],
                        s["embed_dim"], s["depth"], s["contrast"])


def run(job: Job) -> dict:
    """Train ``job``'s model and evaluate its last epoch on all validation clips; returns top-1,
    clips/s, tokens, GFLOPs, parameters and training seconds."""
    config = config_of(job)
    with cli.session(config) as ctx:
        torch.manual_seed(config.seed)
        train_samples, classes = data.read_ssv2(job.root, "train")
        val_samples, _ = data.read_ssv2(job.root, "validation")
        model = build_model(job, len(classes))
        start = time.perf_counter()
        fit(config, ctx, model, train_samples, val_samples[:job.monitor], classes, job.out)
        seconds = time.perf_counter() - start
        metrics = evaluate(model, eval_loader(val_samples, config, ctx), config, ctx)
        return {"name": job.name, "model": config.model, "top1": metrics["top1"], "clips": metrics["clips"],
                "clips_per_s": metrics["clips_per_s"], **cli.model_stats(model, config, ctx.device), "train_s": seconds}
