"""mmengine checkpoints under torch's weights-only loading, and atomic saves.

mmengine 0.10.7 loads local checkpoints with a bare ``torch.load(path)`` (``weights_only=True``
since torch 2.6), and its own checkpoints do not pass: the message hub pickles ``HistoryBuffer``
objects whose class dict holds bound methods, i.e. ``builtins.getattr`` calls, and allow-listing
``getattr`` would let a file reach any attribute of anything (code execution). So instead of
loosening the unpickler, the checkpoints are made plain:

* :class:`DartRunner` (``runner_type = 'DartRunner'`` in a config) writes the message hub's
  history buffers and numpy values as tensors and plain numbers
  (:func:`plain_message_hub`) and rebuilds them on load (:func:`restore_message_hub`); it
  writes every checkpoint atomically (:func:`dart_core.training.atomic_path`: an interrupted
  save never leaves a truncated checkpoint behind for ``resume``), and it saves every rank's
  random number generator states and restores them on resume, so a resumed run draws the same
  flips and dropout masks as the uninterrupted one;
* importing :mod:`dart_dense` replaces mmengine's loader for local paths (the ``''`` scheme of
  :class:`mmengine.runner.CheckpointLoader`) with :func:`load_local_checkpoint`, which passes
  ``weights_only=True`` explicitly and names the problem when a file holds anything else.
"""

from __future__ import annotations

import os.path as osp
from typing import Any

import numpy as np
import torch
from dart_core.training import (
    all_gather_objects,
    atomic_path,
    capture_rng_state,
    keep_fallback_counters_per_rank,
    restore_rng_state,
)
from dart_core.training.checkpoint import CheckpointError, load_weights_only
from mmengine.dist import get_rank, get_world_size, is_main_process
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import RUNNERS
from mmengine.runner import CheckpointLoader, Runner

from .fallback_hook import ScoreFallbackHook

BUFFER_TAG = "__history_buffer__"
RNG_KEY = "dart_rng"  # one capture_rng_state() per rank, in rank order


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


class CheckpointFileError(ValueError):
    """A checkpoint file that is not a readable torch.save file, or that holds objects other than
    tensors and plain containers."""


def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local loader with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointFileError: the file is not a readable torch.save file (truncated, corrupt, another
            format), or it holds objects other than tensors and plain containers.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    try:  # nothing beyond tensors and plain containers is trusted here (no allow-list)
        return load_weights_only(filename, map_location, allowed=[])
    except CheckpointError as error:
        if error.refused is None:  # not a readable checkpoint at all (truncated, corrupt, another format)
            raise CheckpointFileError(str(error)) from error
        raise CheckpointFileError(
            f"{filename} is not a weights-only checkpoint: it holds objects that would run code on load "
            f"({', '.join(error.refused) or 'an object outside the allow-list'}). Checkpoints written by mmengine's "
            "plain Runner hold such objects; write them with runner_type='DartRunner', or keep only the weights: "
            "torch.save({'state_dict': ...}, path)."
        ) from error


load_local_checkpoint.__name__ = "load_from_local_weights_only"  # mmengine logs name[10:]
CheckpointLoader.register_scheme(prefixes="", loader=load_local_checkpoint, force=True)


class RestoreRngBeforeFetch:
    """Wraps the train loop's data iterator: restores ``state`` just before fetch number ``skips``.

    On resume mmengine's ``IterBasedTrainLoop`` re-fetches (and drops) the batches of the
    iterations already done, which replays their data draws but not the model's (dropout), so
    the generators are restored after that replay, before the first new batch is drawn.
    """

    def __init__(self, iterator, skips: int, state: dict):
        self.iterator, self.skips, self.state, self.fetched = iterator, skips, state, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.fetched == self.skips:
            restore_rng_state(self.state)
        self.fetched += 1
        return next(self.iterator)

    def __getattr__(self, name: str):
        return getattr(self.iterator, name)


@RUNNERS.register_module()
class DartRunner(Runner):
    """mmengine's Runner with plain (weights-only loadable), atomic checkpoint saves and an exact
    resume of the random number generators; it also logs the images whose scores fell back to a
    uniform warp (:class:`dart_dense.fallback_hook.ScoreFallbackHook`), counted on each rank."""

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        """mmengine's hooks, and a :class:`ScoreFallbackHook` unless the config lists one."""
        super().register_hooks(default_hooks, custom_hooks)
        if not any(isinstance(hook, ScoreFallbackHook) for hook in self.hooks):
            self.register_hook(ScoreFallbackHook())

    def wrap_model(self, model_wrapper_cfg, model):
        """mmengine's wrapping, with the score-fallback counters kept out of DDP's broadcast."""
        keep_fallback_counters_per_rank(model)
        return super().wrap_model(model_wrapper_cfg, model)

    def call_hook(self, fn_name: str, **kwargs) -> None:
        # Runner.save_checkpoint calls this hook last, just before writing: make the dict plain.
        # Runner.load_checkpoint calls after_load_checkpoint before resume reads the message hub.
        # Validation inside training leaves the generators as it found them (its data loader draws
        # a seed): training draws the same numbers whatever the validation interval, and a resumed
        # run, which does not repeat the validation after its checkpoint, continues exactly.
        if fn_name == "before_val":
            self._rng_before_val = capture_rng_state()
        super().call_hook(fn_name, **kwargs)
        if fn_name == "after_val":
            restore_rng_state(self._rng_before_val)
        checkpoint = kwargs.get("checkpoint")
        if fn_name == "before_save_checkpoint":
            checkpoint[RNG_KEY] = self._rng_states
            if "message_hub" in checkpoint:
                checkpoint["message_hub"] = plain_message_hub(checkpoint["message_hub"])
        elif fn_name == "after_load_checkpoint":
            self._loaded_rng_states = checkpoint.get(RNG_KEY)
            if "message_hub" in checkpoint:
                checkpoint["message_hub"] = restore_message_hub(checkpoint["message_hub"])

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        """Every rank's generator states are gathered (a collective: mmengine's CheckpointHook calls
        this on every rank); rank 0 writes the file atomically."""
        self._rng_states = all_gather_objects(capture_rng_state())
        if is_main_process():
            with atomic_path(osp.join(out_dir, filename)) as temporary:
                super().save_checkpoint(out_dir, osp.basename(temporary), *args, **kwargs)

    def resume(self, filename: str, *args, **kwargs) -> None:
        """mmengine's resume (weights, optimizer, iteration, seed), then this rank's generator
        states from the checkpoint, restored once the loop has replayed the finished iterations'
        batches (see :class:`RestoreRngBeforeFetch`)."""
        self._loaded_rng_states = None
        super().resume(filename, *args, **kwargs)
        states = self._loaded_rng_states
        if states is None:  # written before DART saved generator states
            return
        if len(states) != get_world_size():
            self.logger.warning(
                f"{filename} was written by {len(states)} processes and this run has {get_world_size()}: the "
                "random number generators start from the seed, so the resumed run is not an exact continuation"
            )
            return
        loop = self.train_loop
        if hasattr(loop, "dataloader_iterator"):  # iteration-based: it replays the finished iterations' batches
            loop.dataloader_iterator = RestoreRngBeforeFetch(loop.dataloader_iterator, loop.iter, states[get_rank()])
        else:  # epoch-based loops resume at an epoch boundary, replaying nothing
            restore_rng_state(states[get_rank()])
