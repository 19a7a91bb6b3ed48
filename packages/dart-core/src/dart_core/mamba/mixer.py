"""Bidirectional Mamba mixer with the parameter layout of the Vim and VideoMamba releases.

Parameters (state-dict keys): ``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``
for the forward branch; ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b`` for the
backward branch (absent when ``bidirectional=False``); ``out_proj``. Both branches share
``in_proj`` (x and the gate z) and ``out_proj``; the backward branch runs on the reversed
sequence and its output is reversed back. The two branch outputs are summed (VideoMamba's
``bimamba``) or averaged (Vim's ``bimamba_type="v2"`` with ``if_divide_out=True``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .scan import selective_scan


class BiMamba(nn.Module):
    """Mamba mixer over a token sequence, optionally bidirectional.

    Args:
        d_model: token width D.
        d_state: SSM state size N.
        d_conv: causal depthwise convolution width.
        expand: inner width = expand · D.
        dt_rank: rank of the Δ projection ("auto": ceil(D / 16)).
        dt_min, dt_max, dt_init_floor: range of the initial step sizes Δ.
        conv_bias, bias: biases of the convolutions / of in_proj and out_proj.
        bidirectional: add the backward branch.
        divide_out: average the two branches (Vim v2) instead of summing them (VideoMamba).
        chunk_size: chunk length of the pure-PyTorch scan.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        bidirectional: bool = True,
        divide_out: bool = False,
        chunk_size: int = 16,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.bidirectional, self.divide_out, self.chunk_size = bidirectional, divide_out, chunk_size
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        init = dict(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, conv_bias=conv_bias)
        for suffix in ("", "_b") if bidirectional else ("",):
            self._add_branch(suffix, **init)

    def _add_branch(self, suffix: str, dt_min: float, dt_max: float, dt_init_floor: float, conv_bias: bool) -> None:
        """Create one direction's conv1d, x_proj, dt_proj, A_log, D (keys suffixed ``suffix``)."""
        inner, state = self.d_inner, self.d_state
        conv = nn.Conv1d(inner, inner, self.d_conv, groups=inner, padding=self.d_conv - 1, bias=conv_bias)
        x_proj = nn.Linear(inner, self.dt_rank + 2 * state, bias=False)
        dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        # Δ initialisation of the releases: weights ~ U(±rank^-1/2), softplus(bias) log-uniform in
        # [dt_min, dt_max]; A = -[1..N] per channel (S4D-real); D = 1.
        bound = self.dt_rank**-0.5
        nn.init.uniform_(dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        dt_proj.bias._no_reinit = True
        a_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(inner, 1))
        skip = nn.Parameter(torch.ones(inner))
        a_log._no_weight_decay = skip._no_weight_decay = True
        a_name = "A_log" if not suffix else "A_b_log"
        setattr(self, "conv1d" + suffix, conv)
        setattr(self, "x_proj" + suffix, x_proj)
        setattr(self, "dt_proj" + suffix, dt_proj)
        setattr(self, a_name, a_log)
        setattr(self, "D" + suffix, skip)

    def _branch(self, x: torch.Tensor, z: torch.Tensor, suffix: str) -> torch.Tensor:
        """One direction: causal conv → SiLU → input-dependent Δ, B, C → gated selective scan.

        Args:
            x, z: (B, d_inner, L).

        Returns:
            (B, d_inner, L).
        """
        conv, x_proj, dt_proj = (getattr(self, name + suffix) for name in ("conv1d", "x_proj", "dt_proj"))
        a_log = self.A_log if not suffix else self.A_b_log
        skip = getattr(self, "D" + suffix)
        length = x.shape[-1]
        x = F.silu(conv(x)[..., :length])
        dt, b, c = torch.split(x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)  # bias added inside the scan
        at_least_fp32 = torch.promote_types(a_log.dtype, torch.float32)  # the SSM parameters stay fp32
        return selective_scan(
            x, delta, -torch.exp(a_log.to(at_least_fp32)), b.transpose(1, 2), c.transpose(1, 2),
            skip.to(at_least_fp32), z=z, delta_bias=dt_proj.bias.to(at_least_fp32), delta_softplus=True,
            chunk_size=self.chunk_size,
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, D) tokens → (B, L, D) mixed tokens."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"expected (B, L, {self.d_model}) tokens, got {tuple(hidden_states.shape)}")
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        out = self._branch(x, z, "")
        if self.bidirectional:
            out = out + self._branch(x.flip(-1), z.flip(-1), "_b").flip(-1)
            if self.divide_out:
                out = out / 2
        return self.out_proj(out.transpose(1, 2))
