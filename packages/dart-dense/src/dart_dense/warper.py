"""The warp as a module: a scorer looks at the image, the image is warped onto a regular grid.

Without a scorer the module is the baseline: a plain bilinear resize of each image to
(R·P, C·P) through the same code path, so DART is one config flag away.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from dart_core.fallbacks import add_fallback_counter, count_fallbacks, zero_fallback_counter
from dart_core.scorers import build_scorer

from .warp import GridWarp, check_image_sizes


class DartWarp(nn.Module):
    """Warp each image of a batch onto an (R·P) × (C·P) grid.

    Args:
        grid: (R, C) warped rows and columns.
        cell_size: P, pixels per warped cell.
        scorer: a module mapping (B, 3, h_s, w_s) images to (B, h, w) positive scores
            (e.g. :func:`dart_core.scorers.build_scorer`), or None for the fixed-grid baseline.
        score_input_size: (h_s, w_s) the scorer's input, a plain resize of each image;
            defaults to the warped size (R·P, C·P).
    """

    def __init__(
        self,
        grid: tuple[int, int],
        cell_size: int,
        scorer: nn.Module | None = None,
        score_input_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.cell_size = int(cell_size)
        self.scorer = scorer
        self.score_input_size = tuple(score_input_size) if score_input_size else self.out_size
        if scorer is not None:  # images whose scores fell back to the uniform grid, see dart_core.fallbacks
            add_fallback_counter(self)

    def init_non_persistent_buffers(self) -> None:
        """timm's hook after a meta-device build and ``to_empty``: zero the fallback counter."""
        if self.scorer is not None:
            zero_fallback_counter(self)

    @property
    def out_size(self) -> tuple[int, int]:
        return self.grid[0] * self.cell_size, self.grid[1] * self.cell_size

    def build_warp(self, images: torch.Tensor, image_sizes: torch.Tensor) -> GridWarp:
        """(B, C, H', W') padded images and their (B, 2) valid sizes (best on the CPU: they are
        checked and kept there, and copied to the images' device once) → the batch's warp."""
        sizes = check_image_sizes(image_sizes, images.shape[0])
        if self.scorer is None:
            return GridWarp.uniform(sizes, self.grid, self.cell_size, images.device)
        score_warp = GridWarp.uniform(sizes, self.score_input_size, 1, images.device)
        scores = self.scorer(score_warp.warp_image(images))
        count_fallbacks(self, scores)
        # the sizes are on the device already: the one host-to-device copy is the score warp's
        return GridWarp.from_scores(scores, score_warp.image_sizes, self.grid, self.cell_size, score_warp.host_sizes)

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> tuple[torch.Tensor, GridWarp]:
        """Returns the (B, C, R·P, C·P) warped images and the :class:`GridWarp` that made them."""
        warp = self.build_warp(images, image_sizes)
        return warp.warp_image(images), warp


def build_warp(grid, cell_size, scorer: dict | None = None, score_input_size=None) -> DartWarp:
    """A :class:`DartWarp` from config values; ``scorer`` holds the kwargs of
    :func:`dart_core.scorers.build_scorer` (None: the fixed-grid baseline)."""
    return DartWarp(grid, cell_size, build_scorer(**scorer) if scorer else None, score_input_size)
