"""No host synchronisation in a DART model's training step (issue 6: "no host sync in the forward").

On a GPU, reading a tensor's value on the host (``.item()``, ``bool()``, ``nonzero``, a boolean-mask
index) blocks until the device has caught up, and a Python list or literal used as an index is
created on the CPU and copied over with a blocking copy. CI has no GPU, so this watches the aten
ops a CPU step dispatches for the ones that would synchronise on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from host_syncs import HostSyncs
from tiny_dart_models import TINY_DART_MODELS, tiny_dart_model


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
    """The meta device has shapes but no values: ``.item()``, ``.tolist()``, ``bool()``, a boolean
    mask or ``nonzero`` raise there, so a step that completes reads nothing back (including reads
    the watcher's op list cannot see); the watcher adds index lists and host-to-device copies,
    which the meta device accepts."""
    model, inputs = tiny_dart_model(name)
    model, inputs = model.to("meta"), inputs.to("meta")
    labels = torch.zeros(2, dtype=torch.long, device="meta")
    model(inputs)  # the frozen scorer folds once
    with HostSyncs("meta") as watch:  # and no host-to-device copy either
        logits = model(inputs)
        torch.nn.functional.cross_entropy(logits, labels).backward()
    assert not watch.found, dict(watch.found)
    assert logits.shape == (2, 5) and model.patch_embed.proj.weight.grad.device.type == "meta"


def test_the_watcher_sees_each_kind_of_sync():
    """Each thing the watcher looks for, once (so the tests above can fail)."""
    values = torch.randn(4)
    with HostSyncs() as watch:
        values.sum().item()
        values[values > 0]
        torch.tensor([1, 2])
        values.to("meta")
        torch.empty(4, device="meta").copy_(values)
        values.to(torch.float64)  # a copy that stays on the host: not a sync
    reasons = sorted(key.split(" at ")[0] for key, count in watch.found.items() for _ in range(count))
    assert reasons == sorted([
        "a value read on the host (.item(), bool(), int())", "a boolean-mask index (nonzero inside)",
        "a tensor built from a Python list or literal (a blocking copy on CUDA)",
        "a copy from host memory to the device", "a copy from host memory to the device",
    ]), dict(watch.found)


def test_the_meta_watcher_sees_host_operands_of_device_ops():
    """On the meta device (the GPU's stand-in), a CPU index list used on a device tensor is an
    implicit host-to-device copy on CUDA; a one-element CPU tensor (read as a scalar) is not."""
    index, scalar = torch.arange(3), torch.tensor(2.0)
    table = torch.empty(4, 2, device="meta")
    with HostSyncs("meta") as watch:
        table[index]
        table.index_select(0, index)
        table * scalar
        table[torch.arange(3, device="meta")]
    assert sum(watch.found.values()) == 2, dict(watch.found)
    assert all(key.startswith("a host tensor as an operand") for key in watch.found), dict(watch.found)
