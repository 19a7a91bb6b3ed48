"""Batching for dense models: pad images to a common size, normalise, keep each image's size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.model import BaseDataPreprocessor
from mmengine.registry import FUNCTIONS, MODELS


def pad_stack(tensors: Sequence[torch.Tensor], value: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Pad (..., H_i, W_i) tensors at the bottom/right to a common size (default: the largest) and stack."""
    height = max(t.shape[-2] for t in tensors) if size is None else size[0]
    width = max(t.shape[-1] for t in tensors) if size is None else size[1]
    padded = [
        torch.nn.functional.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value) for t in tensors
    ]
    return torch.stack(padded)


@FUNCTIONS.register_module()
def dense_collate(batch: Sequence[dict]) -> dict:
    """Samples ``dict(inputs, data_samples)`` → ``dict(inputs=[...], data_samples=[...])``, nothing stacked
    or transposed (mmengine's pseudo_collate would turn the per-image dicts into a dict of lists)."""
    return dict(inputs=[s["inputs"] for s in batch], data_samples=[s["data_samples"] for s in batch])


@MODELS.register_module()
class DenseDataPreprocessor(BaseDataPreprocessor):
    """Collated samples → ``dict(inputs, data_samples)`` for :class:`DartSegmentor` / :class:`DartDetector`.

    ``inputs`` becomes a (B, 3, H', W') float tensor, ``(x - mean) / std``, each image in the
    top-left corner of a zero-padded canvas of the largest size; ``data_samples`` is the list of
    per-image dicts, each with its ``img_shape`` (H, W).

    Args:
        mean, std: per-channel statistics on the 0-255 scale.
    """

    def __init__(self, mean: Sequence[float] = (123.675, 116.28, 103.53), std: Sequence[float] = (58.395, 57.12, 57.375)):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        images = [(image.float() - self.mean) / self.std for image in data["inputs"]]
        samples = list(data["data_samples"])
        for image, sample in zip(images, samples, strict=True):
            if tuple(sample["img_shape"]) != tuple(image.shape[-2:]):
                raise ValueError(f"sample {sample.get('img_path')} says img_shape {sample['img_shape']} "
                                 f"but its image is {tuple(image.shape[-2:])}")
        return dict(inputs=pad_stack(images, 0.0), data_samples=samples)


def image_sizes(data_samples: Sequence[dict]) -> torch.Tensor:
    """(B, 2) the (H, W) of each sample's image, on the CPU (host metadata: checked there, and
    copied to the device once by the warp)."""
    return torch.tensor([list(s["img_shape"]) for s in data_samples])
