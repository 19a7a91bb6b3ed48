"""Training and evaluation of VideoMamba (+ DART) classifiers: one process or torchrun (DDP).

The data order comes from :class:`dart_core.training.EpochSampler` (each rank's share of a seeded
permutation; every clip a pure function of its (index, seed)), so a run killed mid-epoch and
resumed from ``last.pth`` sees exactly the batches it would have seen. ``last.pth`` is written
atomically every ``ckpt_interval`` optimizer steps and at every epoch's end; it holds the model,
optimizer, scheduler, grad scaler, every rank's RNG states, the epoch, the step and the config.
``best.pth`` keeps the best top-1. With ``deterministic`` set on the CPU, a resumed run matches
an uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Sequence

import timm
import torch
import torch.nn.functional as F
from dart_core.checkpoint import CheckpointMismatchError, load_exact
from dart_core.training import (
    DistContext,
    EpochSampler,
    JsonlLogger,
    RunningMean,
    all_gather_objects,
    all_reduce_sum,
    capture_rng_state,
    fallback_fields,
    load_checkpoint,
    optimizer_update,
    restore_rng_state,
    resume_optimizer,
    resume_path,
    resume_scaler,
    save_last_and_best,
    seed_rank,
    train_epoch,
    wrap_ddp,
)
from dart_core.training.arguments import SettingsError, refuse_flag_kwargs, unexpected_keyword
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import data
from .augment import ClipMixup, ClipRandAugment, ClipRandomErasing
from .checkpoint import load_video_checkpoint
from .models import VideoMamba
from .recipes import TrainConfig

CHECKPOINT_FORMAT = "dart-video-train-1"


class TrainingError(Exception):
    """A user error found while setting up or resuming a run; the message says how to fix it."""


# ---------------------------------------------------------------- model and data


# create_model arguments that dart-video's own flags set.
MODEL_FLAGS = {"num_frames": "--num-frames", "img_size": "--img-size", "drop_path_rate": "--drop-path",
               "num_tokens": "--num-tokens", "scorer_weights": "--scorer-weights"}


def build_model(config: TrainConfig, num_classes: int) -> VideoMamba:
    """``timm.create_model(config.model)`` with the clip geometry, drop path and DART options;
    ``config.init`` loaded when set."""
    names = timm.list_models("videomamba_*")
    if config.model not in names:
        raise TrainingError(f"unknown model {config.model!r}; choose from {', '.join(names)}")
    flags = {"num_frames": config.num_frames, "img_size": config.img_size, "drop_path_rate": config.drop_path}
    if "_dart_" in config.model:
        flags.update((k, v) for k, v in (("num_tokens", config.num_tokens), ("scorer_weights", config.scorer_weights))
                     if v is not None)
    elif config.num_tokens is not None:
        raise TrainingError(f"--num-tokens only applies to DART models; {config.model!r} is not one")
    try:
        refuse_flag_kwargs(config.model_kwargs, {key: MODEL_FLAGS[key] for key in flags}, "the class count")
    except SettingsError as error:
        raise TrainingError(str(error)) from error
    try:
        model = timm.create_model(config.model, num_classes=num_classes, **flags, **config.model_kwargs)
    except TypeError as error:
        key = unexpected_keyword(error)
        if key is None:
            raise
        raise TrainingError(f"--model-kwargs: {config.model!r} takes no argument {key!r} ({error})") from error
    model.set_grad_checkpointing(config.grad_checkpointing)
    if config.init:
        try:
            load_video_checkpoint(model, config.init, image=config.init_image)
        except (FileNotFoundError, ValueError, CheckpointMismatchError) as error:
            raise TrainingError(str(error)) from error
    return model


def clip_dataset(samples: Sequence[data.VideoSample], config: TrainConfig, train: bool,
                 views: tuple[int, int] = (1, 1)) -> data.VideoClassification:
    """Training clips (RandAugment, random erasing, ``num_sample`` clips per video) or evaluation
    clips (``views`` = (temporal clips, spatial crops) per video)."""
    augment = ClipRandAugment(config.aa, config.img_size) if train and config.aa not in ("", "none") else None
    erase = ClipRandomErasing(config.reprob, config.remode, config.recount) if train and config.reprob > 0 else None
    return data.VideoClassification(
        samples, config.num_frames, config.img_size, train=train, seed=config.seed, augment=augment, erase=erase,
        repeats=config.num_sample if train else 1, scale=(config.min_crop_scale, 1.0), cache=config.cache_videos,
        views=views)


def make_loader(dataset, sampler: EpochSampler, batch_size: int, config: TrainConfig, ctx: DistContext,
                train: bool) -> DataLoader:
    """Batches of ``(index, seed)`` items in the sampler's order (its own generator: the global
    RNGs are left alone)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=config.workers,
                      pin_memory=ctx.device.type == "cuda", drop_last=train,
                      generator=torch.Generator().manual_seed(config.seed))


def eval_loader(samples: Sequence[data.VideoSample], config: TrainConfig, ctx: DistContext,
                views: tuple[int, int] = (1, 1)) -> DataLoader:
    """Evaluation batches of ``samples`` (``views`` per video, see :func:`clip_dataset`): every
    view once over all ranks, in order, no padding; ``eval_batch_size`` (else ``batch_size``) clips."""
    dataset = clip_dataset(samples, config, train=False, views=views)
    sampler = EpochSampler(len(dataset), ctx.rank, ctx.world_size, shuffle=False, pad=False, seed=config.seed)
    return make_loader(dataset, sampler, config.eval_batch_size or config.batch_size, config, ctx, False)


def autocast(config: TrainConfig, device: torch.device):
    """bf16 (or fp16) autocast on the GPU; float32 on the CPU."""
    enabled = device.type == "cuda" and config.amp_dtype != "none"
    dtype = torch.float16 if config.amp_dtype == "float16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, config: TrainConfig, ctx: DistContext,
             desc: str = "eval") -> dict:
    """Per-video top-1 / top-5 (%) of the softmax scores averaged over each video's views (the
    release's multi-view test; one view per video: the plain accuracy), the mean per-view
    cross-entropy, the counts of views (``clips``) and videos scored, the videos left out because
    they could not be decoded (``skipped``), views per second of the model's forward passes, and
    for DART models the views whose scores fell back to a uniform grid (``score_fallbacks``,
    summed over the ranks: the evaluation's own, as training logs and clears its counts).

    ``loader`` yields ``(clips, labels, videos)`` batches of a :class:`data.VideoClassification`
    (``videos`` index its samples). Under DDP the views of one video may land on different ranks:
    every rank adds its softmax scores into a (videos, classes) sum, and the sums are all-reduced,
    so every view and every video counts once.
    """
    model.eval()
    samples = loader.dataset.samples
    scores = torch.zeros(len(samples), model.num_classes, dtype=torch.float64)  # summed softmax per video
    views = torch.zeros(len(samples), dtype=torch.float64)  # views seen per video
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, views, seconds
    for clips, labels, videos in tqdm(loader, desc=desc, leave=False, disable=not (config.progress and ctx.is_main)):
        clips, labels = clips.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        _sync(ctx.device)
        start = time.perf_counter()
        with autocast(config, ctx.device):
            logits = model(clips)
        _sync(ctx.device)
        seconds = time.perf_counter() - start
        kept = videos >= 0  # -1: a view of a video that could not be decoded (left out, see data.py)
        on_device = kept.to(ctx.device)
        logits, labels, videos = logits.float()[on_device], labels[on_device], videos[kept]
        scores.index_add_(0, videos, logits.softmax(1).double().cpu())
        views.index_add_(0, videos, torch.ones(len(videos), dtype=torch.float64))
        loss = F.cross_entropy(logits, labels, reduction="sum").item() if len(labels) else 0.0
        totals += torch.tensor([loss, len(labels), seconds], dtype=torch.float64)
    rate = totals[1] / totals[2] if totals[2] > 0 else totals.new_zeros(())
    summed = all_reduce_sum(torch.stack([totals[0], totals[1], rate]).to(ctx.device)).cpu().tolist()
    scores, views = (all_reduce_sum(t.to(ctx.device)).cpu() for t in (scores, views))
    seen = views > 0
    labels = torch.tensor([s.label for s in samples])[seen]
    top = (scores[seen] / views[seen, None]).topk(min(5, scores.shape[1]), dim=1).indices
    count = int(seen.sum())
    return {"top1": 100 * (top[:, 0] == labels).sum().item() / max(count, 1),
            "top5": 100 * (top == labels[:, None]).any(1).sum().item() / max(count, 1),
            "loss": summed[0] / max(summed[1], 1.0), "clips": int(summed[1]), "videos": count,
            "skipped": len(samples) - count, "clips_per_s": summed[2], **fallback_fields(model)}


# ---------------------------------------------------------------- training state


class Trainer:
    """Optimizer, schedule, scaler, DDP wrapper and counters; ``state`` / ``load`` cover all an
    exact resume needs."""

    def __init__(self, config: TrainConfig, ctx: DistContext, model: VideoMamba, num_classes: int,
                 steps_per_epoch: int):
        self.config, self.ctx, self.model, self.steps_per_epoch = config, ctx, model, steps_per_epoch
        rates = config.scaled(ctx.world_size)
        self.optimizer = create_optimizer_v2(
            model, opt="adamw", lr=rates["lr"], weight_decay=config.weight_decay, betas=(0.9, 0.999),
            layer_decay=config.layer_decay if config.layer_decay < 1 else None)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched="cosine", num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
            warmup_prefix=True, min_lr=rates["min_lr"], warmup_lr=rates["warmup_lr"], step_on_epochs=False,
            updates_per_epoch=steps_per_epoch)
        fp16 = ctx.device.type == "cuda" and config.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=fp16)
        self.net = wrap_ddp(model, ctx)
        mixing = config.mixup > 0 or config.cutmix > 0
        self.mixup = ClipMixup(config.mixup, config.cutmix, config.mixup_prob, config.mixup_switch_prob,
                               config.smoothing, num_classes) if mixing else None
        if mixing:
            self.criterion = SoftTargetCrossEntropy()
        elif config.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(config.smoothing)
        else:
            self.criterion = torch.nn.CrossEntropyLoss()
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.epoch_loss = RunningMean()  # this epoch's training loss so far (kept across a resume)
        self.best_top1: float | None = None

    def state(self, classes: Sequence[str]) -> dict:
        """The checkpoint (collective: gathers every rank's RNG states)."""
        return {
            "format": CHECKPOINT_FORMAT, "model_name": self.config.model, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step, "steps_per_epoch": self.steps_per_epoch,
            "epoch_loss": self.epoch_loss.state_dict(), "world_size": self.ctx.world_size,
            "rng": all_gather_objects(capture_rng_state()),
            "classes": list(classes), "best_top1": self.best_top1, "config": self.config.to_dict(),
        }

    def save(self, out: str, classes: Sequence[str], best: bool = False) -> None:
        state = self.state(classes)
        if self.ctx.is_main:
            save_last_and_best(state, out, best)

    def load(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        if not (isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT):
            raise TrainingError(f"{path} is not a dart-video training checkpoint; start from its weights with --init")
        if ckpt["model_name"] != self.config.model:
            raise TrainingError(f"{path} was trained as {ckpt['model_name']!r}, not {self.config.model!r}; "
                                f"pass --model {ckpt['model_name']}")
        try:
            load_exact(self.model, ckpt["model"], source=path)
        except CheckpointMismatchError as error:
            raise TrainingError(str(error)) from error
        try:  # the moments from the checkpoint; lr, decays and schedule from this run's config
            resume_optimizer(self.optimizer, ckpt["optimizer"])
        except ValueError as error:
            raise TrainingError(f"{path}: the optimizer's parameter groups differ ({error}); resume with the "
                                "--layer-decay and --weight-decay of that run") from error
        resume_scaler(self.scaler, ckpt["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        self.best_top1 = ckpt["best_top1"]
        if "epoch_loss" in ckpt:  # absent from checkpoints written before it was kept
            self.epoch_loss.load_state_dict(ckpt["epoch_loss"])
        saved = {k: ckpt["config"][k] for k in ("batch_size", "accum_steps", "num_sample")}
        same = (ckpt["world_size"], ckpt["steps_per_epoch"], saved) == (
            self.ctx.world_size, self.steps_per_epoch, {k: getattr(self.config, k) for k in saved})
        if self.step_in_epoch and not same:
            raise TrainingError(
                f"{path} was saved mid-epoch by {ckpt['world_size']} process(es) with {saved} and "
                f"{ckpt['steps_per_epoch']} steps per epoch; resume with the same settings and data")
        if ckpt["world_size"] == self.ctx.world_size:
            restore_rng_state(ckpt["rng"][self.ctx.rank])
        else:
            seed_rank(self.config.seed + 1000 * self.epoch, self.ctx.rank)

    def step(self, batches: Iterator) -> float:
        """One optimizer step over ``accum_steps`` micro-batches; returns the mean loss."""
        config, device = self.config, self.ctx.device
        self.scheduler.step_update(self.global_step)
        self.net.train()
        total = 0.0
        for micro in range(config.accum_steps):
            clips, labels, _ = next(batches)
            clips, labels = clips.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if self.mixup is not None:
                clips, labels = self.mixup(clips, labels)
            last = micro == config.accum_steps - 1
            sync = contextlib.nullcontext() if last or self.net is self.model else self.net.no_sync()
            with sync:
                with autocast(config, device):
                    loss = self.criterion(self.net(clips), labels) / config.accum_steps
                self.scaler.scale(loss).backward()
            total += loss.item()
        optimizer_update(self.optimizer, self.scaler, self.model.parameters(), config.clip_grad)
        self.global_step += 1
        self.step_in_epoch += 1
        if not math.isfinite(total):
            raise FloatingPointError(f"loss is {total} at step {self.global_step}; lower --blr/--lr or set --clip-grad")
        return total


# ---------------------------------------------------------------- the loop


def fit(config: TrainConfig, ctx: DistContext, model: VideoMamba, train_samples, val_samples,
        classes: Sequence[str], out: str, resume: str | None = None, kill_at_step: int | None = None) -> dict:
    """Train for ``config.epochs`` (continuing ``resume``: a path or "auto" = ``out/last.pth`` if
    present), evaluating after every epoch. Returns the last epoch's metrics and counters."""
    num_classes = len(classes)
    train_set = clip_dataset(train_samples, config, True)
    sampler = EpochSampler(len(train_set), ctx.rank, ctx.world_size, seed=config.seed)
    steps_per_epoch = sampler.epoch_length() // (config.batch_size * config.accum_steps)
    if steps_per_epoch == 0:
        raise TrainingError(
            f"each of the {ctx.world_size} process(es) gets {sampler.epoch_length()} clips per epoch, fewer than "
            f"one optimizer step's {config.batch_size} x {config.accum_steps}; lower --batch-size/--accum-steps")
    steps_per_epoch = min(steps_per_epoch, config.max_steps or steps_per_epoch)
    trainer = Trainer(config, ctx, model, num_classes, steps_per_epoch)
    resume = resume_path(resume, out)
    if resume:
        trainer.load(resume)
    else:
        seed_rank(config.seed, ctx.rank)
    logger = JsonlLogger(os.path.join(out, "log.jsonl"), enabled=ctx.is_main)
    logger.log(event="start", config=config.to_dict(), world_size=ctx.world_size, steps_per_epoch=steps_per_epoch,
               **config.scaled(ctx.world_size), resumed_from=resume, epoch=trainer.epoch,
               step_in_epoch=trainer.step_in_epoch)
    loader = make_loader(train_set, sampler, config.batch_size, config, ctx, train=True)
    val_loader = eval_loader(val_samples, config, ctx)
    metrics: dict = {}
    while trainer.epoch < config.epochs:
        epoch = trainer.epoch
        train_epoch(
            trainer, trainer.step, sampler, loader, steps_per_epoch, config.accum_steps * config.batch_size,
            log_interval=config.log_interval, ckpt_interval=config.ckpt_interval, logger=logger,
            save=lambda: trainer.save(out, classes), progress=config.progress and ctx.is_main,
            kill_at_step=kill_at_step, running=trainer.epoch_loss, model=model,
        )
        metrics = evaluate(model, val_loader, config, ctx)
        improved = trainer.best_top1 is None or metrics["top1"] > trainer.best_top1
        trainer.best_top1 = metrics["top1"] if improved else trainer.best_top1
        trainer.epoch, trainer.step_in_epoch = epoch + 1, 0
        trainer.save(out, classes, best=improved)
        logger.log(event="epoch", epoch=epoch, global_step=trainer.global_step,
                   train_loss=trainer.epoch_loss.mean, best_top1=trainer.best_top1, **metrics)
        if ctx.is_main and not config.progress:
            print(f"epoch {epoch}: top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f}", flush=True)
    return {"epoch": trainer.epoch, "global_step": trainer.global_step, "best_top1": trainer.best_top1, **metrics}
