"""Bidirectional Mamba mixer and encoder: release key layout, equations, symmetry, gradients."""

import pytest
import torch
import torch.nn.functional as F
from dart_core.mamba.encoder import MambaEncoder
from dart_core.mamba.mixer import BiMamba
from test_mamba_scan import reference_selective_scan

# One mixer's keys in the Vim (bimamba v2) and VideoMamba (bimamba) releases' checkpoints.
RELEASE_MIXER_KEYS = {
    "A_log", "A_b_log", "D", "D_b", "in_proj.weight", "conv1d.weight", "conv1d.bias", "conv1d_b.weight",
    "conv1d_b.bias", "x_proj.weight", "x_proj_b.weight", "dt_proj.weight", "dt_proj.bias", "dt_proj_b.weight",
    "dt_proj_b.bias", "out_proj.weight",
}


def reference_branch(mixer, x, z, suffix):
    """One direction written out from the releases' equations with the step-by-step scan."""
    p = {k: v for k, v in mixer.named_parameters()}
    a_log = p["A_log" if not suffix else "A_b_log"]
    length = x.shape[-1]
    x = F.silu(F.conv1d(x, p["conv1d" + suffix + ".weight"], p["conv1d" + suffix + ".bias"],
                        padding=mixer.d_conv - 1, groups=mixer.d_inner)[..., :length])
    x_dbl = torch.einsum("bdl,ed->bel", x, p["x_proj" + suffix + ".weight"])
    dt, b, c = x_dbl.split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=1)
    delta = torch.einsum("brl,dr->bdl", dt, p["dt_proj" + suffix + ".weight"])
    return reference_selective_scan(x, delta, -torch.exp(a_log), b, c, p["D" + suffix], z,
                                    p["dt_proj" + suffix + ".bias"], delta_softplus=True)


def reference_mixer(mixer, hidden):
    xz = torch.einsum("bld,ed->bel", hidden, mixer.in_proj.weight)
    x, z = xz.chunk(2, dim=1)
    out = reference_branch(mixer, x, z, "")
    if mixer.bidirectional:
        out = out + reference_branch(mixer, x.flip(-1), z.flip(-1), "_b").flip(-1)
        out = out / 2 if mixer.divide_out else out
    return torch.einsum("bdl,ed->ble", out, mixer.out_proj.weight)


def randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module


def test_mixer_keys_match_releases():
    assert set(BiMamba(16).state_dict()) == RELEASE_MIXER_KEYS
    assert set(BiMamba(16, bidirectional=False).state_dict()) == {k for k in RELEASE_MIXER_KEYS if "_b" not in k}
    shapes = {k: tuple(v.shape) for k, v in BiMamba(32, d_state=16).state_dict().items()}
    # d_inner = 64, dt_rank = ceil(32 / 16) = 2, N = 16
    assert shapes["in_proj.weight"] == (128, 32) and shapes["conv1d.weight"] == (64, 1, 4)
    assert shapes["x_proj.weight"] == (2 + 32, 64) and shapes["dt_proj.weight"] == (64, 2)
    assert shapes["A_b_log"] == (64, 16) and shapes["D_b"] == (64,) and shapes["out_proj.weight"] == (32, 64)


@pytest.mark.parametrize("divide_out", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_mixer_matches_release_equations(divide_out, bidirectional):
    mixer = randomise(BiMamba(8, d_state=4, bidirectional=bidirectional, divide_out=divide_out, chunk_size=3)).double()
    hidden = torch.randn(2, 11, 8, dtype=torch.float64)
    torch.testing.assert_close(mixer(hidden), reference_mixer(mixer, hidden), rtol=1e-10, atol=1e-10)


def test_vim_average_is_half_of_videomamba_sum():
    summed = randomise(BiMamba(8, d_state=4)).double()
    averaged = BiMamba(8, d_state=4, divide_out=True).double()
    averaged.load_state_dict(summed.state_dict())
    hidden = torch.randn(1, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(averaged(hidden), summed(hidden) / 2, rtol=1e-12, atol=1e-12)


def test_mirrored_branches_make_mixer_reversal_equivariant():
    mixer = randomise(BiMamba(8, d_state=4)).double()
    state = mixer.state_dict()
    for key in list(state):
        mirrored = key.replace("A_b_log", "A_log").replace("_b.", ".").replace("D_b", "D")
        state[key] = state[mirrored]
    mixer.load_state_dict(state)
    hidden = torch.randn(2, 10, 8, dtype=torch.float64)
    torch.testing.assert_close(mixer(hidden.flip(1)), mixer(hidden).flip(1), rtol=1e-10, atol=1e-10)


def test_mixer_gradcheck_float64():
    mixer = randomise(BiMamba(4, d_state=2, chunk_size=2)).double()
    hidden = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mixer, (hidden,), eps=1e-6, atol=1e-6)


def test_encoder_keys_and_residual_stream():
    encoder = MambaEncoder(8, depth=2, d_state=4, divide_out=True)
    keys = set(encoder.state_dict())
    assert {"layers.0.norm.weight", "layers.1.mixer.A_b_log", "norm_f.weight"} <= keys
    assert all(k.startswith(("layers.", "norm_f.")) for k in keys)
    randomise(encoder).double()
    tokens = torch.randn(2, 6, 8, dtype=torch.float64)
    # Written out: residual r0 = x; h0 = mix0(n0(x)); r1 = r0 + h0; h1 = mix1(n1(r1)); out = nf(r1 + h1)
    blocks = encoder.layers
    h0 = blocks[0].mixer(blocks[0].norm(tokens))
    r1 = tokens + h0
    h1 = blocks[1].mixer(blocks[1].norm(r1))
    torch.testing.assert_close(encoder(tokens), encoder.norm_f(r1 + h1), rtol=1e-12, atol=1e-12)


def test_encoder_drop_path_schedule_and_bad_input():
    encoder = MambaEncoder(8, depth=3, drop_path_rate=0.2, d_state=4)
    rates = [getattr(layer.drop_path, "drop_prob", 0.0) for layer in encoder.layers]
    assert rates == pytest.approx([0.0, 0.0, 0.1])
    assert encoder.drop_path.drop_prob == pytest.approx(0.2)
    with pytest.raises(ValueError, match="expected"):
        encoder.layers[0].mixer(torch.zeros(1, 4, 7))


@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_encoder_in_training_is_the_block_recurrence(residual_in_fp32):
    """Oracle: each block maps (mixer output, residual) to the next pair with its own drop path
    (MambaBlock.forward), then the encoder adds the last mixer output with its drop path and
    normalises; the same random draws with stochastic depth on, in bfloat16 too."""
    torch.manual_seed(0)
    encoder = MambaEncoder(16, depth=3, drop_path_rate=0.5, residual_in_fp32=residual_in_fp32, d_state=4).train()
    tokens = torch.randn(4, 7, 16)
    for dtype in (torch.float32, torch.bfloat16):
        model, x = encoder.to(dtype), tokens.to(dtype)
        torch.manual_seed(1)
        hidden, residual = x, None
        for layer in model.layers:
            hidden, residual = layer(hidden, residual)
        residual = residual + model.drop_path(hidden)
        want = model.norm_f(residual.to(model.norm_f.weight.dtype))
        torch.manual_seed(1)
        got = model(x)
        assert got.dtype == want.dtype and torch.equal(got, want)
    torch.manual_seed(2)
    assert not torch.equal(encoder(tokens.bfloat16()), got)  # other draws, another output
