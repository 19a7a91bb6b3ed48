"""Clip augmentation: RandAugment with the same operations on every frame, random erasing of one
box through all frames, CutMix/Mixup on clips.

Per-frame independent RandAugment would make a clip flicker (each frame rotated, sheared or
recoloured differently), inventing motion that is not in the video. :class:`ClipRandAugment`
draws the operations and magnitudes once per clip: it restores the random state before every
frame, so all frames go through exactly the draws the first one did. timm's RandAugment policies
(``rand-m7-n4-mstd0.5-inc1``...) are used as they are; none of them flips.
"""

from __future__ import annotations

import numpy as np
import torch
from dart_core.training import capture_rng_state, restore_rng_state
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing

from .data import IMAGENET_MEAN


class ClipRandAugment:
    """timm RandAugment applied identically to the T frames of a clip.

    Args:
        policy: a timm RandAugment string, e.g. ``rand-m5-n2-mstd0.25-inc1``.
        size: the crop size (sets the translation range, as timm does for images).
    """

    def __init__(self, policy: str, size: int):
        if not policy.startswith("rand"):
            raise ValueError(f"expected a RandAugment policy such as 'rand-m7-n4-mstd0.5-inc1', got {policy!r}")
        fill = tuple(round(255 * m) for m in IMAGENET_MEAN)
        self.transform = rand_augment_transform(policy, {"translate_const": int(size * 0.45), "img_mean": fill})

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 → (T, H, W, 3) uint8, one draw of operations for all frames."""
        start = capture_rng_state()
        out = []
        for frame in frames:
            restore_rng_state(start)
            out.append(np.asarray(self.transform(Image.fromarray(frame)), dtype=np.uint8))
        return np.stack(out)


class ClipRandomErasing:
    """timm's RandomErasing on a normalised clip, **one box through all frames**, as the VideoMamba
    release erases SSv2 training clips (its ``RandomErasing(..., cube=True)`` on the (T, C, H, W)
    clip): whether to erase, how many boxes (1 to ``count``) and where they go are drawn once per
    clip; the box's area is U(0.02, 1/3) of the frame / count, its aspect ratio log-uniform in
    [0.3, 1/0.3] (timm's defaults). The fill is drawn afresh for every frame: ``pixel`` per-pixel
    standard normal noise, ``rand`` one standard normal colour per channel and frame, ``const``
    zeros. Done by erasing the clip viewed as one (3·T, H, W) image with timm.

    Differences from the release, both outside its SSv2 recipe (count 1): it passes ``num_splits =
    count``, which leaves the first T // count frames unerased when count > 1 (here every frame
    is erased); and it tries 100 box shapes before giving up, timm 10.

    Args:
        probability: chance of erasing a clip.
        mode: ``pixel``, ``rand`` or ``const``.
        count: most boxes per clip.
    """

    def __init__(self, probability: float, mode: str = "pixel", count: int = 1):
        if not 0 <= probability <= 1 or mode not in ("pixel", "rand", "const") or count < 1:
            raise ValueError(f"random erasing needs a probability in [0, 1], mode pixel, rand or const and count "
                             f">= 1; got {probability}, {mode!r}, {count}")
        self.erase = RandomErasing(probability, mode=mode, max_count=count, device="cpu")

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        """(3, T, H, W) float → a new (3, T, H, W) tensor (the input is left as it is)."""
        channels, frames, height, width = clip.shape
        return self.erase(clip.reshape(channels * frames, height, width).clone()).view(clip.shape)


class ClipMixup:
    """timm's Mixup/CutMix on (B, C, T, H, W) clips: one mixing weight per batch and one CutMix
    box for all frames (timm's image code would otherwise cut along T and H). Needs an even batch.
    Returns the mixed clips and (B, num_classes) soft targets with label smoothing."""

    def __init__(self, mixup: float, cutmix: float, prob: float, switch_prob: float, smoothing: float,
                 num_classes: int):
        self.mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch_prob,
                         mode="batch", label_smoothing=smoothing, num_classes=num_classes)

    def __call__(self, clips: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, channels, frames, height, width = clips.shape
        if batch % 2:
            raise ValueError(f"Mixup/CutMix need an even batch, got {batch}: use an even --batch-size")
        flat = clips.reshape(batch, channels * frames, height, width).clone()
        flat, soft = self.mix(flat, targets)
        return flat.view(batch, channels, frames, height, width), soft
