"""tools/bench_tokenizer.py on a tiny setting: every contender gets the same token count."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import bench_tokenizer  # noqa: E402


def test_a_square_token_count_scales_every_contender(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_tokenizer.main(["--batch", "2", "--tokens", "16", "--embed-dim", "8", "--repeats", "1",
                                 "--model-repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    assert "DART input 128, PatchEmbed input 64" in capsys.readouterr().out
    results = json.loads(out.read_text())
    names = [row["name"] for row in results["timing"]]
    assert "tokenizer forward + backward, no scorer" in names and "DeiT-Tiny + DART training step" in names
    assert all(row["ratio"] > 0 and row["base_ms"] > 0 and row["cand_ms"] > 0 for row in results["timing"])
    assert results["patch_bytes"] == 2 * 16 * 3 * 16 * 16 * 4  # (B, N, C, P, P) float32 patches
    flops = results["flops_per_image"]
    # same tokens and embed dim: the projections match (8·768 MACs a token), DART adds a few adds of
    # its positional resampling at most; the DeiT pair differs by the scorer's FLOPs only
    assert flops["dart"] >= flops["patch_embed"] == 2 * 16 * 8 * 768
    assert flops["dart"] < 1.1 * flops["patch_embed"]
    assert flops["deit_tiny_dart"] > flops["deit_tiny"]


@pytest.mark.parametrize("tokens", ["15", "0"])
def test_a_token_count_patch_embed_cannot_make_is_refused(tokens, capsys):
    with pytest.raises(SystemExit):
        bench_tokenizer.main(["--tokens", tokens])
    assert "PatchEmbed's token count is a square grid" in capsys.readouterr().err


def test_the_gemm_floor_is_the_three_projection_products_of_a_dart_step():
    """Forward, weight gradient and patch gradient: 3 × 2·(B·N)·D·(C·P·P) FLOPs, the same products
    autograd runs for DART's projection (counted on a real step of the tokenizer's linear)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch, grid, dim = 2, (4, 4), 8
    tokenizer = bench_tokenizer.DARTTokenizer(dim, grid, bench_tokenizer.LearnedScores(grid))
    images = torch.randn(batch, 3, 2 * 16 * grid[0], 2 * 16 * grid[1])
    with FlopCounterMode(display=False) as floor:
        bench_tokenizer.projection_gemms(tokenizer, images)()
    patches = torch.randn(batch * 16, 3 * 16 * 16, requires_grad=True)  # needs a patch gradient, like DART's
    with FlopCounterMode(display=False) as step:
        tokenizer.embed.project(patches.view(batch, 16, 3, 16, 16)).sum().backward()
    assert floor.get_total_flops() == step.get_total_flops() == 3 * 2 * (batch * 16) * dim * (3 * 16 * 16)


def test_the_streaming_floor_moves_the_sampler_bytes_of_a_step_besides_the_gemms():
    """Outside its matrix products the streaming floor reads the images twice, writes the patches and
    reads a patch gradient: 2 × image bytes + 2 × patch bytes, counted on every op's tensors."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class NonGemmBytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            moves_bytes = not func.is_view  # a view (the GEMMs' transposes) reads and writes nothing
            if moves_bytes and func not in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
                # an in-place op's output is its input: count that tensor once
                self.bytes += sum({id(t): t.numel() * t.element_size() for t in tensors}.values())
            return out

    batch, grid, dim = 2, (4, 4), 8
    tokenizer = bench_tokenizer.DARTTokenizer(dim, grid, bench_tokenizer.LearnedScores(grid))
    images = torch.randn(batch, 3, 2 * 16 * grid[0], 2 * 16 * grid[1])
    patches = batch * 16 * 3 * 16 * 16 * 4
    run = bench_tokenizer.projection_gemms_and_sampler_traffic(tokenizer, images)
    with NonGemmBytes() as counter:
        run()
    scalars = 3 * 4  # the three sums' one-element results
    assert counter.bytes == 2 * images.numel() * 4 + 2 * patches + scalars
