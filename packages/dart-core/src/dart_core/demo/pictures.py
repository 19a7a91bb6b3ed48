"""Partition pictures of the demo's test canvases."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..sampling import sample_patches
from ..visualize import draw_partition, image_grid, patch_mosaic, save_png, to_pil

ZOOM = 4  # canvases are tiny: draw on a 4× nearest-neighbour enlargement


@torch.no_grad()
def save_partition_pictures(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, out: Path) -> list[Path]:
    """Draw the DART model's partitions (with score heat maps) and its sampled patches.

    Args:
        model: a ViT patched with DART (``model.patch_embed`` is a :class:`~dart_core.DART`).
        images: (B, 1, S, S) test canvases.
        labels: (B,) their digits.

    Returns:
        The PNG paths written: partitions, and what the model sees (patch mosaics).
    """
    model.eval()
    details = model.patch_embed(images, return_details=True)
    size = images.shape[-1] * ZOOM
    partitions, mosaics, captions = [], [], []
    patches = sample_patches(images, details.partition, model.patch_embed.patch_size[0])
    for i in range(len(images)):
        canvas = to_pil(images, index=i).resize((size, size), Image.NEAREST)
        partitions.append(draw_partition(canvas, details.partition, index=i, scores=details.scores))
        mosaic = patch_mosaic(patches, index=i)
        mosaics.append(mosaic.resize((mosaic.width * ZOOM, mosaic.height * ZOOM), Image.NEAREST))
        captions.append(f"digit {int(labels[i])}")
    paths = [out / "partitions.png", out / "what_dart_sees.png"]
    save_png(image_grid(partitions, captions, columns=4), paths[0])
    save_png(image_grid(mosaics, captions, columns=4), paths[1])
    return paths
