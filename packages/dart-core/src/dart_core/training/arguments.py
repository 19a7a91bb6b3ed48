"""Command-line argument types and settings files shared by the training tools."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Mapping
from typing import Any

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


class SettingsError(ValueError):
    """A settings file (``--config FILE.yaml``) or one of its values that cannot be used."""


def read_settings_file(path: str) -> dict[str, Any]:
    """A YAML file of ``name: value`` settings → dict, with dashes in names read as underscores.

    Raises:
        SettingsError: the file is missing, is not valid YAML (line and column named), or does
            not hold a mapping.
    """
    if not os.path.isfile(path):
        raise SettingsError(f"config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as error:
        raise SettingsError(f"config file {path!r} is not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(values, dict):
        raise SettingsError(f"config file {path!r} must hold a mapping of setting names to values")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def typed_setting(path: str, key: str, value: Any, kind: type, nullable: bool = False) -> Any:
    """A settings-file value checked against the type its flag takes: ints pass for floats, and
    strings (YAML reads ``1e-3`` as one) are converted as the flag would convert them; anything
    else (``epochs: 1.5``, ``batch-size: 4.0``, ``amp: yes please``) is a :class:`SettingsError`."""
    if value is None and nullable:
        return None
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(value)
    expected = ("a mapping" if kind is dict else kind.__name__) + (" or null" if nullable else "")
    raise SettingsError(f"config file {path!r}: {key} is {value!r}, expected {expected}")


def refuse_flag_kwargs(model_kwargs: Mapping[str, Any], flags: Mapping[str, str], classes_from: str) -> None:
    """Refuse ``--model-kwargs`` keys a tool passes to ``create_model`` itself (which would crash with
    "got multiple values for keyword argument"): ``num_classes``, which comes from the data
    (``classes_from`` says how), and the keys of ``flags`` (argument name → the flag that sets it).

    Raises:
        SettingsError: naming the key and the flag to use instead.
    """
    for key in model_kwargs:
        if key == "num_classes":
            raise SettingsError(f"--model-kwargs cannot set 'num_classes': it comes from the data ({classes_from})")
        if key in flags:
            raise SettingsError(f"--model-kwargs cannot set {key!r}, which {flags[key]} sets: use {flags[key]} alone")


def unexpected_keyword(error: TypeError) -> str | None:
    """The argument name in Python's "got an unexpected keyword argument 'x'" message (None for any
    other TypeError): the training tools name the flag or ``--model-kwargs`` key a model refused."""
    found = re.search(r"unexpected keyword argument '([^']+)'", str(error))
    return found.group(1) if found else None
