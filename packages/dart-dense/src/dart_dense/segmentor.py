"""Semantic segmentation through mmengine: warp → timm backbone → torchvision head → unwarp.

The logits are predicted on the warped image and resampled back to each image's own pixels
(:meth:`GridWarp.unwarp_map`), so the loss is taken on the original-resolution labels and
predictions come out in original coordinates.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPPHead

from .backbone import TimmFeatures
from .preprocessor import image_sizes, pad_stack
from .warper import build_warp

SEG_HEADS = ("fcn", "deeplabv3", "lraspp")


class SegHead(nn.Module):
    """A torchvision segmentation head over the backbone's levels.

    fcn and deeplabv3 read the last level; lraspp reads the first (low) and last (high).
    """

    def __init__(self, kind: str, channels: list[int], num_classes: int):
        super().__init__()
        if kind not in SEG_HEADS:
            raise ValueError(f"head must be one of {SEG_HEADS}, got {kind!r}")
        self.kind = kind
        if kind == "fcn":
            self.head = FCNHead(channels[-1], num_classes)
        elif kind == "deeplabv3":
            self.head = DeepLabHead(channels[-1], num_classes)
        else:
            if len(channels) < 2:
                raise ValueError("the lraspp head needs two backbone levels (out_indices of length >= 2)")
            self.head = LRASPPHead(channels[0], channels[-1], num_classes, inter_channels=128)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Levels → (B, K, h, w) logits at the resolution of the level read (lraspp: the low one)."""
        if self.kind == "lraspp":
            return self.head({"low": features[0], "high": features[-1]})
        return self.head(features[-1])


@MODELS.register_module()
class DartSegmentor(BaseModel):
    """Warp, segment, warp the logits back.

    Args:
        num_classes: K.
        backbone: kwargs of :class:`TimmFeatures`.
        head: "fcn", "deeplabv3" or "lraspp".
        warp: kwargs of :func:`build_warp` (grid, cell_size, scorer, score_input_size).
        ignore_index: the label the loss and the metric skip (also fills padding).
        data_preprocessor: config of the data preprocessor (default ``DenseDataPreprocessor``).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: dict,
        warp: dict,
        head: str = "fcn",
        ignore_index: int = 255,
        data_preprocessor: dict | None = None,
    ):
        super().__init__(data_preprocessor=data_preprocessor or dict(type="DenseDataPreprocessor"))
        self.warp = build_warp(**warp)
        self.backbone = TimmFeatures(**backbone)
        self.head = SegHead(head, self.backbone.channels, num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def logits(self, inputs: torch.Tensor, data_samples: list) -> torch.Tensor:
        """(B, 3, H', W') padded images → (B, K, H', W') logits in original image coordinates."""
        warped, warp = self.warp(inputs, image_sizes(data_samples))
        maps = self.head(self.backbone(warped))
        return warp.unwarp_map(maps, size=tuple(inputs.shape[-2:]))

    def forward(self, inputs: torch.Tensor, data_samples: list | None = None, mode: str = "tensor"):
        """mmengine's three modes on (B, 3, H', W') padded, normalised images.

        * "tensor": (B, K, H', W') logits in original coordinates.
        * "loss": ``dict(loss_ce)``, cross-entropy against each sample's ``gt_sem_seg`` (H, W).
        * "predict": the samples, each with ``pred_sem_seg`` (H, W) int64 at its image's own size.
        """
        if data_samples is None:
            size = tuple(inputs.shape[-2:])
            data_samples = [dict(img_shape=size) for _ in range(inputs.shape[0])]
        logits = self.logits(inputs, data_samples)
        if mode == "tensor":
            return logits
        if mode == "loss":
            labels = pad_stack([s["gt_sem_seg"] for s in data_samples], self.ignore_index, tuple(logits.shape[-2:]))
            return dict(loss_ce=F.cross_entropy(logits, labels.long(), ignore_index=self.ignore_index))
        if mode == "predict":
            predictions = logits.argmax(1)
            results = []
            for sample, prediction in zip(data_samples, predictions, strict=True):
                height, width = sample["img_shape"]
                results.append(dict(sample, pred_sem_seg=prediction[:height, :width]))
            return results
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")
