"""A dispatch watcher for the ops that would synchronise the host with a GPU (shared by tests)."""

from __future__ import annotations

import collections
import traceback

import torch
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
COPIES = (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)


def host_to_device(func, args: tuple, kwargs: dict) -> bool:
    """Whether a copy op moves a CPU tensor to another device."""
    if func is torch.ops.aten.copy_.default:
        source, target = args[1], args[0].device
    else:
        source, target = args[0], kwargs.get("device") or args[0].device
    return isinstance(source, torch.Tensor) and source.device.type == "cpu" and torch.device(target).type != "cpu"


def host_operand(args: tuple, kwargs: dict) -> bool:
    """Whether an op mixes a CPU tensor with more than one element (an index list, a table) into an
    op on another device. CUDA copies such an operand over before the kernel runs; one-element CPU
    tensors are read on the host as scalars and are not copies."""
    tensors = [arg for arg in tree_flatten((args, kwargs))[0] if isinstance(arg, torch.Tensor)]
    on_device = any(tensor.device.type != "cpu" for tensor in tensors)
    return on_device and any(tensor.device.type == "cpu" and tensor.numel() > 1 for tensor in tensors)


class HostSyncs(TorchDispatchMode):
    """Counts the ops that would synchronise on CUDA, by reason and by the DART source line.

    ``device`` is the type of the device standing in for the GPU. ``"cpu"`` (the model on the
    CPU): value reads (``.item()``, ``bool()``, ``nonzero``, boolean masks) and tensors built from
    Python lists are reported. ``"meta"`` (the model on the meta device, where value reads raise
    anyway): copies from host memory to the device are reported, and reads of CPU tensors (host
    metadata such as image sizes) are not.
    """

    def __init__(self, device: str = "cpu"):
        super().__init__()
        self.device = device
        self.found = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        reason = SYNCING.get(func) if self.on_watched_device(args) else None
        if func in INDEXING and self.on_watched_device(args) and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in tree_flatten(args[1])[0]
        ):
            reason = "a boolean-mask index (nonzero inside)"
        if func in COPIES and host_to_device(func, args, kwargs or {}):
            reason = "a copy from host memory to the device"
        elif self.device != "cpu" and host_operand(args, kwargs or {}):
            reason = "a host tensor as an operand of a device op (an implicit copy on CUDA)"
        if reason:
            frames = [frame for frame in traceback.extract_stack() if "/dart_" in frame.filename]
            where = f"{frames[-1].filename.rsplit('/src/', 1)[-1]}:{frames[-1].lineno}" if frames else "outside DART"
            self.found[f"{reason} at {where}"] += 1
        return func(*args, **(kwargs or {}))

    def on_watched_device(self, args: tuple) -> bool:
        """Whether the op's first tensor lives on the watched device (a Python list: the host)."""
        first = next((arg for arg in tree_flatten(args)[0] if isinstance(arg, torch.Tensor)), None)
        return (first.device.type if first is not None else "cpu") == self.device
