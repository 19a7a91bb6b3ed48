# FCOS (torchvision head, FPN P3-P7, torchvision NMS) on a timm ResNet-50, COCO, with the DART
# regular-grid warp: each image is warped onto a 40×40 grid of 16×16 cells (640×640) whose rows and
# columns follow the scorer's density; ground-truth boxes are warped forward for the loss and the
# predicted boxes warped back to the image's own coordinates for evaluation.
# The fixed-grid baseline is one flag away: det_fcos_resnet50_coco_baseline.py, or
#   --cfg-options model.warp.scorer=None
_base_ = ["_base_/runtime.py", "_base_/coco.py"]

model = dict(
    type="DartDetector",
    num_classes=80,
    head="fcos",
    # weights: a local timm weights file (no downloads at run time), e.g. weights="resnet50.a1_in1k.safetensors"
    backbone=dict(name="resnet50", out_indices=(2, 3, 4), weights=None),
    fpn_channels=256,
    warp=dict(
        grid=(40, 40),
        cell_size=16,
        # kwargs of dart_core.scorers.build_scorer (frozen MobileNetV3-Small features[:11] + v1 head).
        # weights=None leaves the FROZEN scorer backbone random: its features carry no signal, the scores
        # are rounding noise (std ~1e-8) and the scorer head sees gradient norms of 1e6-1e7. Real runs
        # must give a local torchvision mobilenet_v3_small state dict:
        #   --cfg-options model.warp.scorer.weights=/path/to/mobilenet_v3_small.pth
        # (or load a checkpoint that holds the scorer; dart_core warns on the first forward pass otherwise).
        # None is only for tests.
        scorer=dict(backbone="mobilenet_v3_small", version="v1", grid_size=(40, 40), weights=None),
    ),
    score_thresh=0.05,
    nms_thresh=0.6,
    detections_per_img=100,
    data_preprocessor=dict(type="DenseDataPreprocessor"),
)
optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=35.0),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", by_epoch=False, milestones=[60000, 80000], gamma=0.1),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=90000, val_interval=10000)
