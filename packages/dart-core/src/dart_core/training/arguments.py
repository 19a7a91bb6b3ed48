"""Command-line argument types shared by the training tools."""

from __future__ import annotations

import argparse

import yaml

# The DART models' create_model keyword arguments → the training tools' flag (argparse dest) that
# sets each (``tools/pretrain_in1k.py`` passes them; ``dart-core visualize`` reads them back from its
# checkpoints).
DART_MODEL_FLAGS = {"scorer_backbone": "scorer", "scorer_weights": "scorer_weights", "scorer_version": "scorer_version",
                    "num_tokens": "num_tokens"}


def mapping_arg(text: str) -> dict:
    """An argparse ``type=``: a YAML/JSON mapping of keyword arguments such as ``'{depth: 2}'`` → dict.

    Refuses what YAML accepts but cannot be meant: ``'{depth:2}'`` (no space after the colon) is a
    flow mapping with the one key ``'depth:2'`` and no value, and keyword arguments without a value
    (``None``) are silently dropped by ``timm.create_model``.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"not a YAML/JSON mapping: {text!r} ({e})") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping such as '{{depth: 2}}', got {text!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            name, colon, rest = str(key).partition(":")
            hint = f" (write '{{{name}: {rest}}}', a space after each colon)" if colon else ""
            raise argparse.ArgumentTypeError(f"{text!r}: key {key!r} is not an argument name{hint}")
        if item is None:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {key!r} has no value; write '{{{key}: VALUE}}' (a space after each colon)"
            )
    return value
