#!/usr/bin/env python
"""Benchmark the DART tokenizer against timm's PatchEmbed (same batch, token count, embed dim).

Every figure is a ratio measured in this run: DART (high-resolution mode: 448 input, N = 196
tokens from a 14×14 score grid) against ``timm.layers.PatchEmbed`` (224 input, patch 16, the same
196 tokens and embed dim). ``--tokens N`` (a square, g × g) scales both: PatchEmbed on 16·g
inputs, DART on 32·g inputs with a g × g grid, both models likewise. Rows:

* tokenizer forward (inference, no autograd) and forward + backward as in training (images need
  no gradient; the scores, the positional table and the projection do), without a scorer (the
  scores are a learned (h, w) map, so gradients still flow through the partition) and with the
  MobileNetV3-Small scorer of the DeiT-Tiny model; on the CPU also the no-scorer forward + backward
  with the PyTorch fallback instead of the compiled C kernels (what a machine without a C compiler
  runs), and the floor under DART's forward + backward: its three projection matrix products alone
  (forward, weight gradient, and the patch gradient that carries the loss to the scores, which
  PatchEmbed never computes) on random operands;
* one whole training step (forward, cross-entropy, backward, AdamW) of DeiT-Tiny + DART
  (``deit_tiny_dart_patch16_448``) against DeiT-Tiny (``deit_tiny_patch16_224``), same tokens;
* peak memory of each tokenizer step (CPU: peak bytes of the live tensors it creates; CUDA: the
  caching allocator's peak) relative to the bytes of the (B, N, C, P, P) patches DART samples;
* forward FLOPs (``FlopCounterMode``; fused attention switched off so it is counted) per image.

Timings interleave the two contenders and report the median of the per-repeat ratios and the
ratio of the best times (both robust to a machine shared with other jobs), with the median
absolute times alongside.

Usage::

    python tools/bench_tokenizer.py                   # CPU, batch 32 (under 3 minutes on 2 cores)
    python tools/bench_tokenizer.py --device cuda     # GPU (the Triton kernels)
    python tools/bench_tokenizer.py --threads 1 --clock cpu   # CPU time: steadier on a shared machine
    python tools/bench_tokenizer.py --json out.json --batch 64 --repeats 21
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import dart_core
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from dart_core import DART, build_scorer
from dart_core.kernels import native
from dart_core.training.flops import count_flops
from timm.layers import PatchEmbed
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

PATCH = 16


class LearnedScores(nn.Module):
    """A scorer stand-in without a network: one learned positive (h, w) map shared by the batch."""

    def __init__(self, grid_size: tuple[int, int]):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(1, *grid_size) * 0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(self.logits) + 0.1).expand(images.shape[0], -1, -1)


class PatchEmbedTokenizer(nn.Module):
    """The baseline: PatchEmbed + a learned positional table, (B, C, 16·h, 16·w) → (B, h·w, D)."""

    def __init__(self, embed_dim: int, grid: tuple[int, int]):
        super().__init__()
        self.embed = PatchEmbed(img_size=(grid[0] * PATCH, grid[1] * PATCH), patch_size=PATCH, in_chans=3,
                                embed_dim=embed_dim)
        self.pos = nn.Parameter(torch.randn(1, grid[0] * grid[1], embed_dim) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images) + self.pos


class DARTTokenizer(nn.Module):
    """DART + its resampled positional table, (B, C, 32·h, 32·w) → (B, h·w, D) from an (h, w) grid."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], scorer: nn.Module):
        super().__init__()
        self.embed = DART(img_size=(grid[0] * PATCH * 2, grid[1] * PATCH * 2), patch_size=PATCH,
                          embed_dim=embed_dim, num_tokens=grid[0] * grid[1], sample_scale=2, scorer=scorer)
        self.pos_grid = nn.Parameter(torch.randn(1, *grid, embed_dim) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.embed(images, pos_grid=self.pos_grid, return_details=True)
        return out.tokens + out.pos_embed


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_ratio(base: Callable[[], None], cand: Callable[[], None], repeats: int, warmup: int,
                      device: torch.device, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time two callables alternately; the median of per-repeat cand/base ratios and times (ms).

    ``clock`` is wall time by default; the process CPU time (``time.process_time``) measures the
    work done rather than the latency, which is steadier on a machine shared with other jobs but
    is only comparable to wall time with one CPU thread.
    """
    for _ in range(warmup):
        base()
        cand()
    synchronize(device)
    base_ms, cand_ms = [], []
    for _ in range(repeats):
        for fn, times in ((base, base_ms), (cand, cand_ms)):
            start = clock()
            fn()
            synchronize(device)
            times.append((clock() - start) * 1e3)
    ratios = [c / b for b, c in zip(base_ms, cand_ms, strict=True)]
    return dict(ratio=statistics.median(ratios), base_ms=statistics.median(base_ms),
                cand_ms=statistics.median(cand_ms), ratio_min=min(cand_ms) / min(base_ms))


def forward_step(model: nn.Module, images: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(images)
    return run


def train_step(model: nn.Module, images: torch.Tensor) -> Callable[[], None]:
    """Forward + backward of a tokenizer; images need no gradient, every parameter does."""
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(images).square().mean().backward()
    return run


def projection_gemms(tokenizer: DARTTokenizer, images: torch.Tensor) -> Callable[[], None]:
    """DART's three projection matrix products of a training step on random operands, nothing else:
    forward, weight gradient, and the patch gradient PatchEmbed never needs (it carries the loss
    to the scores). Their time is a floor under DART's forward + backward."""
    weight = tokenizer.embed.proj.weight.detach().flatten(1)  # (D, C·P·P)
    count = images.shape[0] * tokenizer.embed.num_tokens
    patches = torch.randn(count, weight.shape[1], device=images.device)
    grad = torch.randn(count, weight.shape[0], device=images.device)
    bias = torch.zeros(weight.shape[0], device=images.device)

    def run() -> None:
        torch.addmm(bias, patches, weight.t())
        grad.t() @ patches
        grad @ weight
    return run


def projection_gemms_and_sampler_traffic(tokenizer: DARTTokenizer, images: torch.Tensor) -> Callable[[], None]:
    """The GEMM floor plus the bytes any sampler moves in a training step, at streaming speed: the
    images read in the forward and again in the backward, the patches written, the patch gradient
    read. No sampler can take less time than these passes; 1.5x needs DART's whole step near it."""
    gemms = projection_gemms(tokenizer, images)
    weight = tokenizer.embed.proj.weight
    patches = torch.empty(images.shape[0] * tokenizer.embed.num_tokens, weight[0].numel(), device=images.device)

    def run() -> None:
        gemms()
        images.sum()  # the forward's reads
        patches.fill_(1.0)  # the patches written
        images.sum()  # the backward's reads
        patches.sum()  # the patch gradient read
    return run


def with_pytorch_kernels(step: Callable[[], None]) -> Callable[[], None]:
    """The same step with the PyTorch CPU paths instead of the compiled kernels (no C compiler)."""
    def run() -> None:
        with native.disabled():
            step()
    return run


def optimizer_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return run


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created under it while they live, and their peak."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live and key not in inputs:  # views and in-place ops own nothing new
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._release, key)
        return out


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes of the tensors one call of ``step`` allocates (beyond what exists before it).

    CUDA: the caching allocator's peak. CPU: the peak of the live tensor storages created during
    the call, tracked op by op (the process RSS would hide reuse of freed heap memory).
    """
    step()  # lazy initialisation out of the way
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with LiveTensorBytes() as tracker:
        step()
    return tracker.peak


def token_grid(tokens: int) -> tuple[int, int]:
    """The (g, g) grid of a square token count: PatchEmbed makes exactly that many."""
    side = math.isqrt(max(tokens, 0))
    if tokens < 1 or side * side != tokens:
        raise ValueError(f"--tokens {tokens}: PatchEmbed's token count is a square grid; use a square such as "
                         f"{max(side, 1) ** 2} or {(side + 1) ** 2}")
    return side, side


def build(args, grid: tuple[int, int], device: torch.device) -> dict:
    torch.manual_seed(0)
    scorer = build_scorer("mobilenet_v3_small", "v1", grid_size=grid)
    models = {
        "patch_embed": PatchEmbedTokenizer(args.embed_dim, grid),
        "dart": DARTTokenizer(args.embed_dim, grid, LearnedScores(grid)),
        "dart_scorer": DARTTokenizer(args.embed_dim, grid, scorer),
    }
    return {name: model.to(device) for name, model in models.items()}


def run(args) -> dict:
    # Timing only: a random frozen scorer costs what a trained one does, so its warning is noise here.
    warnings.filterwarnings("ignore", message="the DART scorer's backbone is frozen but randomly initialised")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = token_grid(args.tokens)
    tokenizers = build(args, grid, device)
    small = torch.randn(args.batch, 3, grid[0] * PATCH, grid[1] * PATCH, device=device)
    large = torch.randn(args.batch, 3, 2 * grid[0] * PATCH, 2 * grid[1] * PATCH, device=device)
    patch_bytes = args.batch * args.tokens * 3 * PATCH * PATCH * large.element_size()
    rows = []

    def timed(name: str, base: Callable[[], None], cand: Callable[[], None], repeats: int) -> None:
        result = interleaved_ratio(base, cand, repeats, args.warmup, device, CLOCKS[args.clock])
        rows.append(dict(name=name, **result))
        print(f"  {name:<52} {result['ratio']:6.2f}x {result['ratio_min']:6.2f}x  "
              f"({result['cand_ms']:8.1f} ms vs {result['base_ms']:8.1f} ms)", flush=True)

    print(f"DART vs PatchEmbed: batch {args.batch}, {args.tokens} tokens, embed dim {args.embed_dim}, "
          f"DART input {large.shape[-1]}, PatchEmbed input {small.shape[-1]}, device {device}, "
          f"threads {torch.get_num_threads()}, {args.clock} clock, "
          f"load average {_load_average()}")
    print("timing: DART / baseline, the median of interleaved per-repeat ratios and the ratio of the best "
          "times (median times in brackets)")
    base = tokenizers["patch_embed"]
    for key, label, repeats in (("dart", "no scorer", args.repeats),
                                ("dart_scorer", "MobileNetV3-S scorer", max(3, args.repeats // 3))):
        timed(f"tokenizer forward, {label}", forward_step(base, small), forward_step(tokenizers[key], large), repeats)
        timed(f"tokenizer forward + backward, {label}", train_step(base, small), train_step(tokenizers[key], large),
              repeats)
        if key == "dart":
            timed("  floor: its 3 projection GEMMs alone", train_step(base, small),
                  projection_gemms(tokenizers[key], large), repeats)
            timed("  floor: the GEMMs + the sampler's bytes streamed", train_step(base, small),
                  projection_gemms_and_sampler_traffic(tokenizers[key], large), repeats)
        if device.type == "cpu" and key == "dart" and native.available():
            timed("  the same, PyTorch CPU path (no C compiler)", train_step(base, small),
                  with_pytorch_kernels(train_step(tokenizers[key], large)), repeats)

    labels = torch.randint(0, 1000, (args.batch,), device=device)
    deit = timm.create_model("deit_tiny_patch16_224", num_classes=1000, img_size=small.shape[-1]).to(device).train()
    deit_dart = timm.create_model("deit_tiny_dart_patch16_448", num_classes=1000, num_tokens=args.tokens,
                                  img_size=large.shape[-1]).to(device).train()
    timed("DeiT-Tiny + DART training step", optimizer_step(deit, small, labels),
          optimizer_step(deit_dart, large, labels), args.model_repeats)

    print(f"peak memory of one tokenizer step / bytes of DART's output patches ({patch_bytes / 2**20:.1f} MiB)")
    memory = {}
    for key, model, images in (("patch_embed", base, small), ("dart", tokenizers["dart"], large),
                               ("dart_scorer", tokenizers["dart_scorer"], large)):
        for mode, step in (("forward", forward_step(model, images)), ("forward_backward", train_step(model, images))):
            peak = peak_bytes(step, device)
            memory[f"{key}/{mode}"] = peak / patch_bytes
            print(f"  {key + ' ' + mode:<52} {peak / patch_bytes:5.2f}x ({peak / 2**20:7.1f} MiB)")

    print("forward FLOPs per image (matmuls and convolutions; attention unfused)")
    one_small, one_large = small[:1], large[:1]
    flops = {
        "patch_embed": count_flops(base, one_small),
        "dart": count_flops(tokenizers["dart"], one_large),
        "dart_scorer": count_flops(tokenizers["dart_scorer"], one_large),
        "deit_tiny": count_flops(deit, one_small),
        "deit_tiny_dart": count_flops(deit_dart, one_large),
    }
    flop_ratios = {
        "dart/patch_embed": flops["dart"] / flops["patch_embed"],
        "dart_scorer/patch_embed": flops["dart_scorer"] / flops["patch_embed"],
        "deit_tiny_dart/deit_tiny": flops["deit_tiny_dart"] / flops["deit_tiny"],
    }
    for name, value in flops.items():
        print(f"  {name:<52} {value / 1e9:8.4f} GFLOPs")
    for name, value in flop_ratios.items():
        print(f"  {name:<52} {value:6.2f}x")

    return dict(
        config=dict(vars(args), threads=torch.get_num_threads(), torch=torch.__version__, timm=timm.__version__,
                    dart_core=getattr(dart_core, "__version__", None), python=platform.python_version(),
                    machine=platform.machine(), device_name=_device_name(device),
                    load_average_end=_load_average()),
        timing=rows,
        memory_vs_patches=memory,
        patch_bytes=patch_bytes,
        flops_per_image=flops,
        flop_ratios=flop_ratios,
    )


def _load_average() -> str:
    """The 1-minute load average (other jobs on the machine skew absolute times), or n/a."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=196,
                        help="token count of every contender, a square g*g (default 196: 224 / 448 inputs)")
    parser.add_argument("--embed-dim", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=11, help="timed repeats of the no-scorer rows (a third of it with the scorer)")
    parser.add_argument("--model-repeats", type=int, default=2, help="timed repeats of the training step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time (default) or process CPU time (steadier on a shared machine; use with --threads 1)")
    parser.add_argument("--json", type=Path, default=Path("bench_tokenizer.json"), help="where to write the results")
    args = parser.parse_args(argv)
    try:
        token_grid(args.tokens)
    except ValueError as error:
        parser.error(str(error))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU; none is visible")
    if args.device.startswith("cuda") and args.clock != "wall":
        parser.error("--clock cpu measures host work only; GPU timings need --clock wall")
    results = run(args)
    results["config"]["json"] = str(args.json)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
