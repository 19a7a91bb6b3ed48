"""The chunked selective scan against a slow step-by-step reference (values and gradients)."""

import pytest
import torch
import torch.nn.functional as F
from dart_core.mamba import scan
from dart_core.mamba.scan import selective_scan
from hypothesis import given, settings
from hypothesis import strategies as st


def reference_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The S6 recurrence one step at a time (the obvious loop; slow)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, channels, length = u.shape
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


def scan_inputs(batch, channels, states, length, seed=0, dtype=torch.float64, delta_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        u=r(batch, channels, length),
        delta=r(batch, channels, length) * delta_scale,
        A=-torch.rand(channels, states, generator=g, dtype=dtype) * 2 - 0.05,
        B=r(batch, states, length),
        C=r(batch, states, length),
        D=r(channels),
        z=r(batch, channels, length),
        delta_bias=r(channels) * 0.5,
    )


@pytest.mark.parametrize("length,chunk", [(1, 4), (5, 4), (16, 4), (37, 8), (70, 3), (200, 16)])
@pytest.mark.parametrize("options", [dict(delta_softplus=True), dict(D=None, z=None, delta_bias=None)])
def test_scan_matches_reference(length, chunk, options):
    args = scan_inputs(2, 3, 4, length, seed=length)
    args.update(options)
    if "delta_softplus" not in options:
        args["delta"] = args["delta"].abs()
    got = selective_scan(**args, chunk_size=chunk)
    torch.testing.assert_close(got, reference_selective_scan(**args), rtol=1e-10, atol=1e-10)


def test_scan_float32_and_dtype():
    args = scan_inputs(1, 4, 3, 50, seed=3, dtype=torch.float32)
    want = reference_selective_scan(**{k: v.double() for k, v in args.items()}, delta_softplus=True)
    got = selective_scan(**args, delta_softplus=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    half = selective_scan(**{**args, "u": args["u"].bfloat16()}, delta_softplus=True)
    assert half.dtype == torch.bfloat16


def test_scan_huge_steps_stay_finite():
    """Decays are exponentiated only as log-decays ≤ 0: a huge Δ·|A| cannot overflow."""
    args = scan_inputs(1, 2, 3, 40, seed=4, dtype=torch.float32)
    args["delta"] = torch.full_like(args["delta"], 80.0)
    got = selective_scan(**args, chunk_size=8)
    assert torch.isfinite(got).all()
    want = reference_selective_scan(**{k: v.double() for k, v in args.items()})
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_scan_gradcheck_float64():
    args = scan_inputs(1, 2, 3, 7, seed=5)
    names = list(args)

    def fn(*tensors):
        return selective_scan(**dict(zip(names, tensors, strict=True)), delta_softplus=True, chunk_size=2)

    inputs = tuple(t.clone().requires_grad_(True) for t in args.values())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_scan_gradients_match_reference():
    args = scan_inputs(2, 3, 4, 23, seed=6)
    grads = []
    for fn in (lambda **a: selective_scan(**a, chunk_size=4), reference_selective_scan):
        inputs = {k: v.clone().requires_grad_(True) for k, v in args.items()}
        out = fn(**inputs, delta_softplus=True)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out))
        grads.append([inputs[k].grad for k in args])
    for name, got, want in zip(args, *grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 40), chunk=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_scan_any_length_and_chunk(length, chunk, seed):
    args = scan_inputs(1, 2, 3, length, seed=seed)
    got = selective_scan(**args, delta_softplus=True, chunk_size=chunk)
    torch.testing.assert_close(got, reference_selective_scan(**args, delta_softplus=True), rtol=1e-10, atol=1e-10)


def test_bad_shapes_are_named():
    args = scan_inputs(1, 2, 3, 5)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(**{**args, "A": args["A"].T})
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**{**args, "B": args["B"][..., :4]})
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(**args, chunk_size=0)


def test_kernel_dispatch(monkeypatch):
    """mamba-ssm's kernel is used for CUDA tensors when importable, never otherwise."""
    assert not scan.uses_kernel(torch.device("cpu"))
    monkeypatch.setattr(scan, "_kernel_selective_scan", None)
    assert not scan.uses_kernel(torch.device("cuda"))
    monkeypatch.setattr(scan, "_kernel_selective_scan", lambda *a: None)
    assert scan.uses_kernel(torch.device("cuda")) and not scan.uses_kernel(torch.device("cpu"))


def mixed(args: dict, low: torch.dtype) -> dict:
    """Autocast-style operands: activations in ``low``, A / D / delta_bias in float32."""
    weights = ("A", "D", "delta_bias")
    return {k: v.to(torch.float32 if k in weights else low) for k, v in args.items()}


def test_kernel_accepts_the_dtypes_mamba_ssm_checks():
    """mamba-ssm's selective_scan_fwd: u in fp32/fp16/bf16, delta/B/C (and z) in u's dtype, A in
    float32, at most 256 states (D and delta_bias float32)."""
    args = scan_inputs(1, 2, 3, 5)
    for low in (torch.float32, torch.float16, torch.bfloat16):
        assert scan.kernel_accepts(**mixed(args, low))
    assert not scan.kernel_accepts(**args)  # float64
    assert not scan.kernel_accepts(**{**mixed(args, torch.bfloat16), "A": args["A"].bfloat16()})  # a model cast whole
    assert not scan.kernel_accepts(**{**mixed(args, torch.bfloat16), "B": args["B"].float()})
    assert not scan.kernel_accepts(**{**mixed(args, torch.float16), "z": args["z"].bfloat16()})
    assert not scan.kernel_accepts(**{**mixed(args, torch.float32), "D": args["D"].half()})
    assert not scan.kernel_accepts(**mixed(scan_inputs(1, 2, 257, 5), torch.float32))


def test_operands_the_kernel_refuses_run_the_pytorch_scan(monkeypatch):
    """Where the kernel is available, operands it takes go to it; others run the PyTorch scan
    (with a warning, except float64, a deliberate precision check)."""
    calls = []
    monkeypatch.setattr(scan, "uses_kernel", lambda device: True)
    monkeypatch.setattr(scan, "_kernel_selective_scan", lambda *a: calls.append(a) or "kernel")
    args = scan_inputs(1, 2, 3, 5)
    assert selective_scan(**mixed(args, torch.bfloat16)) == "kernel" and len(calls) == 1
    monkeypatch.setattr(scan, "uses_kernel", lambda device: False)
    whole_bf16 = {k: v.bfloat16() for k, v in args.items()}
    want, want64 = selective_scan(**whole_bf16), selective_scan(**args)
    monkeypatch.setattr(scan, "uses_kernel", lambda device: True)
    with pytest.warns(UserWarning, match="running the \\(slower\\) PyTorch scan"):
        got = selective_scan(**whole_bf16)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(selective_scan(**args), want64, rtol=0, atol=0)
    assert len(calls) == 1
