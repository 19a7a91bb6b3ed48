"""COCO-format detection data.

Samples are ``dict(inputs=(3, H, W) uint8, data_samples=dict(gt_boxes=(M, 4) float32 xyxy,
gt_labels=(M,) int64, img_id, img_path, img_shape=(H, W)))`` at the image's own size.

Handling of imperfect annotations (nothing is dropped silently):

* Labels are the categories' positions in ``sorted(category ids)`` (:func:`coco_category_ids`;
  the metric maps them back the same way).
* A box that sticks out of its image is clipped to the image (COCO boxes often overshoot by
  rounding). A box with no area inside the image, or with a non-positive width or height, raises
  a ValueError naming the annotation (``invalid_boxes="raise"``, the default), or is skipped
  with a logged warning naming each skipped annotation (``invalid_boxes="skip"``). All
  annotations are checked when the dataset is built, before any training starts.
* Crowd annotations (``iscrowd=1``) are not training targets; COCO evaluation (which reads the
  annotation file) treats them as "ignore" regions, as usual.
* Images without annotations are kept as negatives.
"""

from __future__ import annotations

import os.path as osp
from typing import Literal

import torch
from dart_core.datafiles import read_json
from mmengine.logging import print_log
from mmengine.registry import DATASETS
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from .seg_data import read_rgb

# The fields each COCO record needs here (pycocotools and the dataset read them).
REQUIRED_FIELDS = {("images", "image"): ("id", "file_name", "width", "height"), ("categories", "category"): ("id", "name"),
                   ("annotations", "annotation"): ("id", "image_id", "category_id", "bbox")}


def load_coco(ann_file: str) -> COCO:
    """Read a COCO annotation file, with clear errors naming the file (and the record) for a missing,
    empty, malformed or image-less file, a record without a field it needs, a bbox that is not
    4 numbers, and an annotation of an image the file does not list."""
    content = read_json(ann_file, "a COCO annotation file is JSON with images/annotations/categories lists")
    if not isinstance(content, dict):
        raise ValueError(f"annotation file {ann_file} holds a JSON {type(content).__name__}; a COCO file is an "
                         "object with 'images', 'annotations' and 'categories' lists")
    for key in ("images", "categories"):
        if not content.get(key):
            raise ValueError(f"annotation file {ann_file} has no '{key}'; a COCO detection file needs both "
                             "'images' and 'categories' (and 'annotations', possibly empty)")
    content.setdefault("annotations", [])
    check_records(ann_file, content)
    coco = COCO()
    coco.dataset = content
    coco.createIndex()
    return coco


def check_records(ann_file: str, content: dict) -> None:
    """Raise a ValueError naming the file and the record for the first record COCO loading would
    trip over (or silently drop)."""
    for (key, noun), fields in REQUIRED_FIELDS.items():
        if not isinstance(content[key], list):
            raise ValueError(f"annotation file {ann_file}: '{key}' is a {type(content[key]).__name__}, not a list")
        for index, record in enumerate(content[key]):
            name = f"{noun} {record.get('id', f'#{index}')}" if isinstance(record, dict) else f"{noun} #{index}"
            missing = [field for field in fields if field not in record] if isinstance(record, dict) else list(fields)
            if missing:
                raise ValueError(f"annotation file {ann_file}: {name} has no {', '.join(map(repr, missing))}; "
                                 f"COCO {key} need {', '.join(fields)}")
    for ann in content["annotations"]:
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"annotation file {ann_file}: annotation {ann['id']} has bbox {bbox!r}; "
                             "expected [x, y, width, height]")
    image_ids = {image["id"] for image in content["images"]}
    orphans = [ann["id"] for ann in content["annotations"] if ann["image_id"] not in image_ids]
    if orphans:
        raise ValueError(f"annotation file {ann_file}: {len(orphans)} annotation(s) (ids {orphans[:10]}) refer to "
                         "image ids not in 'images'; add the images or remove the annotations")


def coco_category_ids(coco: COCO) -> list[int]:
    """Category ids in label order: label i is category ``coco_category_ids(coco)[i]``."""
    return sorted(coco.getCatIds())


InvalidBoxes = Literal["raise", "skip"]


def image_boxes(
    coco: COCO, image: dict, label_of: dict, invalid_boxes: InvalidBoxes = "raise"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-crowd boxes of one image as ((M, 4) xyxy clipped to the image, (M,) labels)."""
    width, height = image["width"], image["height"]
    boxes, labels = [], []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])):
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        if w <= 0 or h <= 0 or x1 <= x0 or y1 <= y0:
            problem = (f"annotation {ann['id']} of image {image['id']} ({image['file_name']}, {width}×{height}) has "
                       f"bbox {ann['bbox']} with no area inside the image")
            if invalid_boxes == "skip":
                print_log(f"skipping {problem}", logger="current", level=30)
                continue
            raise ValueError(f"{problem}; fix or remove it from the annotation file, or pass invalid_boxes='skip'")
        if ann["category_id"] not in label_of:
            raise ValueError(f"annotation {ann['id']} has category_id {ann['category_id']} not in 'categories'")
        boxes.append([x0, y0, x1, y1])
        labels.append(label_of[ann["category_id"]])
    return torch.tensor(boxes, dtype=torch.float32).view(-1, 4), torch.tensor(labels, dtype=torch.int64)


@DATASETS.register_module()
class CocoDetDataset(Dataset):
    """Images and boxes from a COCO-format annotation file.

    Args:
        ann_file: the COCO json.
        img_dir: the folder the images' ``file_name`` are relative to.
        flip_prob: probability of a horizontal flip (training augmentation).
        invalid_boxes: "raise" or "skip" (with a warning) for boxes with no area in their image.

    Raises (naming the file or annotation): a missing or empty annotation file, no images or
    categories, an image whose file size differs from its ``width``/``height``, a box with no area
    inside its image, an unknown category.
    """

    def __init__(self, ann_file: str, img_dir: str, flip_prob: float = 0.0, invalid_boxes: InvalidBoxes = "raise"):
        if invalid_boxes not in ("raise", "skip"):
            raise ValueError(f"invalid_boxes must be 'raise' or 'skip', got {invalid_boxes!r}")
        self.coco = load_coco(ann_file)
        self.ann_file = ann_file
        self.img_dir = img_dir
        self.flip_prob = flip_prob
        self.cat_ids = coco_category_ids(self.coco)
        self.label_of = {cat: label for label, cat in enumerate(self.cat_ids)}
        self.images = [self.coco.imgs[i] for i in sorted(self.coco.getImgIds())]
        self.targets = [image_boxes(self.coco, image, self.label_of, invalid_boxes) for image in self.images]
        names = tuple(self.coco.cats[c]["name"] for c in self.cat_ids)
        self.metainfo = dict(classes=names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        path = osp.join(self.img_dir, image["file_name"])
        pixels = read_rgb(path)
        if tuple(pixels.shape[1:]) != (image["height"], image["width"]):
            raise ValueError(
                f"image {path} is {pixels.shape[2]}×{pixels.shape[1]} but {self.ann_file} says "
                f"{image['width']}×{image['height']}"
            )
        boxes, labels = self.targets[index]
        if self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            pixels = pixels.flip(-1)
            boxes = torch.stack([image["width"] - boxes[:, 2], boxes[:, 1], image["width"] - boxes[:, 0], boxes[:, 3]], 1)
        sample = dict(gt_boxes=boxes, gt_labels=labels, img_id=image["id"], img_path=path,
                      img_shape=(image["height"], image["width"]))
        return dict(inputs=pixels, data_samples=sample)
