"""Mean intersection-over-union for semantic segmentation, as an mmengine metric."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS


def confusion(prediction: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(H, W) predicted and true labels → (K, K) counts, rows = truth, columns = prediction."""
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in size")
    keep = label != ignore_index
    pairs = label[keep].long() * num_classes + prediction[keep].long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


@METRICS.register_module()
class MeanIoU(BaseMetric):
    """mIoU (and overall/mean pixel accuracy) over the classes present in truth or prediction.

    Reads ``pred_sem_seg`` and ``gt_sem_seg`` (both (H, W), original image size) of each sample.
    Reports percentages: ``mIoU``, ``aAcc``, ``mAcc``; classes that never occur in truth or
    prediction are left out of the means.
    """

    default_prefix = "seg"

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(
                confusion(sample["pred_sem_seg"], sample["gt_sem_seg"].to(sample["pred_sem_seg"].device),
                          self.num_classes, self.ignore_index).numpy()
            )

    def compute_metrics(self, results: list) -> dict:
        counts = np.sum(results, axis=0).astype(np.float64)
        hits = np.diag(counts)
        truth, predicted = counts.sum(1), counts.sum(0)
        union = truth + predicted - hits
        present = union > 0
        iou = hits[present] / union[present]
        acc = hits[truth > 0] / truth[truth > 0]
        return dict(
            mIoU=100 * float(iou.mean()) if iou.size else 0.0,
            aAcc=100 * float(hits.sum() / max(counts.sum(), 1)),
            mAcc=100 * float(acc.mean()) if acc.size else 0.0,
        )
