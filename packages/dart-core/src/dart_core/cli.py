"""The ``dart-core`` command (also ``python -m dart_core``).

``dart-core visualize IMAGE`` runs a DART model's tokenizer on one image and saves a picture of
its score map, its partition and (``--mosaic``) the patches it sampled::

    dart-core visualize photo.jpg --checkpoint darvit-tiny.pth --out photo_dart.png

A checkpoint written by ``tools/pretrain_in1k.py`` also says how to build its model: the model name
(``model_name``), its ``create_model`` options (``args``: ``model_kwargs``, ``num_tokens``,
``scorer``, ``scorer_version``) and, through its classifier's shape, its class count; the model is
built from those (``--model`` and ``--num-tokens`` may be given too; a ``--model`` other than the
checkpoint's is an error).

Messages go to stderr; the exit status is 0 on success, 1 on an error (stated in one line).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform

from .checkpoint import checkpoint_problem, convert_published_state_dict, load_exact, state_dict_in
from .console import warnings_as_messages
from .models.data_config import built_data_config
from .sampling import sample_patches
from .tokenizer import DART
from .training.arguments import DART_MODEL_FLAGS
from .training.checkpoint import CheckpointError, load_checkpoint
from .visualize import partition_overview, save_png

DEFAULT_MODEL = "deit_tiny_dart_patch16_448"


class CommandError(Exception):
    """A user error: the message says what is wrong and how to fix it."""


def log(message: str) -> None:
    print(f"dart-core: {message}", file=sys.stderr, flush=True)


def load_image(path: str) -> Image.Image:
    """Read an image file as RGB, or raise :class:`CommandError`."""
    if not os.path.isfile(path):
        raise CommandError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise CommandError(f"{path} is not an image Pillow can read (PNG, JPEG, ...): {error}") from error


def dart_model_names() -> list[str]:
    """The timm model names that carry a DART tokenizer (registered on ``import dart_core``)."""
    return timm.list_models("*dart*")



def checkpoint_recipe(stored: Any) -> tuple[str | None, dict[str, Any]]:
    """The model name and ``create_model`` kwargs a loaded checkpoint of ``tools/pretrain_in1k.py``
    stores (``model_name``; ``args`` as a plain dict: ``model``, ``model_kwargs``, ``num_tokens``,
    ``scorer``, ``scorer_version``). Other files (a published ``darvit-*.pth`` stores the
    ``argparse.Namespace`` of another code base, a bare state dict stores nothing) give
    ``(None, {})``."""
    if not isinstance(stored, Mapping):
        return None, {}
    args = stored.get("args")
    args = args if isinstance(args, Mapping) else {}
    kwargs = dict(args.get("model_kwargs") or {})
    # the run's scorer weights file is not read again: the checkpoint holds the weights
    kwargs.update({key: args[flag] for key, flag in DART_MODEL_FLAGS.items()
                   if key != "scorer_weights" and args.get(flag) is not None})
    return stored.get("model_name") or args.get("model"), kwargs


def build_model(
    name: str | None,
    checkpoint: str | None = None,
    num_tokens: int | None = None,
    scorer_weights: str | None = None,
) -> torch.nn.Module:
    """Create a registered DART model in eval mode, optionally loading a checkpoint (a published
    ``darvit-*.pth`` or one of ours); raises :class:`CommandError` on bad input.

    ``name`` None: the checkpoint's stored model name, else :data:`DEFAULT_MODEL`. The model gets
    the checkpoint's stored ``create_model`` options (:func:`checkpoint_recipe`) and its classifier's
    class count (``head.weight``); ``num_tokens`` and ``scorer_weights`` override them."""
    if num_tokens is not None and num_tokens < 1:
        raise CommandError(f"--num-tokens must be at least 1, got {num_tokens}")
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise CommandError(f"checkpoint file not found: {checkpoint}")
    if scorer_weights is not None and not os.path.isfile(scorer_weights):
        raise CommandError(f"scorer weights file not found: {scorer_weights}")
    kwargs: dict[str, Any] = {}
    state = None
    if checkpoint is not None:
        try:
            stored = load_checkpoint(checkpoint)  # read once: the recipe and the weights
            stored_name, kwargs = checkpoint_recipe(stored)
            state = convert_published_state_dict(state_dict_in(stored, checkpoint))
        except CheckpointError as error:
            raise CommandError(checkpoint_problem(error, "dart-core", "--model and --num-tokens")) from error
        except (FileNotFoundError, ValueError, RuntimeError) as error:
            raise CommandError(str(error)) from error
        if name is not None and stored_name is not None and name != stored_name:
            raise CommandError(f"{checkpoint} holds a {stored_name!r} model, not {name!r}: pass --model "
                               f"{stored_name} (or leave --model out)")
        name = name or stored_name
        head = state.get("head.weight")
        if head is not None:
            kwargs["num_classes"] = head.shape[0]
    name = name or DEFAULT_MODEL
    if name not in dart_model_names():
        raise CommandError(f"unknown model {name!r}; DART models are: {', '.join(dart_model_names())}")
    kwargs.update((key, value) for key, value in (("num_tokens", num_tokens), ("scorer_weights", scorer_weights))
                  if value is not None)
    log(f"building {name}" + (f" from {checkpoint}" if checkpoint else " (random weights)"))
    try:
        model = timm.create_model(name, **kwargs)
    except TypeError as error:
        raise CommandError(f"cannot build {name!r} with {kwargs}: {error}") from error
    if not isinstance(getattr(model, "patch_embed", None), DART):
        raise CommandError(f"model {name!r} has no DART tokenizer (patch_embed is not dart_core.DART)")
    if state is not None:
        try:
            load_exact(model, state, source=str(checkpoint))
        except (ValueError, RuntimeError) as error:
            raise CommandError(str(error)) from error
    return model.eval()


def visualize(args: argparse.Namespace) -> None:
    image = load_image(args.image)
    model = build_model(args.model, args.checkpoint, args.num_tokens, args.scorer_weights)
    config = built_data_config(model)
    inputs = create_transform(**config, is_training=False)(image).unsqueeze(0)
    tokenizer: DART = model.patch_embed
    with torch.no_grad():
        details = tokenizer(inputs, return_details=True)
        patches = sample_patches(inputs, details.partition, tokenizer.patch_size[0]) if args.mosaic else None
    picture = partition_overview(
        inputs, details.partition, scores=details.scores, patches=patches, mean=config["mean"], std=config["std"]
    )
    out = args.out or os.path.splitext(os.path.basename(args.image))[0] + "_dart.png"
    save_png(picture, out)
    log(f"{details.partition.num_tokens} tokens in {details.partition.num_rows} rows on a "
        f"{inputs.shape[-2]}x{inputs.shape[-1]} input; wrote {out}")


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="dart-core", description="DART: content-adaptive tokenization tools")
    commands = main_parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser(
        "visualize", help="draw a model's score map and partition over an image",
        description="Run a DART model's tokenizer on IMAGE (resized and cropped to the model's input) and save "
                    "its score heat map and partition, side by side, as a PNG.",
    )
    show.add_argument("image", metavar="IMAGE", help="an image file (PNG, JPEG, ...)")
    show.add_argument("--model", help=f"a DART timm model name (default: the checkpoint's, else {DEFAULT_MODEL})")
    show.add_argument("--checkpoint", help="model weights: a published darvit-*.pth or a checkpoint of ours, whose "
                                           "stored model name, options and class count are used "
                                           "(without one the scorer is random)")
    show.add_argument("--num-tokens", type=int, help="token budget N (default: the model's)")
    show.add_argument("--scorer-weights", help="weights file for the scorer's backbone (torchvision/timm state dict)")
    show.add_argument("--out", help="output PNG (default: IMAGE's name + _dart.png in the current folder)")
    show.add_argument("--mosaic", action="store_true", help="add a panel of the sampled patches")
    show.set_defaults(run=visualize)
    return main_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        with warnings_as_messages("dart-core"):
            args.run(args)
    except CommandError as error:
        log(f"error: {error}")
        return 1
    return 0
