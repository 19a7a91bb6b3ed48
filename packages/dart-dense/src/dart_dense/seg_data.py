"""Semantic-segmentation data in the ADE20K folder layout.

``data_root/<img_dir>/<split>/<name><img_suffix>`` with its label map at
``data_root/<ann_dir>/<split>/<name><seg_suffix>`` (one 8-bit PNG of class indices per image).
With ``reduce_zero_label`` (ADE20K's convention) label 0 ("other") becomes the ignore index and
the other labels shift down by one.

Samples are ``dict(inputs=(3, H, W) uint8, data_samples=dict(gt_sem_seg=(H, W) int64,
img_path, img_shape=(H, W)))`` at the image's own size: the model's warp does the resizing.
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Sequence

import numpy as np
import torch
from mmengine.registry import DATASETS
from PIL import Image
from torch.utils.data import Dataset


def read_rgb(path: str) -> torch.Tensor:
    """An image file as a (3, H, W) uint8 tensor."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


@DATASETS.register_module()
class SegFolderDataset(Dataset):
    """ADE20K-style folders of images and label maps.

    Args:
        data_root: the dataset folder.
        split: the sub-folder of both ``img_dir`` and ``ann_dir`` (ADE20K: training, validation).
        classes: the class names (their count is the number of classes after reduction).
        img_dir, ann_dir, img_suffix, seg_suffix: the layout (ADE20K's by default).
        reduce_zero_label: map 0 to ``ignore_index`` and c to c - 1.
        ignore_index: the label value losses and metrics skip.
        flip_prob: probability of a horizontal flip (training augmentation).

    Raises (on construction or on reading a sample, naming the file): no images, an image without
    a label map, a label map whose size differs from its image, labels outside the classes.
    """

    def __init__(
        self,
        data_root: str,
        classes: Sequence[str],
        split: str = "training",
        img_dir: str = "images",
        ann_dir: str = "annotations",
        img_suffix: str = ".jpg",
        seg_suffix: str = ".png",
        reduce_zero_label: bool = True,
        ignore_index: int = 255,
        flip_prob: float = 0.0,
    ):
        self.image_folder = osp.join(data_root, img_dir, split)
        self.label_folder = osp.join(data_root, ann_dir, split)
        if not osp.isdir(self.image_folder):
            raise FileNotFoundError(f"image folder {self.image_folder} does not exist (check data_root and split)")
        names = sorted(f[: -len(img_suffix)] for f in os.listdir(self.image_folder) if f.endswith(img_suffix))
        if not names:
            raise ValueError(f"no '*{img_suffix}' images in {self.image_folder}")
        missing = [n for n in names if not osp.isfile(osp.join(self.label_folder, n + seg_suffix))]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} images have no label map in {self.label_folder}, e.g. {missing[0]}{seg_suffix}"
            )
        self.names = names
        self.img_suffix, self.seg_suffix = img_suffix, seg_suffix
        self.num_classes = len(classes)
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        self.flip_prob = flip_prob
        self.metainfo = dict(classes=tuple(classes))

    def __len__(self) -> int:
        return len(self.names)

    def read_labels(self, path: str) -> torch.Tensor:
        """A label map file → (H, W) int64 class indices (after ``reduce_zero_label``)."""
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"label map {path} has mode {image.mode}; expected one channel of class indices")
            labels = torch.from_numpy(np.asarray(image).astype(np.int64))
        if self.reduce_zero_label:
            labels = torch.where(labels == 0, self.ignore_index, labels - 1)
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
        if bool(bad.any()):
            values = sorted(set(labels[bad].tolist()))[:5]
            raise ValueError(
                f"label map {path} holds labels {values} outside the {self.num_classes} classes "
                f"(reduce_zero_label={self.reduce_zero_label}); fix the classes list or the file"
            )
        return labels

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        img_path = osp.join(self.image_folder, name + self.img_suffix)
        seg_path = osp.join(self.label_folder, name + self.seg_suffix)
        image = read_rgb(img_path)
        labels = self.read_labels(seg_path)
        if tuple(labels.shape) != tuple(image.shape[1:]):
            raise ValueError(
                f"label map {seg_path} is {tuple(labels.shape)} but its image {img_path} is "
                f"{tuple(image.shape[1:])}; label maps must match their images pixel for pixel"
            )
        if self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            image, labels = image.flip(-1), labels.flip(-1)
        sample = dict(gt_sem_seg=labels, img_path=img_path, img_shape=tuple(labels.shape))
        return dict(inputs=image, data_samples=sample)

