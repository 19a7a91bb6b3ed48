"""A stand-in scorer for tests: the same given scores (uniform by default) for every clip or image."""

import torch
import torch.nn as nn


class GivenScores(nn.Module):
    """Fixed (1, h, w) scores (uniform by default; (1, T·h, w) for a tall clip), expanded to the batch."""

    def __init__(self, grid, scores=None):
        super().__init__()
        self.grid, self.scores = grid, scores

    def forward(self, images):
        scores = torch.ones(1, *self.grid, dtype=images.dtype) if self.scores is None else self.scores.to(images.dtype)
        return scores.expand(images.shape[0], -1, -1)
