"""A two-rank torchrun worker for the score-fallback tests: each rank spoils its own number of
samples (rank + 1 per step) and writes what it counted and what the rank sum logged.

Run by tests/test_score_fallbacks.py: ``torchrun --nproc_per_node 2 tests/fallback_ranks.py OUT``.
"""

from __future__ import annotations

import json
import sys

import torch
from dart_core.training import fallback_fields, init_distributed, leaving_process_group, wrap_ddp
from dart_dense import DartWarp
from test_dense_fallbacks import ImageScores as WarpScores
from test_dense_fallbacks import fake_runner, train_iterations
from test_score_fallbacks import batch, tiny_dart


def ddp_counts(ctx) -> dict[str, int]:
    """Three DDP steps of a DART tokenizer: this rank's own count and the logged rank sum."""
    model = tiny_dart()
    net = wrap_ddp(model, ctx)
    assert isinstance(net, torch.nn.parallel.DistributedDataParallel)
    for _ in range(3):
        net(batch(list(range(ctx.rank + 1)))).sum().backward()
    own = int(model.score_fallbacks)
    return {"own": own, "total": fallback_fields(net)["score_fallbacks"]}


def dense_hook_counts(ctx) -> list[int]:
    """The dense hook's logged counts over two iterations logged once (interval 2)."""
    warp = DartWarp((2, 2), 8, WarpScores(), score_input_size=(32, 32))
    runner, _ = fake_runner(f"fallback_ranks_{ctx.rank}", torch.nn.Sequential(warp), interval=2)
    return [int(record["score_fallbacks"]) for record in train_iterations(runner, warp, [list(range(ctx.rank + 1))] * 2)]


if __name__ == "__main__":
    ctx = init_distributed("cpu")
    with leaving_process_group():
        result = {"ddp": ddp_counts(ctx), "dense_hook": dense_hook_counts(ctx)}
    with open(f"{sys.argv[1]}/rank{ctx.rank}.json", "w") as f:
        json.dump(result, f)
