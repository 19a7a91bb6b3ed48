"""No host synchronisation in a DART model's training step (issue 6: "no host sync in the forward").

On a GPU, reading a tensor's value on the host (``.item()``, ``bool()``, ``nonzero``, a boolean-mask
index) blocks until the device has caught up, and a Python list or literal used as an index is
created on the CPU and copied over with a blocking copy. CI has no GPU, so this watches the aten
ops a CPU step dispatches for the ones that would synchronise on CUDA.
"""

from __future__ import annotations

import collections
import traceback

import pytest
import torch
from tiny_dart_models import TINY_DART_MODELS, tiny_dart_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

SYNCING = {
    torch.ops.aten._local_scalar_dense.default: "a value read on the host (.item(), bool(), int())",
    torch.ops.aten.nonzero.default: "nonzero",
    torch.ops.aten.masked_select.default: "masked_select",
    torch.ops.aten.is_nonzero.default: "bool() of a tensor",
    torch.ops.aten.lift_fresh.default: "a tensor built from a Python list or literal (a blocking copy on CUDA)",
}
INDEXING = (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten._index_put_impl.default)


class HostSyncs(TorchDispatchMode):
    """Counts the ops that would synchronise on CUDA, by reason and by the DART source line."""

    def __init__(self):
        super().__init__()
        self.found = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        reason = SYNCING.get(func)
        if func in INDEXING and any(isinstance(index, torch.Tensor) and index.dtype == torch.bool
                                    for index in tree_flatten(args[1])[0]):
            reason = "a boolean-mask index (nonzero inside)"
        if reason:
            frames = [frame for frame in traceback.extract_stack() if "/dart_" in frame.filename]
            where = f"{frames[-1].filename.rsplit('/src/', 1)[-1]}:{frames[-1].lineno}" if frames else "outside DART"
            self.found[f"{reason} at {where}"] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", sorted(TINY_DART_MODELS))
def test_a_training_step_has_no_host_sync(name):
    model, inputs = tiny_dart_model(name)
    labels = torch.tensor([1, 3])
    model(inputs)  # first call: the frozen scorer folds its BatchNorms once (a one-off, not per step)
    with HostSyncs() as watch:
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    assert not watch.found, dict(watch.found)


@pytest.mark.parametrize("prefix_index", [(), (0,), (0, 1), (8,), (1, 0), (0, 17)])
def test_split_prefix_pos_embed_matches_a_mask_split(prefix_index):
    """The slice-based split (no host sync) against the obvious boolean-mask split."""
    from dart_core import split_prefix_pos_embed

    table = torch.randn(2, 16 + len(prefix_index), 5)
    prefix, grid = split_prefix_pos_embed(table, (4, 4), prefix_index)
    keep = torch.ones(table.shape[1], dtype=torch.bool)
    keep[list(prefix_index)] = False
    assert torch.equal(prefix, table[:, list(prefix_index)])
    assert torch.equal(grid, table[:, keep].reshape(2, 4, 4, 5))


@pytest.mark.parametrize("prefix_index", [(0, 0), (17,), (-1,)])
def test_split_prefix_pos_embed_refuses_bad_positions(prefix_index):
    from dart_core import split_prefix_pos_embed

    with pytest.raises(ValueError, match="must be distinct positions"):
        split_prefix_pos_embed(torch.randn(1, 16 + len(prefix_index), 5), (4, 4), prefix_index)


@pytest.mark.parametrize("name", sorted(TINY_DART_MODELS))
def test_a_training_step_runs_on_the_meta_device(name):
    """The meta device has shapes but no values: ``.item()``, ``bool()``, a boolean mask or
    ``nonzero`` raise there, so a step that completes reads nothing back (the check above also
    catches index lists, which meta accepts; this one catches reads the op list may miss)."""
    model, inputs = tiny_dart_model(name)
    model, inputs = model.to("meta"), inputs.to("meta")
    logits = model(inputs)
    torch.nn.functional.cross_entropy(logits, torch.zeros(2, dtype=torch.long, device="meta")).backward()
    assert logits.shape == (2, 5) and model.patch_embed.proj.weight.grad.device.type == "meta"
