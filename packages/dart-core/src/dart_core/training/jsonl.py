"""A JSON-lines logger: one JSON object per line, flushed at once, so a killed run loses nothing."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class JsonlLogger:
    """Append records to ``path`` (parent directories created). Disabled loggers do nothing,
    so every rank can hold one and only the main rank writes.

    Each record gets a ``time`` field (seconds since the epoch) unless it has one.
    """

    def __init__(self, path: str | os.PathLike | None, enabled: bool = True):
        self.path = os.fspath(path) if path is not None else None
        self.enabled = enabled and path is not None
        if self.enabled:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

    def log(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", time.time())
        line = json.dumps(_plain(record), sort_keys=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
