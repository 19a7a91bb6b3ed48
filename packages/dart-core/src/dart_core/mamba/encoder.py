"""A stack of bidirectional Mamba blocks, laid out like the Vim and VideoMamba releases.

Keys: ``layers.{i}.mixer.*`` (:class:`~dart_core.mamba.mixer.BiMamba`), ``layers.{i}.norm.weight``
(RMSNorm) and ``norm_f.weight``. Each block is "add → norm → mixer" and hands its mixer output and
the running residual to the next block; the first block adds nothing, the final norm adds the
last block's output. Stochastic depth (``DropPath``) drops a block's output before it is added,
with the releases' schedule: block i gets rate ``[0, linspace(0, p, depth)][i]`` and the final
add gets ``p``.
"""

from __future__ import annotations

import math
from collections.abc import Container

import torch
import torch.nn as nn
from timm.layers import DropPath, trunc_normal_
from torch.utils.checkpoint import checkpoint

from .mixer import BiMamba


def norm_layer(dim: int, rms_norm: bool, eps: float) -> nn.Module:
    return nn.RMSNorm(dim, eps=eps) if rms_norm else nn.LayerNorm(dim, eps=eps)


class MambaBlock(nn.Module):
    """``residual += drop_path(hidden)``; ``hidden = mixer(norm(residual))``."""

    def __init__(self, dim: int, mixer: BiMamba, rms_norm: bool = True, eps: float = 1e-5,
                 drop_path: float = 0.0, residual_in_fp32: bool = True):
        super().__init__()
        self.mixer = mixer
        self.norm = norm_layer(dim, rms_norm, eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.residual_in_fp32 = residual_in_fp32

    def add(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """The (B, L, D) residual stream this block normalises: ``residual + drop_path(hidden)``
        (``hidden``, the tokens, for the first block: ``residual`` None)."""
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        if self.residual_in_fp32:
            residual = residual.to(torch.promote_types(residual.dtype, torch.float32))
        return residual

    def mix(self, residual: torch.Tensor) -> torch.Tensor:
        """(B, L, D) residual stream → (B, L, D) mixer output ``mixer(norm(residual))``."""
        return self.mixer(self.norm(residual.to(self.norm.weight.dtype)))

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) mixer output of the previous block (or the tokens) and the residual (None for
        the first block) → this block's (mixer output, residual)."""
        residual = self.add(hidden, residual)
        return self.mix(residual), residual


class MambaEncoder(nn.Module):
    """``depth`` bidirectional Mamba blocks and the final norm.

    Args:
        embed_dim: D.
        depth: number of blocks.
        drop_path_rate: stochastic depth p.
        rms_norm: RMSNorm (True, both releases) or LayerNorm.
        norm_eps: norm epsilon.
        residual_in_fp32: keep the residual stream in float32 under autocast.
        mixer_kwargs: passed to :class:`BiMamba` (``divide_out=True`` for Vim v2, False for
            VideoMamba; ``d_state``, ``expand``, ``chunk_size`` …).
    """

    def __init__(self, embed_dim: int, depth: int, drop_path_rate: float = 0.0, rms_norm: bool = True,
                 norm_eps: float = 1e-5, residual_in_fp32: bool = True, **mixer_kwargs):
        super().__init__()
        rates = [0.0] + [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList(
            MambaBlock(embed_dim, BiMamba(embed_dim, **mixer_kwargs), rms_norm, norm_eps, rates[i], residual_in_fp32)
            for i in range(depth)
        )
        self.norm_f = norm_layer(embed_dim, rms_norm, norm_eps)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.apply(self._init_linear)
        for layer in self.layers:  # GPT-2 style: scale residual-branch outputs by 1/sqrt(depth)
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(depth)

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        """Linear weights ~ trunc_normal(0.02), biases 0; the Δ projections keep their own init
        (the releases' generic init also reset those, zeroing the Δ bias; we keep Mamba's)."""
        if isinstance(module, nn.Linear) and not hasattr(module.bias, "_no_reinit"):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: recompute each block's norm and mixer in the backward pass instead of
        keeping their activations (less memory for about one more forward pass of compute; the
        VideoMamba release's ``use_checkpoint``)."""
        self.grad_checkpointing = enable

    def residual_stream(
        self, tokens: torch.Tensor, take: Container[int] = (), depth: int | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the first ``depth`` blocks (all by default) on (B, L, D) tokens.

        Block i's output is the residual stream after it, ``residual + drop_path(mixer output)``:
        the (B, L, D) sum that block i + 1 normalises, or the final norm after the last block (each
        adds with its own drop path, so in training the values are those the forward uses).

        Returns:
            The last block's output and the outputs of the blocks in ``take``.
        """
        layers = self.layers[:depth]
        residual, outputs = self.layers[0].add(tokens, None), []
        for i, layer in enumerate(layers):
            hidden = checkpoint(layer.mix, residual, use_reentrant=False) if self.grad_checkpointing else layer.mix(residual)
            after = self.layers[i + 1] if i + 1 < len(self.layers) else None
            residual = residual + self.drop_path(hidden) if after is None else after.add(hidden, residual)
            if i in take:
                outputs.append(residual)
        return residual, outputs

    def final_norm(self, residual: torch.Tensor) -> torch.Tensor:
        """The final norm of a (B, L, D) residual stream (``norm_f`` may be pruned to Identity)."""
        weight = getattr(self.norm_f, "weight", None)
        return self.norm_f(residual if weight is None else residual.to(weight.dtype))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, D) tokens → (B, L, D) normalised features."""
        return self.final_norm(self.residual_stream(tokens)[0])
