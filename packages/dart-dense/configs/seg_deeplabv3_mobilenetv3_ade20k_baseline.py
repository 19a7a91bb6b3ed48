# The same model and schedule on a fixed grid: each image is resized to 512×512 by the same code path.
_base_ = ["seg_deeplabv3_mobilenetv3_ade20k_dart.py"]
model = dict(warp=dict(scorer=None))
