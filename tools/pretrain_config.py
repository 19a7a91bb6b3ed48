"""Command line and YAML configuration of tools/pretrain_in1k.py.

Precedence: built-in defaults (DeiT's recipe) < ``--config FILE.yaml`` < command-line flags.
YAML keys are the flag names, with dashes or underscores (``weight_decay: 0.05``).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from dart_core.training.arguments import SettingsError, mapping_arg, read_settings_file, typed_setting


class UsageError(Exception):
    """A problem with the user's input (paths, sizes, class counts): printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "pretrain_in1k",
        description="ImageNet-style (ImageFolder) training and evaluation of DART and baseline timm models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file of defaults (keys = flag names)")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="folder with train/ and val/ in ImageFolder layout")
    g.add_argument("--input-size", type=int, default=None,
                   help="square input side; default: the model's (448 for DART models, 224 for DeiT)")
    g.add_argument("--batch-size", type=int, default=128, help="images per process per micro-batch")
    g.add_argument("--eval-batch-size", type=int, default=None, help="default: --batch-size")
    g.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    g.add_argument("--crop-pct", type=float, default=0.875, help="evaluation centre-crop fraction")
    g.add_argument("--train-interpolation", default="bicubic")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="timm auto-augment policy ('none' = off)")
    g.add_argument("--color-jitter", type=float, default=0.3)
    g.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    g.add_argument("--remode", default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--repeated-aug", type=int, default=3, help="repeated augmentation count (1 = off)")
    g.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0 = off)")
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--mixup-mode", default="batch", choices=["batch", "pair", "elem"])
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="deit_tiny_dart_patch16_448", help="any timm.create_model name")
    g.add_argument("--model-kwargs", type=mapping_arg, default={}, help="extra create_model kwargs, e.g. '{depth: 2}'")
    g.add_argument("--drop-path", type=float, default=0.1)
    g.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward pass: less memory, about one more "
                        "forward pass of compute")
    g.add_argument("--num-tokens", type=int, default=None, help="DART token budget (default: the model's)")
    g.add_argument("--scorer", default=None, help="DART scorer backbone (torchvision preset or timm name)")
    g.add_argument("--scorer-weights", default=None, help="local weights file of the scorer backbone")
    g.add_argument("--scorer-version", default=None, choices=["v1", "v2"], help="DART score head version")
    g.add_argument("--pretrained", default=None,
                   help="initial weights: one of our checkpoints or a published (DeiT / darvit) file")
    g.add_argument("--reset-head", action="store_true",
                   help="with --pretrained: drop the classifier when its class count differs")
    g = p.add_argument_group("optimisation (DeiT defaults)")
    g.add_argument("--epochs", type=int, default=300)
    g.add_argument("--opt", default="adamw")
    g.add_argument("--lr", type=float, default=None, help="absolute learning rate; default: --blr scaled")
    g.add_argument("--blr", type=float, default=1e-3, help="learning rate per 1024 images of global batch")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--opt-eps", type=float, default=1e-8)
    g.add_argument("--clip-grad", type=float, default=None, help="gradient norm clip (default off)")
    g.add_argument("--sched", default="cosine")
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--model-ema", action="store_true", help="keep an exponential moving average")
    g.add_argument("--model-ema-decay", type=float, default=0.99996)
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default="runs/pretrain", help="checkpoints, logs, TensorBoard")
    g.add_argument("--resume", default=None, help="checkpoint to continue from, or 'auto' (output dir's last.pth)")
    g.add_argument("--eval", action="store_true", help="only evaluate --checkpoint (or --pretrained)")
    g.add_argument("--checkpoint", default=None, help="with --eval: our checkpoint or a published one")
    g.add_argument("--eval-ema", action="store_true", help="with --eval: evaluate the checkpoint's EMA weights")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    g.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16", "none"],
                   help="autocast dtype on GPU (CPU runs in float32)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact resume on CPU)")
    g.add_argument("--ckpt-interval", type=int, default=1000, help="also save last.pth every N optimizer steps")
    g.add_argument("--log-interval", type=int, default=50, help="optimizer steps between log lines")
    g.add_argument("--tensorboard", action="store_true")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--debug-kill-at-step", type=int, default=None, help=argparse.SUPPRESS)
    return p


def settings_from_file(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """The flag values a ``--config`` YAML file sets, each checked as its flag would check it
    (argparse converts only string defaults: ``epochs: 1.5`` would silently run 2 epochs).

    Raises:
        SettingsError: a missing or malformed file, an unknown key, a value of the wrong type or
            outside the flag's choices.
    """
    actions = {action.dest: action for action in parser._actions}
    values = read_settings_file(path)
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise SettingsError(f"config file {path!r} has unknown keys {unknown}; see --help for the names")
    for key, value in values.items():
        action = actions[key]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kind = bool
        elif isinstance(action, argparse._StoreAction) and action.nargs is None:
            kind = str if action.type is None else action.type if action.type in (int, float) else None
        else:
            kind = None
        if kind is not None:
            values[key] = value = typed_setting(path, key, value, kind, nullable=action.default is None)
        if action.choices is not None and value is not None and value not in action.choices:
            raise SettingsError(f"config file {path!r}: {key} is {value!r}, expected one of {list(action.choices)}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Defaults < YAML (--config) < flags."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        try:
            parser.set_defaults(**settings_from_file(parser, pre.config))
        except SettingsError as error:
            raise UsageError(str(error)) from error
    args = parser.parse_args(argv)
    if args.eval_batch_size is None:
        args.eval_batch_size = args.batch_size
    if args.data_dir is None:
        raise UsageError("--data-dir is required (a folder with train/ and val/ in ImageFolder layout)")
    for name in ("batch_size", "eval_batch_size", "accum_steps", "epochs", "repeated_aug", "ckpt_interval",
                 "log_interval"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.eval and args.resume:
        raise UsageError("--eval takes --checkpoint, not --resume")
    return args


def scaled_lr(args: argparse.Namespace, world_size: int) -> float:
    """``--lr`` if given, else ``--blr`` × global batch / 1024 (DeiT: 5e-4 per 512)."""
    if args.lr is not None:
        return args.lr
    return args.blr * args.batch_size * args.accum_steps * world_size / 1024


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as a JSON-able dict (stored in checkpoints and logs)."""
    return json.loads(json.dumps(vars(args), default=str))
