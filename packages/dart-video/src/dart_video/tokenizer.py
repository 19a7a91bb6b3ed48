"""The tall-frame video tokenizer (DESIGN.md §2).

A clip of T frames (B, C, T, H, W) is stacked vertically into one tall image (B, C, T·H, W) and
partitioned as one image with a joint token budget (e.g. 196·T/2), so tokens flow to the frames
and regions that carry information. The score grid is the frames' grids stacked: (T·h, w).

Positional embeddings: the frame's learned (h, w) spatial table is tiled down the T frames and a
learned temporal embedding is added to every cell of its frame, giving a (T·h, w) table that is
resampled for the tokens by DESIGN.md §1 step 5. A token thus gets the spatial embedding of the
cells it covers and the temporal embedding of the frame its rows come from (overlap-averaged
where a row straddles two frames). With uniform scores, budget T·h·w and T·h rows, every token is
one frame's patch and gets exactly ``spatial[i, j] + temporal[t]``: VideoMamba's embedding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from dart_core.partition import default_num_rows
from dart_core.tokenizer import DART, TokenizerOutput


def video_num_rows(num_tokens: int, grid_height: int, grid_width: int) -> int:
    """Rows R that keep tokens about square on a (grid_height × grid_width) cell grid:
    ``R = round(sqrt(N · grid_height / grid_width))`` (``sqrt(N)`` for a square image; T·h for
    one token per cell of a T-frame tall grid): :func:`dart_core.partition.default_num_rows` on the
    tall grid, which is what :class:`VideoDART` uses."""
    return default_num_rows(num_tokens, (grid_height, grid_width))


def video_pos_grid(spatial: torch.Tensor, temporal: torch.Tensor) -> torch.Tensor:
    """The tall positional table.

    Args:
        spatial: (1 or B, h, w, D) one frame's table.
        temporal: (1 or B, T, D) one embedding per frame.

    Returns:
        (B', T·h, w, D) with cell (t·h + i, j) = ``spatial[i, j] + temporal[t]``.
    """
    grid = spatial.unsqueeze(1) + temporal[:, :, None, None, :]  # (B', T, h, w, D)
    return grid.flatten(1, 2)


def frames_to_tall(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) → (B, C, T·H, W), frame 0 on top."""
    if video.dim() != 5:
        raise ValueError(f"expected a video batch (B, C, T, H, W); got shape {tuple(video.shape)}")
    batch, channels, frames, height, width = video.shape
    return video.reshape(batch, channels, frames * height, width)


def tall_to_frames(tall: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, C, T·H, W) → (B, C, T, H, W)."""
    batch, channels, height, width = tall.shape
    if height % frames:
        raise ValueError(f"a tall image of height {height} cannot hold {frames} equal frames")
    return tall.reshape(batch, channels, frames, height // frames, width)


class VideoDART(DART):
    """DART on the tall image of a clip.

    Args:
        num_frames: T.
        img_size: one frame's size (H, W) or int.
        patch_size, in_chans, embed_dim, norm_layer, bias: as for :class:`dart_core.DART`.
        num_tokens: the joint budget N (default ``T·h·w // 2``: half the per-frame tokens).
        num_rows: R (default :func:`video_num_rows`).
        sample_scale: input size / (grid × P).
        scorer: maps the tall image (B, C, T·H, W) to (B, T·h, w) positive scores, e.g.
            :class:`dart_video.scorer.TemporalDifferenceScorer`.
    """

    def __init__(
        self,
        num_frames: int,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        num_tokens: int | None = None,
        num_rows: int | None = None,
        sample_scale: int = 1,
        scorer: nn.Module | None = None,
        **kwargs,
    ):
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        cell = patch_size * sample_scale
        frame_grid = (height // cell, width // cell)
        tall_grid = (num_frames * frame_grid[0], frame_grid[1])
        num_tokens = max(1, tall_grid[0] * tall_grid[1] // 2) if num_tokens is None else num_tokens
        super().__init__(  # the tall image's grid is tall_grid, so DART's default R is video_num_rows
            img_size=(num_frames * height, width), patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            num_tokens=num_tokens, num_rows=num_rows,
            sample_scale=sample_scale, scorer=scorer, **kwargs,
        )
        self.num_frames = num_frames
        self.frame_size = (height, width)
        self.frame_grid_size = frame_grid

    def forward(
        self,
        video: torch.Tensor,
        spatial_pos: torch.Tensor | None = None,
        temporal_pos: torch.Tensor | None = None,
        return_details: bool = False,
    ) -> torch.Tensor | TokenizerOutput:
        """Tokenise a batch of clips.

        Args:
            video: (B, C, T, H, W).
            spatial_pos: optional (1 or B, h, w, D) one frame's positional table.
            temporal_pos: optional (1 or B, T, D) temporal embeddings (needs ``spatial_pos``).
            return_details: return a :class:`dart_core.TokenizerOutput` (partition, scores and
                the (B, N, D) resampled positional embeddings).

        Returns:
            (B, N, D) tokens in frame-major, then row-major order, or the details.
        """
        if video.dim() != 5 or video.shape[2] != self.num_frames:
            raise ValueError(
                f"expected clips (B, C, T={self.num_frames}, H, W); got shape {tuple(video.shape)}: sample "
                f"{self.num_frames} frames per clip or build the model with num_frames={video.shape[2] if video.dim() == 5 else '...'}"
            )
        if tuple(video.shape[-2:]) != self.frame_size:
            raise ValueError(f"frames of {video.shape[-2]}x{video.shape[-1]} (H x W) do not fit this model's "
                             f"{self.frame_size[0]}x{self.frame_size[1]} frames; crop or resize them, or build the "
                             f"model with img_size={tuple(video.shape[-2:])}")
        pos_grid = None
        if spatial_pos is not None:
            temporal = temporal_pos if temporal_pos is not None else spatial_pos.new_zeros(1, self.num_frames, spatial_pos.shape[-1])
            pos_grid = video_pos_grid(spatial_pos, temporal)
        elif temporal_pos is not None:
            raise ValueError("temporal_pos needs spatial_pos (the frame's (1, h, w, D) table)")
        return super().forward(frames_to_tall(video), pos_grid=pos_grid, return_details=return_details)
