"""Command-line argument types shared by the training tools."""

from __future__ import annotations

import argparse

import yaml


def mapping_arg(text: str) -> dict:
    """An argparse ``type=``: a YAML/JSON mapping such as ``'{depth: 2}'`` → dict."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"not a YAML/JSON mapping: {text!r} ({e})") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping such as '{{depth: 2}}', got {text!r}")
    return value
