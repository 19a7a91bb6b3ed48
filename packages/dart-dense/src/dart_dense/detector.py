"""Detection through mmengine: warp → timm backbone + FPN → torchvision FCOS / RetinaNet → unwarp boxes.

Ground-truth boxes are warped forward onto the warped image for the loss; predicted boxes
(decoded and NMS-ed by torchvision on the warped image) are warped back to each image's own
coordinates. The warp is monotone and separable, so boxes stay axis-aligned both ways.

torchvision's detectors carry their own resize/normalise transform; here it is an identity (the
data preprocessor normalises, the warp fixes the size): mean 0, std 1, min/max size = the warped
size, no padding.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from .backbone import TimmFeatures
from .preprocessor import image_sizes
from .warper import build_warp

DET_HEADS = ("fcos", "retinanet")
LOSS_NAMES = {"classification": "loss_cls", "bbox_regression": "loss_bbox", "bbox_ctrness": "loss_ctrness"}


class FpnBackbone(nn.Module):
    """timm levels → FPN (+ P6, P7 from P5) as the ordered dict torchvision's detectors expect.

    Attributes:
        out_channels: the FPN width.
        strides: the stride of each output level.
    """

    def __init__(self, backbone: dict, out_channels: int = 256):
        super().__init__()
        self.body = TimmFeatures(**backbone)
        self.fpn = FeaturePyramidNetwork(self.body.channels, out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels
        last = self.body.strides[-1]
        self.strides = [*self.body.strides, 2 * last, 4 * last]

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        levels = self.body(images)
        return self.fpn(OrderedDict((str(i), level) for i, level in enumerate(levels)))


def anchor_generator(head: str, strides: list[int]) -> AnchorGenerator:
    """FCOS: one point-like anchor of the stride's size per location; RetinaNet: 3 scales × 3 ratios of 4·stride."""
    if head == "fcos":
        return AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    sizes = tuple(tuple(4 * s * 2 ** (k / 3) for k in range(3)) for s in strides)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))


@MODELS.register_module()
class DartDetector(BaseModel):
    """Warp, detect, warp the boxes back.

    Args:
        num_classes: K (labels 0..K-1).
        backbone: kwargs of :class:`TimmFeatures` (pick three levels, e.g. strides 8, 16, 32).
        warp: kwargs of :func:`dart_dense.warper.build_warp`.
        head: "fcos" or "retinanet".
        fpn_channels: FPN width.
        score_thresh, nms_thresh, detections_per_img: torchvision's post-processing (NMS per class).
        data_preprocessor: config of the data preprocessor (default ``DenseDataPreprocessor``).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: dict,
        warp: dict,
        head: str = "fcos",
        fpn_channels: int = 256,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        data_preprocessor: dict | None = None,
    ):
        super().__init__(data_preprocessor=data_preprocessor or dict(type="DenseDataPreprocessor"))
        if head not in DET_HEADS:
            raise ValueError(f"head must be one of {DET_HEADS}, got {head!r}")
        self.warp = build_warp(**warp)
        features = FpnBackbone(backbone, fpn_channels)
        height, width = self.warp.out_size
        detector = FCOS if head == "fcos" else RetinaNet
        self.detector = detector(
            features, num_classes, min_size=min(height, width), max_size=max(height, width),
            image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], size_divisible=1,
            anchor_generator=anchor_generator(head, features.strides), score_thresh=score_thresh,
            nms_thresh=nms_thresh, detections_per_img=detections_per_img,
        )

    def forward(self, inputs: torch.Tensor, data_samples: list | None = None, mode: str = "tensor"):
        """mmengine's three modes on (B, 3, H', W') padded, normalised images.

        * "tensor": the FPN levels of the warped images.
        * "loss": torchvision's losses (``loss_cls``, ``loss_bbox``, FCOS: ``loss_ctrness``) against
          each sample's ``gt_boxes`` (M, 4) xyxy and ``gt_labels`` (M,), warped forward.
        * "predict": the samples, each with ``pred_boxes`` (D, 4) xyxy in its image's coordinates,
          ``pred_scores`` (D,) and ``pred_labels`` (D,).
        """
        if data_samples is None:
            data_samples = [dict(img_shape=tuple(inputs.shape[-2:])) for _ in range(inputs.shape[0])]
        warped, warp = self.warp(inputs, image_sizes(data_samples))
        if mode == "tensor":
            return self.detector.backbone(warped)
        if mode == "loss":
            # The warped targets are constants: the scorer learns through the warped image, not by moving
            # the targets (torchvision's box losses are not differentiable in their targets either:
            # centerness takes a square root that is infinite-sloped at the box border).
            targets = [
                dict(boxes=warp.select(i).boxes_to_warped(s["gt_boxes"][None].to(torch.float64))[0].float().detach(),
                     labels=s["gt_labels"])
                for i, s in enumerate(data_samples)
            ]
            losses = self.detector(list(warped), targets)
            return {LOSS_NAMES.get(name, name): value for name, value in losses.items()}
        if mode == "predict":
            return [
                dict(sample, **self.unwarp_detections(warp.select(i), detections, sample["img_shape"]))
                for i, (sample, detections) in enumerate(zip(data_samples, self.detector(list(warped)), strict=True))
            ]
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

    @staticmethod
    def unwarp_detections(warp, detections: dict, img_shape) -> dict:
        """Warped-image detections of one image → boxes (clipped to the image), scores, labels."""
        boxes = warp.boxes_to_original(detections["boxes"][None].to(torch.float64))[0]
        height, width = img_shape
        limits = boxes.new_tensor([width, height, width, height])
        boxes = torch.minimum(boxes.clamp(min=0.0), limits).float()
        return dict(pred_boxes=boxes, pred_scores=detections["scores"], pred_labels=detections["labels"])
