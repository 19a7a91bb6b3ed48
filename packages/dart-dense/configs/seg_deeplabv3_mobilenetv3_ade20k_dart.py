# DeepLabV3 on a MobileNetV3-Large backbone, ADE20K, with the DART regular-grid warp: each image is
# warped onto a 32×32 grid of 16×16 cells (512×512) whose rows and columns follow the scorer's
# density; the logits are warped back to the image's own pixels for the loss and the metric.
# The fixed-grid baseline is one flag away: seg_deeplabv3_mobilenetv3_ade20k_baseline.py, or
#   --cfg-options model.warp.scorer=None
_base_ = ["_base_/runtime.py", "_base_/ade20k.py"]

model = dict(
    type="DartSegmentor",
    num_classes=150,
    head="deeplabv3",
    # weights: a local timm weights file (no downloads at run time), e.g. weights="mnv3_large.safetensors"
    backbone=dict(name="mobilenetv3_large_100", out_indices=(1, 4), weights=None),
    warp=dict(
        grid=(32, 32),
        cell_size=16,
        # kwargs of dart_core.scorers.build_scorer (frozen MobileNetV3-Small features[:11] + v1 head).
        # weights=None leaves the FROZEN scorer backbone random: its features carry no signal, the scores
        # are rounding noise (std ~1e-8) and the scorer head sees gradient norms of 1e6-1e7. Real runs
        # must give a local torchvision mobilenet_v3_small state dict:
        #   --cfg-options model.warp.scorer.weights=/path/to/mobilenet_v3_small.pth
        # (or load a checkpoint that holds the scorer; dart_core warns on the first forward pass otherwise).
        # None is only for tests.
        scorer=dict(backbone="mobilenet_v3_small", version="v1", grid_size=(32, 32), weights=None),
    ),
    data_preprocessor=dict(type="DenseDataPreprocessor"),
)
optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="AdamW", lr=6e-4, weight_decay=0.01), clip_grad=dict(max_norm=1.0)
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=80000),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=80000, val_interval=8000)
