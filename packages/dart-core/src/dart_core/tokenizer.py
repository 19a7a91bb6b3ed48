"""The DART tokenizer: a drop-in for timm's ``PatchEmbed`` with content-adaptive patches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import to_2tuple

from .fallbacks import add_fallback_counter, count_fallbacks, zero_fallback_counter
from .partition import InvalidPolicy, Partition, check_count, default_num_rows, partition
from .pos_embed import resample_pos_embed
from .sampling import sample_patches


@dataclass
class TokenizerOutput:
    """What :class:`DART` computed for a batch.

    Attributes:
        tokens: (B, N, D) projected (and normalised) patches.
        partition: the row and token boundaries.
        scores: (B, h, w) the scorer's output.
        pos_embed: (B, N, D) resampled positional embeddings, or None without a table.
    """

    tokens: torch.Tensor
    partition: Partition
    scores: torch.Tensor
    pos_embed: torch.Tensor | None


class DART(nn.Module):
    """Content-adaptive patch embedding.

    Accepts the keyword arguments timm's ``VisionTransformer`` passes to its ``embed_layer``.
    ``img_size`` is the input the model is fed; in high-resolution mode (``sample_scale=2``) the
    score grid, the token budget's natural grid and the positional table stay those of an input
    ``img_size / 2`` (a 448 input keeps the 14×14 grid of a 224 model) while patches are
    sampled from the full image.

    Args:
        img_size: input size (H, W) or int.
        patch_size: P, the side of each sampled patch.
        in_chans: C.
        embed_dim: D.
        norm_layer: optional norm applied to the tokens.
        bias: projection bias.
        strict_img_size: raise on inputs of another size.
        num_tokens: N, the token budget (default: the grid's cell count).
        num_rows: R (default :func:`~dart_core.partition.default_num_rows` for the grid:
            ``round(sqrt(N))`` on a square grid, h when N = h·w).
        sample_scale: input size / (grid × P); 2 for the published 448 models.
        scorer: module mapping (B, C, H, W) images to (B, h, w) positive scores on the grid
            (see :mod:`dart_core.scorers`); required.
        on_invalid: fallback for non-finite / all-zero scores, see :func:`dart_core.partition`.
            The buffer ``score_fallbacks`` counts the samples that fell back (see
            :mod:`dart_core.fallbacks`).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: Callable[[int], nn.Module] | None = None,
        flatten: bool = True,
        output_fmt: str | None = None,
        bias: bool = True,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        device=None,
        dtype=None,
        *,
        num_tokens: int | None = None,
        num_rows: int | None = None,
        sample_scale: int = 1,
        scorer: nn.Module | None = None,
        on_invalid: InvalidPolicy = "uniform",
    ):
        super().__init__()
        if not flatten or output_fmt not in (None, "NLC") or dynamic_img_pad:
            raise ValueError(
                "DART tokens form a sequence, not a grid: use flatten=True, output_fmt None/'NLC' and no "
                "dynamic_img_pad (timm's dynamic_img_size / dynamic_img_pad options do not apply)"
            )
        if scorer is None:
            raise ValueError("DART needs a scorer: pass scorer=dart_core.build_scorer(...)")
        self.patch_size = to_2tuple(patch_size)
        if self.patch_size[0] != self.patch_size[1]:
            raise ValueError(f"DART samples square patches; got patch_size {patch_size}")
        self.sample_scale = sample_scale
        self.set_grid(img_size)
        self.num_tokens = self.num_patches if num_tokens is None else check_count("num_tokens", num_tokens)
        self.num_rows = (
            default_num_rows(self.num_tokens, self.grid_size) if num_rows is None else check_count("num_rows", num_rows)
        )
        self.strict_img_size = strict_img_size
        self.on_invalid = on_invalid
        self.flatten = True
        self.output_fmt = "NLC"
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, bias=bias, device=device, dtype=dtype)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()
        self.scorer = scorer
        add_fallback_counter(self, device)  # samples whose scores fell back to a uniform grid (dart_core.fallbacks)

    def init_non_persistent_buffers(self) -> None:
        """timm's hook after a meta-device build and ``to_empty``: zero the fallback counter."""
        zero_fallback_counter(self)

    def set_grid(self, img_size: int | tuple[int, int]) -> None:
        """Set ``img_size`` and the score grid it implies: (H, W) / (patch_size × sample_scale)."""
        img_size = to_2tuple(img_size)
        cell = self.patch_size[0] * self.sample_scale
        if img_size[0] % cell or img_size[1] % cell:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size × sample_scale = {cell}")
        self.img_size = tuple(img_size)
        self.grid_size = (img_size[0] // cell, img_size[1] // cell)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def set_input_size(self, img_size: int | tuple[int, int] | None = None, patch_size=None) -> None:
        """timm's hook behind ``model.set_input_size``: a new input size moves the score grid (the
        scorer's too) with the same ``sample_scale``; the model resamples its positional table to
        the new ``grid_size``. The token budget N and row count R stay: DART decouples them from
        the resolution. A new patch size is not supported.
        """
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise NotImplementedError(
                "DART cannot change patch_size in place (the projection would need resampling): build the "
                "model again with the new patch_size"
            )
        if img_size is None:
            return
        if not hasattr(self.scorer, "grid_size"):
            raise NotImplementedError(
                f"the scorer {type(self.scorer).__name__} has no grid_size to move: build the model again with "
                "the new img_size"
            )
        self.set_grid(img_size)
        self.scorer.grid_size = self.grid_size

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        """The patch side P (``as_scalar``) or (P, P), as timm's ``PatchEmbed.feat_ratio``."""
        return self.patch_size[0] if as_scalar else self.patch_size

    def check_input(self, images: torch.Tensor) -> None:
        """Raise ValueError unless ``images`` is a floating-point (B, C, H, W) batch with the model's C (and
        (H, W) when strict)."""
        if images.dim() != 4:
            raise ValueError(f"DART expects images (B, C, H, W); got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(
                f"DART takes floating-point images, got {images.dtype}: convert and normalise them first "
                "(e.g. images.float() / 255, then the model's mean and std, as timm's transforms do)"
            )
        if images.shape[1] != self.proj.in_channels and images.shape[-1] == self.proj.in_channels:
            raise ValueError(
                f"images of shape {tuple(images.shape)} look channels-last (B, H, W, C); DART takes (B, C, H, W): "
                "pass images.permute(0, 3, 1, 2)"
            )
        if images.shape[1] != self.proj.in_channels:
            raise ValueError(
                f"the model takes images with {self.proj.in_channels} channels, got {images.shape[1]} "
                f"(shape {tuple(images.shape)}): convert the images, or build the model with "
                f"in_chans={images.shape[1]}"
            )
        if self.strict_img_size and tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(
                f"input size {tuple(images.shape[-2:])} does not match the model's {self.img_size}: resize or "
                f"crop the images to {self.img_size[0]}x{self.img_size[1]}, or build the model with "
                "strict_img_size=False"
            )

    def project(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, C, P, P) patches → (B, N, D) tokens: the Conv2d(P, stride P) as one matmul."""
        return F.linear(patches.flatten(2), self.proj.weight.flatten(1), self.proj.bias)

    def forward(
        self,
        images: torch.Tensor,
        pos_grid: torch.Tensor | None = None,
        return_details: bool = False,
    ) -> torch.Tensor | TokenizerOutput:
        """Tokenise a batch.

        Args:
            images: (B, C, H, W).
            pos_grid: optional (1 or B, h, w, D) positional table to resample for the tokens.
            return_details: return a :class:`TokenizerOutput` instead of the tokens alone.

        Returns:
            (B, N, D) tokens, or a :class:`TokenizerOutput`.
        """
        self.check_input(images)
        scores = self.scorer(images)
        count_fallbacks(self, scores)
        part = partition(scores, self.num_rows, self.num_tokens, on_invalid=self.on_invalid)
        patches = sample_patches(images, part, self.patch_size[0])
        tokens = self.norm(self.project(patches))
        if not return_details:
            return tokens
        pos = resample_pos_embed(pos_grid, part) if pos_grid is not None else None
        return TokenizerOutput(tokens=tokens, partition=part, scores=scores, pos_embed=pos)
