"""COCO box mAP with pycocotools, as an mmengine metric."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS
from pycocotools.cocoeval import COCOeval

from .det_data import coco_category_ids, load_coco

STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


@METRICS.register_module()
class CocoBoxMetric(BaseMetric):
    """COCO bbox AP (percent) of ``pred_boxes`` (xyxy, original coordinates), ``pred_scores`` and
    ``pred_labels`` against the ground truth of ``ann_file``.

    A size range without ground truth reports -1 (pycocotools' convention). Only the images
    that were predicted are evaluated (so a subset run scores that subset).
    Labels map to category ids as in :func:`dart_dense.det_data.coco_category_ids`.
    """

    default_prefix = "coco"

    def __init__(self, ann_file: str, **kwargs):
        super().__init__(**kwargs)
        self.ann_file = ann_file

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            boxes = sample["pred_boxes"].detach().cpu()
            self.results.append(dict(
                img_id=sample["img_id"],
                boxes=boxes.tolist(),
                scores=sample["pred_scores"].detach().cpu().tolist(),
                labels=sample["pred_labels"].detach().cpu().tolist(),
            ))

    def compute_metrics(self, results: list) -> dict:
        coco = load_coco(self.ann_file)
        cat_ids = coco_category_ids(coco)
        detections = [
            dict(image_id=r["img_id"], category_id=cat_ids[label], score=score, bbox=[x0, y0, x1 - x0, y1 - y0])
            for r in results for (x0, y0, x1, y1), score, label in zip(r["boxes"], r["scores"], r["labels"], strict=True)
        ]
        if not detections:
            return {name: 0.0 for name in STAT_NAMES}
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
            evaluator.params.imgIds = sorted({r["img_id"] for r in results})
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return {name: 100 * float(value) if value >= 0 else -1.0 for name, value in zip(STAT_NAMES, evaluator.stats[:6], strict=True)}
