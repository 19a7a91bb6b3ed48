# The same detector and schedule on a fixed grid: each image is resized to 640×640 by the same code path.
_base_ = ["det_fcos_resnet50_coco_dart.py"]
model = dict(warp=dict(scorer=None))
