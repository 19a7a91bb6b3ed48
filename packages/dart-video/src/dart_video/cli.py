"""The ``dart-video`` command (also ``python -m dart_video``).

* ``dart-video train --data ROOT --out DIR [--config videomamba_tiny_dart_ssv2_8f] [--FLAG VALUE ...]``:
  train a VideoMamba (+ DART) model on SSv2 (``--format ssv2``, the official layout) or on
  ``path label`` list files (``--format list --train-list F --val-list F``). Settings come from
  :mod:`dart_video.recipes` (defaults < preset or YAML < flags). Progress bars, JSON lines in
  ``DIR/log.jsonl``, atomic ``DIR/last.pth`` (every ``--ckpt-interval`` steps and epoch) and
  ``DIR/best.pth``; ``--resume auto`` (or a path) continues exactly (a DIR holding another run's
  checkpoints is refused without ``--resume`` or ``--overwrite``). Several processes:
  ``torchrun --nproc_per_node=8 -m dart_video train ...`` (DDP; gloo on the CPU).
* ``dart-video eval --data ROOT --checkpoint CKPT``: top-1 / top-5 accuracy, parameters, FLOPs
  and clips/s as one JSON line (the model settings default to those stored in one of our
  checkpoints; the data's classes are matched to the checkpoint's by name). Each video is scored
  on ``--test-clips`` temporal clips × ``--test-crops`` spatial crops (2 × 3 in the SSv2 presets,
  as the VideoMamba release tests), softmax averaged per video.
* ``dart-video visualize VIDEO --out PNG``: the tall-frame partition of one clip (its flags are the
  model settings, ``--device`` and ``--threads`` only).

Model weights load from local files only (``--init`` for VideoMamba-layout or image checkpoints,
``--checkpoint`` for ours). Messages go to stderr; exit status 0 on success, 1 on an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
from collections.abc import Iterator, Sequence

import torch
from dart_core.checkpoint import CheckpointMismatchError, checkpoint_problem, read_state_dict
from dart_core.console import warnings_as_messages
from dart_core.training import (
    CheckpointError,
    DistContext,
    count_flops,
    count_params,
    init_distributed,
    leaving_process_group,
    load_checkpoint,
    seed_everything,
)
from dart_core.visualize import partition_overview, save_png

from . import data
from .checkpoint import load_video_checkpoint
from .engine import CHECKPOINT_FORMAT, TrainingError, build_model, eval_loader, evaluate, fit
from .recipes import ConfigError, TrainConfig, add_config_flags, config_from_args
from .tokenizer import VideoDART, frames_to_tall


class CommandError(Exception):
    """A user error: the message says what is wrong and how to fix it."""


def log(message: str) -> None:
    print(f"dart-video: {message}", file=sys.stderr, flush=True)


def load_samples(root: str, config: TrainConfig, split: str,
                 num_classes: int | None = None) -> tuple[list[data.VideoSample], list[str]]:
    """Samples of ``split`` ("train" or "validation") and the class names. List files have the
    classes ``"0" .. str(C - 1)`` with C = ``num_classes`` (e.g. a checkpoint's), else
    ``--num-classes``, else the largest label + 1."""
    if not os.path.isdir(root):
        raise CommandError(f"data folder not found: {root}")
    if config.format == "ssv2":
        try:
            return data.read_ssv2(root, split)
        except (FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from error
    list_file = config.train_list if split == "train" else config.val_list
    if not list_file or not os.path.isfile(list_file):
        raise CommandError(f"--format list needs an existing --{'train' if split == 'train' else 'val'}-list file")
    count = num_classes or config.num_classes
    try:
        samples = data.read_list_file(list_file, root, count)
    except ValueError as error:
        raise CommandError(str(error)) from error
    count = count or max(s.label for s in samples) + 1
    return samples, [str(i) for i in range(count)]


# Settings that name files whose weights a full checkpoint of ours already holds.
WEIGHT_FILE_SETTINGS = ("init", "init_image", "scorer_weights")
# Settings of the machine that trained, not of the model: eval and visualize use this machine's.
MACHINE_SETTINGS = ("device", "threads", "workers")


def run_checkpoint(path: str | None) -> dict:
    """One of our training checkpoints ({} for no path or for other files, e.g. VideoMamba's)."""
    if not path or not os.path.isfile(path):
        return {}
    ckpt = load_checkpoint(path)
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT else {}


def stored_config(ckpt: dict) -> dict:
    """The settings stored in a checkpoint of ours, less those naming the training run's weight
    files (``--init``, ``--scorer-weights``: the checkpoint's own weights replace them) and those
    of the machine it trained on (``--device``, ``--threads``, ``--workers``)."""
    dropped = WEIGHT_FILE_SETTINGS + MACHINE_SETTINGS
    return {k: v for k, v in ckpt.get("config", {}).items() if k not in dropped}


def match_classes(samples: list[data.VideoSample], classes: list[str], trained: list[str],
                  checkpoint: str) -> list[data.VideoSample]:
    """``samples`` relabelled to the checkpoint's class order ``trained`` (matched by name), or a
    :class:`CommandError` when the data set holds other classes."""
    if classes == trained:
        return samples
    if sorted(classes) != sorted(trained):
        unknown, missing = sorted(set(classes) - set(trained)), sorted(set(trained) - set(classes))
        raise CommandError(
            f"{checkpoint} was trained on other classes than the data's: {len(unknown)} of the data's classes are "
            f"unknown to it (e.g. {unknown[:3]}) and {len(missing)} of its {len(trained)} classes are missing "
            f"(e.g. {missing[:3]}); evaluate it on the data set it was trained for")
    order = {name: index for index, name in enumerate(trained)}
    return [data.VideoSample(s.path, order[classes[s.label]]) for s in samples]


@contextlib.contextmanager
def session(config: TrainConfig) -> Iterator[DistContext]:
    """Threads, determinism and the process group for one command; the process group is left
    (waiting for the other ranks only on success), threads and determinism restored afterwards."""
    was_deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        ctx = init_distributed(config.device)
    except (ValueError, RuntimeError) as error:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
        raise CommandError(str(error)) from error
    try:
        with leaving_process_group():
            yield ctx
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)


def prepare_out(out: str, resume: str | None, overwrite: bool) -> None:
    """Create the output folder; refuse a file, and a folder holding another run's checkpoints
    unless the run is resumed or ``overwrite`` is set."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CommandError(f"--out {out} is a file; pass a folder (it is created if missing)")
    held = [name for name in ("last.pth", "best.pth") if os.path.isfile(os.path.join(out, name))]
    if held and not resume and not overwrite:
        raise CommandError(f"{out} already holds {' and '.join(held)} of another run: continue it with --resume auto, "
                           "write to a new --out, or pass --overwrite to replace it")
    os.makedirs(out, exist_ok=True)


def train(args: argparse.Namespace) -> dict:
    config = config_from_args(args, training=True)
    with session(config) as ctx:
        seed_everything(config.seed)  # the same initial weights on every rank
        train_samples, classes = load_samples(args.data, config, "train")
        val_samples, val_classes = load_samples(args.data, config, "validation", num_classes=len(classes))
        if config.format == "ssv2" and classes != val_classes:
            raise CommandError("train and validation read different labels.json classes")
        model = build_model(config, len(classes)).to(ctx.device)
        prepare_out(args.out, resume=args.resume, overwrite=args.overwrite)
        return fit(config, ctx, model, train_samples, val_samples, classes, args.out, resume=args.resume,
                   kill_at_step=args.debug_kill_at_step)


def model_stats(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> dict:
    """Parameters and forward GFLOPs per clip (a DART scorer included)."""
    clip = torch.zeros(1, 3, config.num_frames, config.img_size, config.img_size, device=device)
    if isinstance(model.patch_embed, VideoDART):
        tokens = model.patch_embed.num_tokens
    else:
        tokens = config.num_frames * model.patch_embed.frame_grid_size[0] * model.patch_embed.frame_grid_size[1]
    return {"params": count_params(model), "gflops": count_flops(model, clip) / 1e9, "tokens": int(tokens)}


def eval_command(args: argparse.Namespace) -> dict:
    ckpt = run_checkpoint(args.checkpoint)
    config = config_from_args(args, base=stored_config(ckpt))
    with session(config) as ctx:
        trained = ckpt.get("classes")
        samples, classes = load_samples(args.data, config, args.split, num_classes=len(trained) if trained else None)
        if trained:
            samples, classes = match_classes(samples, classes, list(trained), args.checkpoint), list(trained)
        model = build_model(config, len(classes)).to(ctx.device)
        if args.checkpoint:
            try:
                load_video_checkpoint(model, args.checkpoint)
            except (FileNotFoundError, ValueError, CheckpointMismatchError) as error:
                raise CommandError(str(error)) from error
        loader = eval_loader(samples, config, ctx, views=(config.test_clips, config.test_crops))
        result = {**evaluate(model, loader, config, ctx), **model_stats(model, config, ctx.device),
                  "views": [config.test_clips, config.test_crops], "model": config.model, "checkpoint": args.checkpoint}
        if ctx.is_main:
            print(json.dumps(result), flush=True)
        return result


# The settings `visualize` reads (its only flags): those that build the model, which a checkpoint
# of ours supplies, and where the tokenizer runs (this machine's: a checkpoint's are not used).
VISUALIZE_MODEL_SETTINGS = ("model", "num_frames", "img_size", "num_tokens", "scorer_weights", "model_kwargs",
                            "init", "init_image", "num_classes")
VISUALIZE_SETTINGS = (*VISUALIZE_MODEL_SETTINGS, "device", "threads")


def visualize(args: argparse.Namespace) -> dict:
    stored = stored_config(run_checkpoint(args.checkpoint))
    config = config_from_args(args, base={k: v for k, v in stored.items() if k in VISUALIZE_MODEL_SETTINGS})
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise CommandError(f"checkpoint not found: {args.checkpoint}")
    try:
        frames = data.read_frames(args.video, config.num_frames, False, random.Random(0))
    except data.VideoDecodeError as error:
        raise CommandError(str(error)) from error
    clip = data.clip_transform(frames, config.img_size, False, random.Random(0)).unsqueeze(0)
    num_classes = config.num_classes or 174
    if args.checkpoint:
        head = read_state_dict(args.checkpoint).get("head.weight")
        num_classes = num_classes if head is None else head.shape[0]
    with session(config) as ctx:
        model = build_model(config, num_classes).eval()
        if not isinstance(model.patch_embed, VideoDART):
            raise CommandError(f"model {config.model!r} has no DART tokenizer; pick a *_dart_* model")
        if args.checkpoint:
            try:
                load_video_checkpoint(model, args.checkpoint)
            except (ValueError, CheckpointMismatchError) as error:
                raise CommandError(str(error)) from error
        with torch.no_grad():
            details = model.patch_embed.to(ctx.device)(clip.to(ctx.device), return_details=True)
    picture = partition_overview(frames_to_tall(clip), details.partition, scores=details.scores,
                                 mean=data.IMAGENET_MEAN, std=data.IMAGENET_STD)
    out = args.out or os.path.splitext(os.path.basename(args.video))[0] + "_dart.png"
    save_png(picture, out)
    log(f"{details.partition.num_tokens} tokens in {details.partition.num_rows} rows over {config.num_frames} "
        f"frames; wrote {out}")
    return {"out": out}


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="dart-video", description="DART for video: train, evaluate, visualize")
    commands = main_parser.add_subparsers(dest="command", required=True)
    fit_cmd = commands.add_parser("train", help="train a VideoMamba (+ DART) classifier")
    fit_cmd.add_argument("--data", required=True, help="SSv2 root, or the folder list-file paths are relative to")
    fit_cmd.add_argument("--out", required=True, help="output folder (log.jsonl, last.pth, best.pth)")
    fit_cmd.add_argument("--resume", help="continue from a last.pth written by this command, or 'auto'")
    fit_cmd.add_argument("--overwrite", action="store_true",
                         help="replace the last.pth / best.pth of another run in --out (default: refuse)")
    fit_cmd.add_argument("--debug-kill-at-step", type=int, help=argparse.SUPPRESS)
    add_config_flags(fit_cmd)
    fit_cmd.set_defaults(run=train)
    test = commands.add_parser("eval", help="top-1 / top-5 accuracy, FLOPs and speed of a checkpoint")
    test.add_argument("--data", required=True, help="SSv2 root, or the folder list-file paths are relative to")
    test.add_argument("--checkpoint", help="weights to evaluate (ours or VideoMamba-layout)")
    test.add_argument("--split", choices=("train", "validation"), default="validation")
    add_config_flags(test)
    test.set_defaults(run=eval_command)
    show = commands.add_parser("visualize", help="draw the tall-frame partition of one clip")
    show.add_argument("video", metavar="VIDEO", help="a video file")
    show.add_argument("--checkpoint", help="one of our checkpoints (without it the scorer is random)")
    show.add_argument("--out", help="output PNG (default: VIDEO's name + _dart.png)")
    add_config_flags(show, VISUALIZE_SETTINGS)
    show.set_defaults(run=visualize)
    return main_parser


# What a command-line user changes when a checkpoint does not fit the model built.
MODEL_OPTIONS = "--model, --model-kwargs, --num-frames and --num-tokens"


def run(argv: Sequence[str] | None = None) -> dict:
    """Run a command and return its result; user errors raise :class:`CommandError`."""
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except CheckpointError as error:
        raise CommandError(checkpoint_problem(error, "dart-video", MODEL_OPTIONS)) from error
    except (ConfigError, TrainingError) as error:
        raise CommandError(str(error)) from error


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        with warnings_as_messages("dart-video"):
            run(argv)
    except CommandError as error:
        log(f"error: {error}")
        return 1
    return 0
