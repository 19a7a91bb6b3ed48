"""Cluttered digits: scikit-learn's real 8×8 handwritten digits, small on a large canvas, among
fragments of other digits.

Each canvas is (1, S, S) with values in [0, 1]; one digit (upscaled ``digit_scale``×) sits at a
random place, and ``num_fragments`` random crops of other digits are scattered around it. The
digits are split once into train and test sets, so test canvases carry unseen handwriting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ClutterConfig:
    canvas: int = 64
    digit_scale: int = 2
    num_fragments: int = 3
    fragment: int = 3  # side of a fragment, in original 8×8 digit pixels
    noise: float = 0.05


def load_digits_split(test_fraction: float = 0.25, seed: int = 0):
    """Real digits as ((N, 8, 8) float in [0, 1], (N,) labels) for train and test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(len(images) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return (images[train], digits.target[train]), (images[test], digits.target[test])


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """(h, w) → (h·scale, w·scale), bilinear: strokes stay smooth, as in a real photograph."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(tensor, scale_factor=scale, mode="bilinear", align_corners=False)[0, 0].numpy()


def make_canvases(digits: np.ndarray, labels: np.ndarray, count: int, config: ClutterConfig, seed: int):
    """Generate ``count`` cluttered canvases.

    Returns:
        (count, 1, S, S) float tensor, (count,) long labels, (count, 2) top-left corners of the
        digits (y, x) in pixels.
    """
    rng = np.random.default_rng(seed)
    size, scale = config.canvas, config.digit_scale
    digit_side, frag_side = 8 * scale, config.fragment * scale
    canvases = np.zeros((count, size, size), dtype=np.float32)
    picks = rng.integers(0, len(digits), size=count)
    corners = rng.integers(0, size - digit_side + 1, size=(count, 2))
    for i in range(count):
        for _ in range(config.num_fragments):
            source = digits[rng.integers(0, len(digits))]
            fy, fx = rng.integers(0, 8 - config.fragment + 1, size=2)
            piece = upscale(source[fy:fy + config.fragment, fx:fx + config.fragment], scale)
            py, px = rng.integers(0, size - frag_side + 1, size=2)
            canvases[i, py:py + frag_side, px:px + frag_side] = np.maximum(
                canvases[i, py:py + frag_side, px:px + frag_side], piece)
        y, x = corners[i]
        digit = upscale(digits[picks[i]], scale)
        region = canvases[i, y:y + digit_side, x:x + digit_side]
        canvases[i, y:y + digit_side, x:x + digit_side] = np.maximum(region * 0.3, digit)
    canvases += config.noise * rng.random(canvases.shape, dtype=np.float32)
    images = torch.from_numpy(np.clip(canvases, 0, 1)).unsqueeze(1)
    return images, torch.from_numpy(labels[picks]).long(), torch.from_numpy(corners)


def with_box_mask(images: torch.Tensor, corners: torch.Tensor, side: int) -> torch.Tensor:
    """(B, 1, S, S) canvases → (B, 2, S, S) with the digits' boxes (top-left ``corners``, ``side``
    pixels) as a 0/1 second channel, for the oracle scorer."""
    mask = torch.zeros_like(images)
    for i, (y, x) in enumerate(corners.tolist()):
        mask[i, 0, y:y + side, x:x + side] = 1
    return torch.cat([images, mask], dim=1)
