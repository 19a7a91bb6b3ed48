"""mmengine checkpoints under torch's weights-only loading, and atomic saves.

mmengine 0.10.7 loads local checkpoints with a bare ``torch.load(path)`` (``weights_only=True``
since torch 2.6), and its own checkpoints do not pass: the message hub pickles ``HistoryBuffer``
objects whose class dict holds bound methods, i.e. ``builtins.getattr`` calls, and allow-listing
``getattr`` would let a file reach any attribute of anything (code execution). So instead of
loosening the unpickler, the checkpoints are made plain:

* :class:`DartRunner` (``runner_type = 'DartRunner'`` in a config) writes the message hub's
  history buffers and numpy values as tensors and plain numbers
  (:func:`plain_message_hub`) and rebuilds them on load (:func:`restore_message_hub`), and it
  writes every checkpoint to a temporary file and renames it into place (an interrupted save
  never leaves a truncated checkpoint behind for ``resume``);
* importing :mod:`dart_dense` replaces mmengine's loader for local paths (the ``''`` scheme of
  :class:`mmengine.runner.CheckpointLoader`) with :func:`load_local_checkpoint`, which passes
  ``weights_only=True`` explicitly and names the problem when a file holds anything else.
"""

from __future__ import annotations

import os
import os.path as osp
from typing import Any

import numpy as np
import torch
from dart_core.training.checkpoint import CheckpointError, load_weights_only
from mmengine.dist import master_only
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import RUNNERS
from mmengine.runner import CheckpointLoader, Runner

BUFFER_TAG = "__history_buffer__"


def plain_message_hub(value: Any) -> Any:
    """Replace history buffers by tagged dicts of tensors, numpy arrays by tensors, numpy scalars by numbers."""
    if isinstance(value, HistoryBuffer):
        logs, counts = value.data
        return {BUFFER_TAG: True, "log_history": torch.from_numpy(np.asarray(logs, dtype=np.float64)),
                "count_history": torch.from_numpy(np.asarray(counts, dtype=np.int64)), "max_length": value.max_length}
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((k, plain_message_hub(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(plain_message_hub(v) for v in value)
    return value


def restore_message_hub(value: Any) -> Any:
    """The inverse of :func:`plain_message_hub` for the history buffers."""
    if isinstance(value, dict):
        if value.get(BUFFER_TAG):
            return HistoryBuffer(value["log_history"].tolist(), value["count_history"].tolist(), value["max_length"])
        return type(value)((k, restore_message_hub(v)) for k, v in value.items())
    return value


def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local loader with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable torch.save file (truncated, corrupt, another format),
            or it holds objects other than tensors and plain containers.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    try:  # nothing beyond tensors and plain containers is trusted here (no allow-list)
        return load_weights_only(filename, map_location, allowed=[])
    except CheckpointError as error:
        if error.refused is None:  # not a readable checkpoint at all (truncated, corrupt, another format)
            raise ValueError(str(error)) from error
        raise ValueError(
            f"{filename} is not a weights-only checkpoint: it holds objects that would run code on load "
            f"({', '.join(error.refused) or 'an object outside the allow-list'}). Checkpoints written by mmengine's "
            "plain Runner hold such objects; write them with runner_type='DartRunner', or keep only the weights: "
            "torch.save({'state_dict': ...}, path)."
        ) from error


load_local_checkpoint.__name__ = "load_from_local_weights_only"  # mmengine logs name[10:]
CheckpointLoader.register_scheme(prefixes="", loader=load_local_checkpoint, force=True)


@RUNNERS.register_module()
class DartRunner(Runner):
    """mmengine's Runner with plain (weights-only loadable) and atomic checkpoint saves."""

    def call_hook(self, fn_name: str, **kwargs) -> None:
        # Runner.save_checkpoint calls this hook last, just before writing: make the dict plain.
        # Runner.load_checkpoint calls after_load_checkpoint before resume reads the message hub.
        super().call_hook(fn_name, **kwargs)
        checkpoint = kwargs.get("checkpoint")
        if fn_name == "before_save_checkpoint" and "message_hub" in checkpoint:
            checkpoint["message_hub"] = plain_message_hub(checkpoint["message_hub"])
        elif fn_name == "after_load_checkpoint" and "message_hub" in checkpoint:
            checkpoint["message_hub"] = restore_message_hub(checkpoint["message_hub"])

    @master_only  # like Runner.save_checkpoint: only rank 0 writes
    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        temporary = f"{filename}.tmp"
        super().save_checkpoint(out_dir, temporary, *args, **kwargs)
        os.replace(osp.join(out_dir, temporary), osp.join(out_dir, filename))
