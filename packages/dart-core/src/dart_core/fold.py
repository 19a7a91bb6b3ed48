"""Inference-time BatchNorm folding for frozen backbones.

An eval-mode BatchNorm after a convolution is an affine map per output channel, so it folds into
the convolution's weight and bias (``torch.nn.utils.fusion.fuse_conv_bn_weights``): one memory
pass fewer per convolution, same outputs up to float rounding.

The fold is *derived*: :func:`fold_batchnorm` returns a new module that shares every tensor it
does not fold with the original and leaves the original (its state dict included) untouched;
:class:`FoldedCopy` keeps such a copy and rebuilds it whenever the original's tensors change
(``load_state_dict`` and other in-place writes bump a tensor's version counter; ``.to()``,
``.half()``... replace its storage; writes through ``.data``, which bump no version counter, are
caught on the CPU by a checksum of every tensor; elsewhere call :meth:`FoldedCopy.invalidate`,
``Scorer.refold()``).

Pairs are found by structure, never guessed from names alone:

* consecutive ``(Conv2d, BatchNorm2d)`` children of a plain ``nn.Sequential`` (torchvision's
  ``Conv2dNormActivation``, MnasNet layers, ...);
* the ``(conv, bn)`` attribute pairs of the timm blocks listed in :data:`TIMM_PAIRS`, whose
  forward applies the BatchNorm directly to the convolution's output and uses it nowhere else.

A timm ``BatchNormAct2d`` keeps its dropout and activation (the folded BatchNorm is replaced by
them; an eval-mode dropout goes). Sequentials keep their length: a parent may index them. A pair is skipped when the BatchNorm would use batch statistics (training mode or no
running statistics) or when either module carries hooks (they would see different tensors).
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d, Conv2dSame, ConvNormAct
from timm.models.efficientnet import EfficientNet, EfficientNetFeatures
from timm.models.mobilenetv3 import MobileNetV3, MobileNetV3Features
from torch.nn.utils.fusion import fuse_conv_bn_weights

# Convolutions whose output is conv2d(x, weight, bias) (Conv2dSame pads first), and BatchNorms whose
# eval output is the affine running-statistics map (BatchNormAct2d then applies drop and act):
# subclasses that transform the weight (timm's StdConv2d) or add ops are not folded.
FOLDABLE_CONVS = (nn.Conv2d, Conv2dSame)
FOLDABLE_NORMS = (nn.BatchNorm2d, BatchNormAct2d)


def _timm_pairs() -> dict[type, tuple[tuple[str, str], ...]]:
    """timm block classes → their (conv attribute, BatchNorm attribute) pairs, in forward order
    (empty for the blocks if timm moves its private block module: nothing is folded there then)."""
    try:
        from timm.models._efficientnet_blocks import (
            ConvBnAct,
            DepthwiseSeparableConv,
            EdgeResidual,
            InvertedResidual,
        )
    except ImportError:
        ConvBnAct = DepthwiseSeparableConv = EdgeResidual = InvertedResidual = None
    s2d = ("conv_s2d", "bn_s2d")
    stem = (("conv_stem", "bn1"),)
    pairs = {
        ConvNormAct: (("conv", "bn"),),
        ConvBnAct: (("conv", "bn1"),),
        DepthwiseSeparableConv: (s2d, ("conv_dw", "bn1"), ("conv_pw", "bn2")),
        InvertedResidual: (s2d, ("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
        EdgeResidual: (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
        EfficientNet: stem,
        EfficientNetFeatures: stem,
        MobileNetV3: stem,
        MobileNetV3Features: stem,
    }
    return {block: names for block, names in pairs.items() if block is not None}


TIMM_PAIRS = _timm_pairs()


def _has_hooks(module: nn.Module) -> bool:
    return any(
        getattr(module, name, None)
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    )


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    """A 2-d convolution followed by an eval-mode BatchNorm with running statistics, no hooks."""
    return (
        type(conv) in FOLDABLE_CONVS
        and type(bn) in FOLDABLE_NORMS
        and not bn.training
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
        and not _has_hooks(conv)
        and not _has_hooks(bn)
    )


def _remainder(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of ``bn`` once its normalisation is folded: timm ``BatchNormAct2d``'s dropout and
    activation (the non-identity ones), else nothing."""
    rest = [
        m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None and not _is_noop(m)
    ]
    if not rest:
        return nn.Identity()
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def _is_noop(module: nn.Module) -> bool:
    """Identity, or dropout in eval mode (both return their input)."""
    if _has_hooks(module):
        return False
    return type(module) is nn.Identity or (
        isinstance(module, nn.modules.dropout._DropoutNd) and not module.training
    )


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Give ``conv`` (a module of the copy) the weight and bias that compute ``bn(conv(x))``; its
    new tensors keep the memory format of the old ones."""
    with torch.no_grad():
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        conv.weight = nn.Parameter(torch.empty_like(conv.weight).copy_(weight), requires_grad=False)
        conv.bias = nn.Parameter(bias, requires_grad=False)


def _fold_sequential(seq: nn.Sequential) -> None:
    """Fold consecutive (conv, BatchNorm) children in place (the BatchNorm's slot keeps what is left)."""
    for (_, conv), (bn_name, bn) in itertools.pairwise(list(seq._modules.items())):
        if _foldable(conv, bn):
            _fold_into(conv, bn)
            seq._modules[bn_name] = _remainder(bn)


def _fold_attribute_pairs(module: nn.Module, pairs: tuple[tuple[str, str], ...]) -> None:
    for conv_name, bn_name in pairs:
        conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
        if _foldable(conv, bn):
            _fold_into(conv, bn)
            setattr(module, bn_name, _remainder(bn))


def _is_plain_sequential(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Sequential)
        and type(module).forward is nn.Sequential.forward
        and not _has_hooks(module)
    )


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every foldable eval-mode BatchNorm folded into its convolution.

    The copy shares all tensors it does not fold with ``module`` (no memory is duplicated) and
    holds folded tensors of its own; ``module`` is not modified. Only valid while ``module``
    stays in eval mode with unchanged tensors: see :class:`FoldedCopy`.

    Returns:
        The folded module: same input → output map as ``module`` (up to float rounding).
    """
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    folded = copy.deepcopy(module, memo)
    for sub in list(folded.modules()):
        if _is_plain_sequential(sub):
            _fold_sequential(sub)
        elif type(sub) in TIMM_PAIRS and not _has_hooks(sub):
            _fold_attribute_pairs(sub, TIMM_PAIRS[type(sub)])
    return folded


def has_any_hooks(module: nn.Module) -> bool:
    """Whether any submodule of ``module`` has hooks: then it must run itself, not a folded copy
    (hooks would see the copy's modules, and hooks added or removed later would be missed)."""
    return any(_has_hooks(m) for m in module.modules())


def tensor_state_key(module: nn.Module) -> tuple | None:
    """Identity, storage and version of every parameter and buffer, the float64 sum of each CPU
    floating tensor (compared as bits, so a NaN weight does not refold every call), and every
    submodule's mode: changes whenever a tensor is replaced (``.to()``, assignment), moved, or
    written in place (``load_state_dict``, ``copy_``; on the CPU also through ``.data``, which bumps
    no version counter, unless the write keeps the tensor's float64 sum), or
    a submodule switches between train and eval (changes of plain attributes such as a BatchNorm's
    ``eps`` are not seen). ``None`` when a tensor has no version counter (inference tensors).

    Accelerator tensors get no checksum: reading one back would synchronise the device on every
    forward pass."""
    key: list = [tuple(m.training for m in module.modules())]
    summed = []
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_inference():
            return None
        key.append((id(t), t.data_ptr(), t._version, t.dtype, t.device))
        if t.device.type == "cpu" and t.is_floating_point():
            summed.append(t.detach().sum(dtype=torch.float64))  # a bfloat16 sum would round writes away
    if summed:
        key.append(tuple(torch.stack(summed).view(torch.int64).tolist()))
    return tuple(key)


class FoldedCopy:
    """Cached :func:`fold_batchnorm` of a module, rebuilt when the module's tensors change.

    Deliberately not an ``nn.Module``: the copy is no part of its owner's state dict, ``.to()`` or
    parameter lists. ``get`` compares :func:`tensor_state_key` (about 1.5 ms for
    MobileNetV3-Small's slice on the CPU, 0.15 % of a 32-image forward at 448) and refolds (about
    20 ms) only on a change; without version counters (inference tensors) it refolds every call.

    Caveat: ``p.data.mul_(...)`` and other writes through ``.data`` bump no version counter. On
    the CPU the key's checksum catches them (unless a write keeps every tensor's sum); on an
    accelerator it does not: call :meth:`invalidate` (``Scorer.refold()``) after such writes.
    """

    def __init__(self):
        self._key: tuple | None = None
        self._folded: nn.Module | None = None

    @torch.compiler.disable  # bookkeeping on tensor identities: runs eagerly under torch.compile
    def get(self, module: nn.Module) -> nn.Module:
        """The folded copy of ``module``'s current weights."""
        key = tensor_state_key(module)
        folded = self._folded
        if key is None or key != self._key or folded is None:
            folded = fold_batchnorm(module)
            self._folded, self._key = folded, key
        return folded  # the local: a replica sharing this cache in another thread may replace it

    def invalidate(self) -> None:
        """Forget the folded copy: the next :meth:`get` folds the module's current tensors."""
        self._key = self._folded = None

    def __deepcopy__(self, memo: dict) -> FoldedCopy:
        return FoldedCopy()  # a copy of the owner has new tensors: it folds them on first use

    def __getstate__(self) -> dict:
        return {"_key": None, "_folded": None}  # pickling the owner does not pickle the cache
