"""Pieces of timm's ``forward_intermediates`` shared by DART's ViT, Vim and VideoMamba models."""

from __future__ import annotations

import torch

# Why DART's tokens make no (B, D, h, w) maps, and what to use instead.
DART_HAS_NO_GRID = (
    "DART's content-adaptive tokens lie on no grid: use output_fmt='NLC' ((B, N, D) tokens), and the partition "
    "from patch_embed(x, return_details=True) to map each token to its image region"
)


def token_output_fmt(output_fmt: str, no_grid: str | None) -> bool:
    """Check ``forward_intermediates``' ``output_fmt``; True: reshape the tokens to NCHW maps.

    Args:
        output_fmt: ``'NLC'`` or ``'NCHW'``.
        no_grid: why the tokens make no (B, D, h, w) maps (e.g. :data:`DART_HAS_NO_GRID`), or
            None when they lie on a fixed patch grid.

    Raises:
        ValueError: an unknown format, or ``'NCHW'`` for tokens on no grid.
    """
    if output_fmt not in ("NLC", "NCHW"):
        raise ValueError(f"output_fmt={output_fmt!r}: forward_intermediates returns 'NLC' (B, N, D) tokens"
                         + ("" if no_grid else " or 'NCHW' (B, D, h, w) maps"))
    if output_fmt == "NCHW" and no_grid:
        raise ValueError(f"output_fmt='NCHW' reshapes the tokens to a patch grid, but {no_grid}")
    return output_fmt == "NCHW"


def pack_intermediates(
    intermediates: list[tuple[torch.Tensor, torch.Tensor]],
    features: torch.Tensor | None,
    return_prefix_tokens: bool,
    output_dict: bool,
):
    """timm's ``forward_intermediates`` return value from (tokens, prefix tokens) pairs.

    Args:
        intermediates: per chosen block, its (B, N, D) tokens (or (B, D, h, w) map) and its
            (B, prefix, D) prefix tokens.
        features: the (B, L, D) final features, None for ``intermediates_only``.
        return_prefix_tokens: return the prefix tokens too (pairs, or the dict's
            ``'image_intermediates_prefix'``).
        output_dict: a dict instead of a tuple / list.
    """
    tokens = [pair[0] for pair in intermediates]
    if output_dict:
        out = {"image_intermediates": tokens}
        if return_prefix_tokens:
            out["image_intermediates_prefix"] = [pair[1] for pair in intermediates]
        if features is not None:
            out["image_features"] = features
        return out
    chosen = intermediates if return_prefix_tokens else tokens
    return chosen if features is None else (features, chosen)
