#!/usr/bin/env python
"""ImageNet(-style) pretraining and evaluation of DART and baseline timm models.

Single process:     python tools/pretrain_in1k.py --data-dir /data/in1k --model deit_tiny_dart_patch16_448
One node, 8 GPUs:   torchrun --nproc_per_node=8 tools/pretrain_in1k.py --data-dir ... [--config recipe.yaml]
Several nodes:      torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
                        --rdzv_id=JOB tools/pretrain_in1k.py ...
Resume:             the same command with --resume auto (or --resume PATH/last.pth)
Evaluate:           python tools/pretrain_in1k.py --eval --checkpoint darvit-tiny.pth --data-dir ... \
                        --model deit_tiny_dart_patch16_448 --model-kwargs '{scorer_batch_stats: true}'
                    (with --resume, or --eval --checkpoint of our own checkpoint, the model flags
                    --model, --model-kwargs, --num-tokens, --scorer, --scorer-version, --drop-path and
                    --input-size default to the checkpoint's and must agree with it when given;
                    --eval --pretrained PATH loads its weights into the model the flags describe)
                    (a published darvit-*.pth goes through dart_core's converter; the published
                    scorers standardise with batch statistics, hence scorer_batch_stats). Reports
                    top-1/top-5, parameters and FLOPs per image (both including the scorer) and
                    images/s of the model's forward passes (summed over processes).

Defaults follow DeiT (AdamW, 1e-3 per 1024 images, weight decay 0.05, cosine, 5 warm-up epochs,
300 epochs, RandAugment, random erasing, repeated augmentation, Mixup/CutMix, label smoothing).
``<output-dir>/last.pth`` is rewritten atomically every ``--ckpt-interval`` optimizer steps and at
each epoch's end, with everything needed to continue exactly (model, optimizer, scheduler,
scaler, EMA, every rank's RNG states, epoch and step); ``best.pth`` keeps the best top-1.
Logs: ``<output-dir>/log.jsonl`` (one JSON object per line), optional TensorBoard in ``tb/``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dart_core  # noqa: E402,F401  (registers the DeiT + DART models with timm)
import dart_core.mamba  # noqa: E402,F401  (registers Vim and Vim + DART)
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from dart_core.checkpoint import (  # noqa: E402
    CheckpointMismatchError,
    checkpoint_problem,
    convert_published_state_dict,
    load_exact,
    read_state_dict,
)
from dart_core.console import warnings_as_messages  # noqa: E402
from dart_core.models import built_data_config  # noqa: E402
from dart_core.scorers import random_backbone_warning_deferred  # noqa: E402
from dart_core.training import (  # noqa: E402
    CheckpointError,
    DistContext,
    EpochSampler,
    JsonlLogger,
    RunningMean,
    all_gather_objects,
    all_reduce_sum,
    capture_rng_state,
    count_flops,
    count_params,
    fallback_fields,
    init_distributed,
    leaving_process_group,
    load_checkpoint,
    optimizer_update,
    restore_rng_state,
    resume_optimizer,
    resume_path,
    resume_scaler,
    save_last_and_best,
    seed_everything,
    seed_rank,
    train_epoch,
    wrap_ddp,
)
from dart_core.training.arguments import (  # noqa: E402
    DART_MODEL_FLAGS,
    SettingsError,
    refuse_flag_kwargs,
    unexpected_keyword,
)
from pretrain_config import UsageError, build_parser, parse_args, plain_args, scaled_lr  # noqa: E402
from pretrain_data import build_mixup, build_transforms, check_same_classes, image_folder, make_loader  # noqa: E402
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402
from timm.scheduler import create_scheduler_v2  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402
from tqdm import tqdm  # noqa: E402

CHECKPOINT_FORMAT = "dart-pretrain-1"

# create_model keyword arguments the tool passes from flags: always, and (DART) when the flag is given.
ALWAYS_KWARGS = {"drop_path_rate": "drop_path"}

# The flags that define the model a checkpoint was trained as: --resume and --eval take their
# values from the checkpoint unless they are given.
MODEL_FLAGS = ("model", "model_kwargs", "num_tokens", "scorer", "scorer_version", "drop_path", "input_size")


# ---------------------------------------------------------------- model


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_model_kwargs(args) -> None:
    """Refuse --model-kwargs keys that the tool passes to create_model itself (which would crash
    with "got multiple values for keyword argument")."""
    flags = {key: flag(dest) for key, dest in ALWAYS_KWARGS.items()}
    flags.update((key, flag(dest)) for key, dest in DART_MODEL_FLAGS.items() if getattr(args, dest) is not None)
    try:
        refuse_flag_kwargs(args.model_kwargs, flags, "the number of class folders in train/ and val/")
    except SettingsError as error:
        raise UsageError(str(error)) from error


def build_model(args, num_classes: int) -> torch.nn.Module:
    """``timm.create_model(args.model)`` with the DART options folded into its kwargs."""
    if not timm.is_model(args.model):
        raise UsageError(f"unknown model {args.model!r}: use a timm.create_model name (timm.list_models('*dart*'))")
    check_model_kwargs(args)
    dart_opts = {key: getattr(args, dest) for key, dest in DART_MODEL_FLAGS.items() if getattr(args, dest) is not None}
    kwargs = dict(args.model_kwargs, **dart_opts)
    try:
        model = timm.create_model(args.model, num_classes=num_classes, drop_path_rate=args.drop_path, **kwargs)
    except TypeError as e:
        key = unexpected_keyword(e)
        if key is None:
            raise
        if key in dart_opts:
            flags = ", ".join(flag(DART_MODEL_FLAGS[k]) for k in dart_opts)
            raise UsageError(f"{flags} only apply to DART models; {args.model!r} is not one ({e})") from e
        raise UsageError(f"--model-kwargs: {args.model!r} takes no argument {key!r} ({e})") from e
    if args.grad_checkpointing:
        try:
            model.set_grad_checkpointing(True)
        except (AssertionError, NotImplementedError, AttributeError) as e:
            raise UsageError(f"--grad-checkpointing: {args.model!r} does not support it ({e or type(e).__name__}); "
                             "drop the flag") from e
    return model


def default_input_size(model: torch.nn.Module) -> int:
    """The side the model was built for: its patch embedding's img_size, else its pretrained cfg."""
    return built_data_config(model)["input_size"][-1]


@torch.no_grad()
def check_input_size(model: torch.nn.Module, size: int, device: torch.device, name: str) -> None:
    """One forward pass on a (1, 3, size, size) batch; a failure becomes a clear UsageError.

    It runs before a checkpoint's weights are loaded, so a frozen scorer backbone still random
    here does not warn yet (it does at the first real forward pass if no weights came)."""
    was_training = model.training
    model.eval()
    with random_backbone_warning_deferred():
        try:
            model(torch.zeros(1, 3, size, size, device=device))
        except Exception as e:  # any shape complaint from any model
            raise UsageError(
                f"model {name!r} cannot take {size}x{size} inputs ({type(e).__name__}: {e}). Use --input-size "
                f"{default_input_size(model)} (the size it was built for), or build it for {size} with "
                f"--model-kwargs '{{img_size: {size}}}'"
            ) from e
        finally:
            model.train(was_training)


def classifier_names(model: torch.nn.Module) -> tuple[str, ...]:
    head = getattr(model, "pretrained_cfg", {}).get("classifier", "head")
    return tuple(head) if isinstance(head, (list, tuple)) else (head,)


def fit_classifier(model, state: dict, num_classes: int, source: str, data_dir: str, reset_head: bool = False) -> dict:
    """Check the checkpoint's classifier against the data's class count (or replace it by the
    model's freshly initialised one with ``reset_head``)."""
    own = model.state_dict()
    state = dict(state)
    for head in classifier_names(model):
        weight = state.get(f"{head}.weight")
        if weight is None or weight.shape[0] == num_classes:
            continue
        if not reset_head:
            raise UsageError(
                f"{source} has a {weight.shape[0]}-class classifier but {data_dir} has {num_classes} classes. "
                "Evaluate/resume on data with the checkpoint's classes, or start from its weights with "
                "--pretrained PATH --reset-head"
            )
        for key in (f"{head}.weight", f"{head}.bias"):
            if key in own:
                state[key] = own[key]
    return state


def weights_from(path: str, use_ema: bool = False) -> dict:
    """Model weights from one of our checkpoints (live or EMA) or a published one (DeiT / darvit,
    converted to our layout)."""
    ckpt = load_checkpoint(path)
    if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
        if use_ema:
            if ckpt.get("ema") is None:
                raise UsageError(f"{path} holds no EMA weights (trained without --model-ema); drop --eval-ema")
            return ckpt["ema"]
        return ckpt["model"]
    if use_ema:
        raise UsageError("--eval-ema needs a checkpoint written by pretrain_in1k")
    try:
        return convert_published_state_dict(read_state_dict(path))
    except ValueError as e:
        raise UsageError(f"{e}: give one of our checkpoints or a published DeiT/darvit file") from e


# ---------------------------------------------------------------- the checkpoint's model arguments


def checkpoint_source(args) -> str | None:
    """The checkpoint whose model this run continues: --eval's --checkpoint, or --resume (``auto``:
    the output dir's last.pth when there is one). --pretrained gives weights only: the flags say
    which model they go into."""
    if args.eval:
        if not (args.checkpoint or args.pretrained):
            raise UsageError("--eval needs --checkpoint PATH (one of our checkpoints or a published DeiT/darvit file)")
        return args.checkpoint
    return resume_path(args.resume, args.output_dir)


def given_flags(args, argv: list[str] | None) -> set[str]:
    """The destinations the user set: on the command line, or (differing from the built-in
    default) in the --config file."""
    parser = build_parser()
    given = {a.dest for a in parser._actions if getattr(args, a.dest, a.default) != a.default}
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return given | set(vars(parser.parse_known_args(argv)[0]))


def adopt_model_args(args, ckpt: dict, source: str, given: set[str]) -> None:
    """Take the model flags (``MODEL_FLAGS``) the checkpoint was trained with as the defaults;
    refuse a given flag that disagrees with them."""
    stored = dict(ckpt.get("args") or {}, model=ckpt["model_name"])
    for dest in MODEL_FLAGS:
        if dest not in stored:
            continue
        if dest not in given:
            setattr(args, dest, stored[dest])
        elif getattr(args, dest) != stored[dest]:
            theirs = "the model's default" if stored[dest] is None else repr(stored[dest])
            raise UsageError(
                f"{flag(dest)} {getattr(args, dest)!r} disagrees with {source}, which was trained with {flag(dest)} "
                f"{theirs}: drop {flag(dest)} (the checkpoint's value is the default), or load its weights into "
                "the model the flags describe with --pretrained PATH"
            )


# ---------------------------------------------------------------- evaluation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(args, ctx: DistContext):
    enabled = ctx.device.type == "cuda" and args.amp_dtype != "none"
    dtype = torch.float16 if args.amp_dtype == "float16" else torch.bfloat16
    return torch.autocast(device_type=ctx.device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def evaluate(model, loader, args, ctx: DistContext, num_classes: int) -> dict:
    """Top-1/top-5 (%), mean loss and model images/s over the whole val/ split (all ranks), and
    for DART models the images whose scores fell back to a uniform grid (``score_fallbacks``,
    summed over the ranks: the evaluation's own, as training logs and clears its counts)."""
    model.eval()
    k = min(5, num_classes)
    totals = torch.zeros(4, dtype=torch.float64)  # top-1 hits, top-k hits, images, loss sum
    model_seconds = 0.0
    for images, targets in tqdm(loader, desc="eval", disable=args.no_progress or not ctx.is_main, leave=False):
        images = images.to(ctx.device, non_blocking=True)
        targets = targets.to(ctx.device, non_blocking=True)
        _sync(ctx.device)
        start = time.perf_counter()
        with autocast(args, ctx):
            logits = model(images)
        _sync(ctx.device)
        model_seconds += time.perf_counter() - start
        hits = logits.topk(k, dim=1).indices.eq(targets[:, None])
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        totals += torch.tensor([hits[:, 0].sum().item(), hits.any(1).sum().item(), len(targets), loss.item()],
                               dtype=torch.float64)
    rate = totals[2] / model_seconds if model_seconds > 0 else torch.tensor(0.0, dtype=torch.float64)
    summed = all_reduce_sum(torch.cat([totals, rate.view(1)]).to(ctx.device)).cpu()
    n = max(summed[2].item(), 1.0)
    return {
        "top1": 100 * summed[0].item() / n,
        "top5": 100 * summed[1].item() / n,
        "loss": summed[3].item() / n,
        "images": int(summed[2].item()),
        "images_per_s": summed[4].item(),
        **fallback_fields(model),
    }


def model_stats(model: torch.nn.Module, input_size: int, device: torch.device) -> dict:
    """Parameters (all, incl. a DART scorer) and FLOPs per image (with the scorer)."""
    flops = count_flops(model, torch.zeros(1, 3, input_size, input_size, device=device))
    return {
        "params": count_params(model),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "gflops": flops / 1e9,
        "input_size": input_size,
    }


# ---------------------------------------------------------------- training


class Trainer:
    """Owns the training state; ``state_dict``/``load`` cover everything an exact resume needs."""

    def __init__(self, args, ctx: DistContext, model, num_classes: int, steps_per_epoch: int):
        self.args, self.ctx, self.model = args, ctx, model
        self.steps_per_epoch = steps_per_epoch
        self.optimizer = create_optimizer_v2(
            model, opt=args.opt, lr=scaled_lr(args, ctx.world_size), weight_decay=args.weight_decay, eps=args.opt_eps
        )
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
            min_lr=args.min_lr, warmup_lr=args.warmup_lr, step_on_epochs=False, updates_per_epoch=steps_per_epoch,
        )
        fp16 = ctx.device.type == "cuda" and args.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=fp16)
        self.ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
        net = wrap_ddp(model, ctx)
        self.ddp = net if ctx.world_size > 1 else None
        self.net = torch.compile(net) if args.compile else net
        self.mixup = build_mixup(args, num_classes)
        if self.mixup is not None:
            self.criterion = SoftTargetCrossEntropy()
        elif args.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(args.smoothing)
        else:
            self.criterion = torch.nn.CrossEntropyLoss()
        self.epoch, self.step_in_epoch, self.global_step, self.best_top1 = 0, 0, 0, None
        self.epoch_loss = RunningMean()  # this epoch's training loss so far (kept across a resume)

    def state_dict(self, classes: list[str]) -> dict:
        rng = all_gather_objects(capture_rng_state())  # every rank's RNGs (collective)
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.args.model,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_loss": self.epoch_loss.state_dict(),
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.ctx.world_size,
            "batch_size": self.args.batch_size,
            "accum_steps": self.args.accum_steps,
            "rng": rng,
            "classes": list(classes),
            "best_top1": self.best_top1,
            "args": plain_args(self.args),
        }

    def save(self, classes: list[str], best: bool = False) -> None:
        state = self.state_dict(classes)
        if self.ctx.is_main:
            save_last_and_best(state, self.args.output_dir, best)

    def load(self, path: str, num_classes: int) -> None:
        ckpt = load_checkpoint(path)
        if not (isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT):
            raise UsageError(f"{path} is not a pretrain_in1k checkpoint; start from other weights with --pretrained")
        state = fit_classifier(self.model, ckpt["model"], num_classes, path, self.args.data_dir)
        load_exact(self.model, state, source=path)
        try:  # the moments from the checkpoint; lr, decays and schedule from this run's flags
            resume_optimizer(self.optimizer, ckpt["optimizer"])
        except ValueError as error:
            raise UsageError(f"{path}: the optimizer's parameter groups differ ({error}); resume with the --opt "
                             "and --weight-decay of that run") from error
        resume_scaler(self.scaler, ckpt["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"])
        self.epoch, self.step_in_epoch = ckpt["epoch"], ckpt["step_in_epoch"]
        self.global_step, self.best_top1 = ckpt["global_step"], ckpt["best_top1"]
        if "epoch_loss" in ckpt:  # absent from checkpoints written before it was kept
            self.epoch_loss.load_state_dict(ckpt["epoch_loss"])
        same_layout = (ckpt["world_size"], ckpt["batch_size"], ckpt["accum_steps"], ckpt["steps_per_epoch"]) == (
            self.ctx.world_size, self.args.batch_size, self.args.accum_steps, self.steps_per_epoch)
        if self.step_in_epoch and not same_layout:
            raise UsageError(
                f"{path} was saved mid-epoch by {ckpt['world_size']} process(es) with batch {ckpt['batch_size']} x "
                f"{ckpt['accum_steps']} accumulation and {ckpt['steps_per_epoch']} steps per epoch; resume with "
                "the same settings and data, or from an epoch-end checkpoint"
            )
        if ckpt["world_size"] == self.ctx.world_size:
            restore_rng_state(ckpt["rng"][self.ctx.rank])
        else:
            seed_rank(self.args.seed + 1000 * self.epoch, self.ctx.rank)

    def train_step(self, batches) -> float:
        """One optimizer step over ``accum_steps`` micro-batches; returns the mean loss."""
        args, ctx = self.args, self.ctx
        self.scheduler.step_update(self.global_step)
        self.net.train()
        total = torch.zeros((), device=ctx.device)
        for micro in range(args.accum_steps):
            images, targets = next(batches)
            images = images.to(ctx.device, non_blocking=True)
            targets = targets.to(ctx.device, non_blocking=True)
            if self.mixup is not None:
                images, targets = self.mixup(images, targets)
            last = micro == args.accum_steps - 1
            no_sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with no_sync:
                with autocast(args, ctx):
                    loss = self.criterion(self.net(images), targets) / args.accum_steps
                self.scaler.scale(loss).backward()
            total += loss.detach().float()
        optimizer_update(self.optimizer, self.scaler, self.model.parameters(), args.clip_grad)
        self.global_step += 1
        self.step_in_epoch += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        value = total.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {self.global_step}; lower --lr/--blr or set --clip-grad")
        return value


def tensorboard_writer(args, ctx: DistContext):
    if not (args.tensorboard and ctx.is_main):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(args.output_dir, "tb"))


def log_train_scalars(writer, loss: float, lr: float, global_step: int) -> None:
    writer.add_scalar("train/loss", loss, global_step)
    writer.add_scalar("train/lr", lr, global_step)


def train(args, ctx: DistContext, model, train_ds, val_ds, logger: JsonlLogger, resume: str | None) -> dict:
    """Train from scratch, ``--pretrained`` weights, or the checkpoint ``resume``."""
    num_classes = len(train_ds.classes)
    if build_mixup(args, num_classes) is not None and args.batch_size % 2:
        raise UsageError(f"Mixup/CutMix need an even --batch-size, got {args.batch_size}")
    sampler = EpochSampler(len(train_ds), ctx.rank, ctx.world_size, repeats=args.repeated_aug, seed=args.seed)
    steps_per_epoch = sampler.epoch_length() // args.batch_size // args.accum_steps
    if steps_per_epoch == 0:
        raise UsageError(
            f"train/ gives each of the {ctx.world_size} process(es) {sampler.epoch_length()} images per epoch, fewer "
            f"than one optimizer step's {args.batch_size} x {args.accum_steps}; lower --batch-size/--accum-steps"
        )
    trainer = Trainer(args, ctx, model, num_classes, steps_per_epoch)
    if resume:
        trainer.load(resume, num_classes)
    else:
        if args.pretrained:
            state = fit_classifier(model, weights_from(args.pretrained), num_classes, args.pretrained, args.data_dir,
                                   reset_head=args.reset_head)
            load_exact(model, state, source=args.pretrained)
            if trainer.ema is not None:
                trainer.ema.module.load_state_dict(model.state_dict())
        seed_rank(args.seed, ctx.rank)
    logger.log(event="start", args=plain_args(args), world_size=ctx.world_size, steps_per_epoch=steps_per_epoch,
               lr=scaled_lr(args, ctx.world_size), resumed_from=resume, epoch=trainer.epoch,
               step_in_epoch=trainer.step_in_epoch)
    loader = make_loader(train_ds, sampler, args.batch_size, args, ctx, train=True)
    val_sampler = EpochSampler(len(val_ds), ctx.rank, ctx.world_size, shuffle=False, pad=False, seed=args.seed)
    val_loader = make_loader(val_ds, val_sampler, args.eval_batch_size, args, ctx, train=False)
    writer = tensorboard_writer(args, ctx)
    stats: dict = {}
    while trainer.epoch < args.epochs:
        epoch = trainer.epoch
        train_epoch(
            trainer, trainer.train_step, sampler, loader, steps_per_epoch, args.accum_steps * args.batch_size,
            log_interval=args.log_interval, ckpt_interval=args.ckpt_interval, logger=logger,
            save=lambda: trainer.save(train_ds.classes), progress=not args.no_progress and ctx.is_main,
            on_log=None if writer is None else lambda loss, lr: log_train_scalars(writer, loss, lr, trainer.global_step),
            kill_at_step=args.debug_kill_at_step, running=trainer.epoch_loss, model=model,
        )
        stats = evaluate(model, val_loader, args, ctx, num_classes)
        improved = trainer.best_top1 is None or stats["top1"] > trainer.best_top1
        trainer.best_top1 = stats["top1"] if improved else trainer.best_top1
        if trainer.ema is not None:
            stats.update({f"ema_{k}": v for k, v in evaluate(trainer.ema.module, val_loader, args, ctx,
                                                            num_classes).items()})
        trainer.epoch, trainer.step_in_epoch = epoch + 1, 0
        trainer.save(train_ds.classes, best=improved)
        record = dict(event="epoch", epoch=epoch, global_step=trainer.global_step,
                      train_loss=trainer.epoch_loss.mean, best_top1=trainer.best_top1, **stats)
        logger.log(**record)
        if writer is not None:
            for key in ("top1", "top5", "loss"):
                writer.add_scalar(f"val/{key}", stats[key], epoch)
        if ctx.is_main and args.no_progress:
            print(f"epoch {epoch}: top1 {stats['top1']:.2f} top5 {stats['top5']:.2f}", flush=True)
    if writer is not None:
        writer.close()
    return {"epoch": trainer.epoch, "global_step": trainer.global_step, "best_top1": trainer.best_top1, **stats}


def evaluate_only(args, ctx: DistContext, model, val_ds, input_size: int, logger: JsonlLogger) -> dict:
    source = args.checkpoint or args.pretrained
    num_classes = len(val_ds.classes)
    state = fit_classifier(model, weights_from(source, use_ema=args.eval_ema), num_classes, source, args.data_dir)
    load_exact(model, state, source=source)
    sampler = EpochSampler(len(val_ds), ctx.rank, ctx.world_size, shuffle=False, pad=False, seed=args.seed)
    stats = evaluate(model, make_loader(val_ds, sampler, args.eval_batch_size, args, ctx, train=False), args, ctx,
                     num_classes)
    stats.update(model_stats(model, input_size, ctx.device), checkpoint=source, model=args.model)
    logger.log(event="eval", **stats)
    if ctx.is_main:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()), flush=True)
    return stats


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> dict:
    """Train (or ``--eval``) as the flags say; returns the final metrics (all ranks)."""
    args = parse_args(argv)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    ctx = init_distributed(args.device)
    try:
        with leaving_process_group():
            return train_or_evaluate(args, argv, ctx)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def train_or_evaluate(args: argparse.Namespace, argv: list[str] | None, ctx: DistContext) -> dict:
    """Build the data and the model (adopting a checkpoint's model settings), then train, or with
    ``--eval`` evaluate; returns the final metrics."""
    source = checkpoint_source(args)
    if source is not None:
        ckpt = load_checkpoint(source)
        if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
            adopt_model_args(args, ckpt, source, given_flags(args, argv))
        del ckpt  # Trainer.load / weights_from read it again: no second copy stays in memory
    seed_everything(args.seed)  # identical model initialisation on every rank
    val_ds = image_folder(args.data_dir, "val", None)
    train_ds = None
    if not args.eval:
        train_ds = image_folder(args.data_dir, "train", None)
        check_same_classes(train_ds, val_ds)
    model = build_model(args, len(val_ds.classes)).to(ctx.device)
    input_size = args.input_size or default_input_size(model)
    check_input_size(model, input_size, ctx.device, args.model)
    train_tf, eval_tf = build_transforms(args, input_size)
    val_ds.transform = eval_tf
    if ctx.is_main:
        os.makedirs(args.output_dir, exist_ok=True)
    logger = JsonlLogger(os.path.join(args.output_dir, "log.jsonl"), enabled=ctx.is_main)
    if args.eval:
        return evaluate_only(args, ctx, model, val_ds, input_size, logger)
    train_ds.transform = train_tf
    return train(args, ctx, model, train_ds, val_ds, logger, source)


# What a command-line user changes when a checkpoint does not fit the model built.
MODEL_OPTIONS = "--model, --model-kwargs, --num-tokens, --scorer and --scorer-version"


def cli() -> None:
    try:
        with warnings_as_messages("pretrain_in1k"):
            main()
    except (UsageError, CheckpointError, CheckpointMismatchError) as e:
        problem = str(e) if isinstance(e, UsageError) else checkpoint_problem(e, "pretrain_in1k", MODEL_OPTIONS)
        print(f"pretrain_in1k: error: {problem}", file=sys.stderr)
        sys.exit(1)  # as every error after parsing (dart-core, dart-video); 2 is argparse's bad command line


if __name__ == "__main__":
    cli()
