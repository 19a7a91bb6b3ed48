"""ImageFolder datasets, timm transforms, resumable loaders and Mixup/CutMix for pretrain_in1k."""

from __future__ import annotations

import argparse
import os

import torch
from dart_core.training import DistContext, EpochSampler, SeededDataset
from pretrain_config import UsageError
from timm.data import Mixup, create_transform
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder


def image_folder(root: str, split: str, transform) -> ImageFolder:
    """``root/split`` as an ImageFolder, with clear errors for a missing or empty folder."""
    path = os.path.join(root, split)
    if not os.path.isdir(root):
        raise UsageError(f"data folder {root!r} does not exist; --data-dir must hold train/ and val/")
    if not os.path.isdir(path):
        raise UsageError(
            f"{path!r} does not exist; --data-dir must hold {split}/ with one sub-folder of images per class"
        )
    try:
        return ImageFolder(path, transform=transform)
    except FileNotFoundError as e:  # no class folders, or no images in them
        raise UsageError(f"{path!r} holds no images in class sub-folders ({e})") from e


def build_transforms(args: argparse.Namespace, input_size: int):
    """(train, eval) transforms: DeiT's recipe through timm's create_transform."""
    train = create_transform(
        input_size,
        is_training=True,
        auto_augment=None if args.aa in (None, "none") else args.aa,
        color_jitter=args.color_jitter,
        hflip=args.hflip,
        interpolation=args.train_interpolation,
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
    )
    evaluation = create_transform(input_size, is_training=False, interpolation="bicubic", crop_pct=args.crop_pct)
    return train, evaluation


def check_same_classes(train: ImageFolder, val: ImageFolder) -> None:
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise UsageError(
            f"train/ and val/ have different classes (only in train: {only_train[:5]}, only in val: "
            f"{only_val[:5]}); both need the same class sub-folders"
        )


def make_loader(dataset, sampler: EpochSampler, batch_size: int, args, ctx: DistContext, train: bool) -> DataLoader:
    """A loader over ``(index, seed)`` items; its own generator keeps the global RNGs untouched."""
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=args.num_workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=train,
        generator=torch.Generator().manual_seed(args.seed),
        persistent_workers=False,
    )


def build_mixup(args: argparse.Namespace, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix (with label smoothing folded into the soft targets), or None when off."""
    if args.mixup <= 0 and args.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        mode=args.mixup_mode,
        label_smoothing=args.smoothing,
        num_classes=num_classes,
    )
