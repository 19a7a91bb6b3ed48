"""Checkpoints that never corrupt and never execute code.

``save_checkpoint`` writes to a temporary file in the destination's directory, fsyncs it, then
``os.replace``-s it over the destination (and fsyncs the directory), so a crash at any moment
leaves either the old file or the new one, never a torn one.

``load_checkpoint`` always uses ``torch.load(weights_only=True)``. Plain containers, numbers,
strings and tensors load as they are; the only extra Python classes allowed are those in
``SAFE_GLOBALS`` (what our checkpoints and the published DeiT-style ones legitimately hold) plus
any the caller names. Anything else is refused with an error naming the class.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
from collections.abc import Iterable
from typing import Any

import torch

# The one allow-list of the project: published DeiT / DART checkpoints store their training
# arguments as an argparse.Namespace (a plain attribute bag); nothing else needs code to load.
SAFE_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or holds something we refuse to unpickle."""


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """Atomically write ``obj`` with ``torch.save`` to ``path`` (parent directories are created)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    extra_safe_globals: Iterable[Any] = (),
) -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and the allow-list.

    Args:
        path: the file.
        map_location: where tensors go (default CPU).
        extra_safe_globals: further classes/functions the caller trusts this file to hold.

    Raises:
        CheckpointError: the file does not exist, or it holds a Python object outside the
            allow-list (the message names it and says how to allow it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (check the path).")
    allowed = list(SAFE_GLOBALS) + list(extra_safe_globals)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a zip checkpoint: fall back to torch's own message
            unsafe = []
        allowed_names = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', g)}" for g in allowed}
        unsafe = [u for u in unsafe if u not in allowed_names]
        what = ", ".join(unsafe) if unsafe else "an object outside the allow-list"
        raise CheckpointError(
            f"checkpoint {path!r} holds {what}, which weights-only loading refuses to unpickle. "
            "If you trust this file, pass the class(es) in extra_safe_globals; otherwise re-save "
            f"it with plain tensors and containers. (torch said: {str(e).splitlines()[0]})"
        ) from e
