"""timm's ``forward_intermediates`` and ``prune_intermediate_layers`` for the Mamba models with one
class token (Vim, VideoMamba)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models._features import feature_take_indices

from ..models.intermediates import pack_intermediates, token_output_fmt


class MambaIntermediates:
    """Mixin for a :class:`~dart_core.mamba.encoder.MambaEncoder` model with one class token.

    The model provides ``embed(x)`` → (B, N + 1, D) tokens, ``class_token_index(length)`` (where
    the class token sits among ``length`` tokens), ``no_grid_reason()`` (why its tokens make no
    (B, D, h, w) maps, or None) and, when they do, ``token_maps(tokens)``: (B, N, D) → (B, D, h, w).
    """

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NLC",
        intermediates_only: bool = False,
        output_dict: bool = False,
    ):
        """timm's ``forward_intermediates``: the residual stream after chosen blocks.

        Block i's intermediate is the residual stream after it (see
        :meth:`~dart_core.mamba.encoder.MambaEncoder.residual_stream`): the sum that block i + 1
        normalises, or the final norm after the last block, so ``norm=True`` on the last block
        gives ``forward_features``. The class token is the prefix token: it is split off, and the
        intermediate is the N other tokens in order, (B, N, D) for ``'NLC'``. Only a fixed patch
        grid also gives ``'NCHW'`` (B, D, h, w) maps; DART tokens lie on no grid (the partition
        from ``patch_embed(x, return_details=True)`` maps token j to its region).

        Args:
            x: the model's input ((B, C, H, W) images, (B, C, T, H, W) clips).
            indices: the last n blocks (int), the blocks at these indices (list; negative counts
                from the end) or all (None), as :func:`timm.models._features.feature_take_indices`.
            return_prefix_tokens: each intermediate becomes (tokens, (B, 1, D) class token).
            norm: apply the final norm (``norm_f``) to the intermediates.
            stop_early: run no block after the last one asked for (the final features are then
                the final norm of that block's intermediate).
            output_fmt: ``'NLC'``, or ``'NCHW'`` for tokens on a fixed patch grid.
            intermediates_only: return the intermediates alone.
            output_dict: return ``{'image_intermediates': [...], 'image_intermediates_prefix':
                [...] (with return_prefix_tokens), 'image_features': ...}`` as timm does.

        Returns:
            ((B, N + 1, D) final features, [intermediates]), or the list alone with
            ``intermediates_only``, or the dict with ``output_dict``.

        Raises:
            ValueError: an unknown ``output_fmt``, or ``'NCHW'`` for tokens on no grid.
        """
        to_maps = token_output_fmt(output_fmt, self.no_grid_reason())
        take, last = feature_take_indices(len(self.layers), indices)
        residual, outputs = self.residual_stream(self.embed(x), take, last + 1 if stop_early else None)
        intermediates = []
        for y in map(self.final_norm, outputs) if norm else outputs:
            cls = self.class_token_index(y.shape[1])
            tokens = torch.cat([y[:, :cls], y[:, cls + 1:]], dim=1)
            intermediates.append((self.token_maps(tokens) if to_maps else tokens, y[:, cls:cls + 1]))
        return pack_intermediates(
            intermediates, None if intermediates_only else self.final_norm(residual), return_prefix_tokens, output_dict
        )

    def prune_intermediate_layers(
        self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's ``prune_intermediate_layers``: keep the blocks up to the last of ``indices``
        (as in :meth:`forward_intermediates`); ``prune_norm`` replaces ``norm_f`` with Identity,
        ``prune_head`` the classifier. Returns the absolute indices of ``indices``."""
        take, last = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: last + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take
