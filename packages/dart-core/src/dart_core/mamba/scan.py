"""Selective scan (Mamba's S6 recurrence) in pure PyTorch, with mamba-ssm's kernel when available.

For every batch element b, channel d and state n::

    Δ_t   = softplus(delta_t + delta_bias)              (softplus optional)
    h_t   = exp(Δ_t · A[d, n]) · h_{t-1} + Δ_t · B_t[n] · u_t       h_{-1} = 0
    y_t   = Σ_n C_t[n] · h_t[n] + D[d] · u_t
    out_t = y_t · silu(z_t)                                        (gate optional)

The recurrence ``h_t = a_t h_{t-1} + b_t`` (with ``a_t = exp(Δ_t A) ∈ (0, 1]`` for Mamba's
negative A) is evaluated chunk by chunk: inside a chunk of ``chunk_size`` steps a log-depth
doubling scan (Hillis-Steele) on (decay, state) pairs gives every state from a zero start; the
state entering the chunk is then added, times the chunk's cumulative decay, and the chunk's last
state is carried to the next chunk. Products of decays in (0, 1] can only underflow towards 0,
their true limit, so no step overflows whatever Δ is. The Python loop runs over L / chunk_size
chunks, not over steps, and each chunk's tensors (batch × d × chunk_size × N) stay cache-sized:
on a CPU this beats a fully parallel scan, which is memory-bound on its (batch, d, L, N)
temporaries, and it matches a per-step loop's speed at L ≈ 200 with 1/16 of the Python steps.

The signature is that of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``; on CUDA
tensors, when ``mamba-ssm`` is importable, :func:`selective_scan` calls that kernel instead.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

try:  # optional fast path: mamba-ssm's CUDA kernel (never required)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _kernel_selective_scan
except Exception:  # ImportError, or a broken CUDA extension
    _kernel_selective_scan = None


KERNEL_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNEL_MAX_STATES = 256


def uses_kernel(device: torch.device) -> bool:
    """Whether :func:`selective_scan` runs mamba-ssm's kernel for tensors on ``device`` (when
    their dtypes are ones it takes, :func:`kernel_accepts`)."""
    return _kernel_selective_scan is not None and torch.device(device).type == "cuda"


def kernel_accepts(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> bool:
    """Whether mamba-ssm's selective-scan kernel takes these operands (its ``selective_scan_fwd``
    checks): ``u`` float32, float16 or bfloat16, with ``delta``, ``B``, ``C`` and ``z`` in the
    same dtype; ``A``, ``D`` and ``delta_bias`` float32; at most 256 states. Float64 (a
    gradcheck) or a model cast whole to bfloat16 (``A`` too) fail them."""
    same = all(t.dtype == u.dtype for t in (delta, B, C, z) if t is not None)
    weights = A.dtype == torch.float32 and all(t.dtype == torch.float32 for t in (D, delta_bias) if t is not None)
    return u.dtype in KERNEL_INPUT_DTYPES and same and weights and A.shape[1] <= KERNEL_MAX_STATES


def _doubling_scan(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hillis-Steele scan of ``h_t = a_t h_{t-1} + b_t`` along dim -2, from h = 0.

    Args:
        a: (..., K, N) decay factors.
        b: (..., K, N) inputs.

    Returns:
        ((..., K, N) states h, (..., K, N) cumulative decays Π_{s≤t} a_s).
    """
    length = a.shape[-2]
    offset = 1
    while offset < length:
        # Position t holds the window (t - offset, t]; extend it by the window ending at t - offset.
        b = torch.cat([b[..., :offset, :], torch.addcmul(b[..., offset:, :], a[..., offset:, :], b[..., :-offset, :])], -2)
        a = torch.cat([a[..., :offset, :], a[..., offset:, :] * a[..., :-offset, :]], -2)
        offset *= 2
    return b, a


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int = 16,
) -> torch.Tensor:
    """Mamba's selective scan (see the module docstring for the equations).

    Args:
        u: (batch, d, L) inputs.
        delta: (batch, d, L) step sizes (before ``delta_bias`` and softplus).
        A: (d, N) real state matrix (diagonal per channel; negative for a stable scan).
        B, C: (batch, N, L) input-dependent input and output projections.
        D: optional (d,) skip connection.
        z: optional (batch, d, L) gate, applied as ``silu(z)``.
        delta_bias: optional (d,) added to ``delta``.
        delta_softplus: apply softplus to ``delta`` (after the bias).
        chunk_size: steps per chunk (pure-PyTorch path only).

    Returns:
        (batch, d, L) outputs in ``u``'s dtype. Computed in float32 (float64 for float64 input).
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, d, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (d={channels}, N); got {tuple(A.shape)}")
    states = A.shape[1]
    for name, tensor in (("B", B), ("C", C)):
        if tuple(tensor.shape) != (batch, states, length):
            raise ValueError(f"{name} must be (batch, N, L) = {(batch, states, length)}; got {tuple(tensor.shape)}")
    if uses_kernel(u.device):
        if kernel_accepts(u, delta, A, B, C, D, z, delta_bias):
            return _kernel_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        if u.dtype != torch.float64:  # float64 on a GPU is a deliberate check, not a slow-down to report
            warnings.warn(
                "mamba-ssm's selective scan takes u/delta/B/C/z in one of float32/float16/bfloat16 and A, D, "
                f"delta_bias in float32; got u {u.dtype}, A {A.dtype}: running the (slower) PyTorch scan. Keep the "
                "Mamba parameters in float32 and use autocast for mixed precision.",
                stacklevel=2,
            )

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    dtype = torch.promote_types(u.dtype, torch.float32)
    # contiguous: a transposed delta (the blocks pass dt_proj(x).transpose) would give softplus_backward
    # a layout torch.compile's traced backward does not expect (a failing view in it)
    u_work, delta, A, B, C = (t.to(dtype).contiguous() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    delta_u = delta * u_work
    B_steps, C_steps = B.transpose(1, 2), C.transpose(1, 2)  # (batch, L, N)
    state = u_work.new_zeros(batch, channels, states)
    outputs = []
    for start in range(0, length, chunk_size):
        steps = slice(start, start + chunk_size)
        a = torch.exp(delta[:, :, steps, None] * A[:, None, :])  # (batch, d, K, N)
        b = delta_u[:, :, steps, None] * B_steps[:, None, steps]  # (batch, d, K, N)
        local, decay = _doubling_scan(a, b)
        h = torch.addcmul(local, decay, state.unsqueeze(-2))
        state = h[:, :, -1]
        outputs.append((h * C_steps[:, None, steps]).sum(-1))
    y = torch.cat(outputs, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_work
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)
