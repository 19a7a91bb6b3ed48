"""Counting the samples whose scores fell back to a uniform grid (dart_core.fallbacks), and its
logging in the shared training loop, also under two-rank DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from dart_core import DART
from dart_core.fallbacks import fallback_counters, take_fallback_count
from dart_core.partition import usable_scores
from dart_core.training import (
    DistContext,
    EpochSampler,
    JsonlLogger,
    RunningMean,
    read_jsonl,
    train_epoch,
    wrap_ddp,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

GRID = (2, 2)
SPOILERS = {"nan": float("nan"), "inf": float("inf"), "negative": -1.0}


def usable_oracle(sample: np.ndarray) -> bool:
    values = [float(v) for v in sample.ravel()]
    return all(math.isfinite(v) and v >= 0 for v in values) and sum(values) > 0


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["ok", "zero", "nan", "inf", "negative"]), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_usable_scores_matches_a_per_sample_oracle(kinds, seed):
    rng = np.random.default_rng(seed)
    scores = rng.random((len(kinds), 3, 4)) + 1e-3
    for i, kind in enumerate(kinds):
        if kind == "zero":
            scores[i] = 0.0
        elif kind in SPOILERS:
            scores[i, rng.integers(3), rng.integers(4)] = SPOILERS[kind]
    for dtype in (torch.float64, torch.float32, torch.float16):
        got = usable_scores(torch.from_numpy(scores).to(dtype))
        assert got.tolist() == [usable_oracle(s) for s in scores]


class ImageScores(torch.nn.Module):
    """Scores that are the images' per-cell channel-0 means: a NaN image gives NaN scores."""

    grid_size = GRID

    def forward(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images[:, 0], GRID).abs() + 0.1


def tiny_dart() -> DART:
    torch.manual_seed(0)
    return DART(img_size=16, patch_size=8, embed_dim=4, num_tokens=3, scorer=ImageScores())


def batch(invalid: list[int], size: int = 5) -> torch.Tensor:
    images = torch.rand(size, 3, 16, 16)
    for i in invalid:
        images[i, 0, 0, 0] = float("nan") if i % 2 else float("inf")
    return images


def test_the_tokenizer_counts_the_samples_that_fell_back_and_the_count_is_read_once():
    model = tiny_dart()
    assert list(fallback_counters(model)) == ["score_fallbacks"]
    model(batch([1, 4]))
    model(batch([]))
    with torch.no_grad():
        model(batch([0]))
    with torch.inference_mode():
        model(batch([2, 3]))
    count = take_fallback_count(model)
    assert count.dtype == torch.int64 and int(count) == 5
    assert int(take_fallback_count(model)) == 0  # read and cleared
    assert take_fallback_count(torch.nn.Linear(2, 2)) is None


def test_the_counter_is_no_state_dict_entry_and_keeps_its_dtype():
    model = tiny_dart()
    assert "score_fallbacks" not in model.state_dict()
    other = tiny_dart()
    other.load_state_dict(model.state_dict(), strict=True)
    model.double()
    model(batch([2]).double())
    assert model.score_fallbacks.dtype == torch.int64 and int(model.score_fallbacks) == 1


def test_the_count_survives_torch_compile():
    model = tiny_dart()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(batch([0, 3]))
    compiled(batch([1]))
    assert int(take_fallback_count(compiled)) == 3


class Trainer:
    epoch = step_in_epoch = global_step = 0

    def __init__(self, model):
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.0)


class Indices(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, item):
        return item[0]


def run_epoch(model, invalid_per_step, tmp_path, log_interval):
    trainer = Trainer(model)
    steps = iter(invalid_per_step)

    def step(batches):
        next(batches)
        model(batch(next(steps)))
        trainer.step_in_epoch += 1
        trainer.global_step += 1
        return 0.0

    sampler = EpochSampler(6, seed=0)
    logger = JsonlLogger(tmp_path / "log.jsonl")
    train_epoch(trainer, step, sampler, DataLoader(Indices(), batch_size=1, sampler=sampler), len(invalid_per_step),
                1, log_interval=log_interval, ckpt_interval=100, logger=logger, save=lambda: None,
                running=RunningMean(), progress=False, model=model)
    return read_jsonl(tmp_path / "log.jsonl")


def test_train_epoch_logs_the_count_since_the_last_log_and_warns(tmp_path, capsys):
    model = tiny_dart()
    model(batch([0]))  # e.g. an evaluation pass before the epoch: reported at the first log
    records = run_epoch(model, [[1, 2], [], [], [], [3], []], tmp_path, log_interval=2)
    assert [(r["global_step"], r["score_fallbacks"]) for r in records] == [(2, 3), (4, 0), (6, 1)]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "uniform grid" in line]
    assert len(warnings) == 2 and warnings[0].startswith("warning: step 2: 3 samples")


def test_train_epoch_without_dart_logs_no_count(tmp_path):
    class Plain(torch.nn.Linear):
        def forward(self, images):
            return images.flatten(1)[:, :2] @ self.weight

    records = run_epoch(Plain(2, 2), [[], []], tmp_path, log_interval=1)
    assert len(records) == 2 and all("score_fallbacks" not in r for r in records)


def test_ranks_keep_their_own_counts_and_the_logs_sum_them(tmp_path):
    """Two torchrun ranks (tests/fallback_ranks.py) spoil 1 and 2 samples per step: DDP's buffer
    broadcast would overwrite rank 1's count with rank 0's before each forward; the train log and
    the dense hook's log line carry the sum over both ranks."""
    worker = os.path.join(os.path.dirname(__file__), "fallback_ranks.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           worker, str(tmp_path)], capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["ddp"]["own"] for r in results] == [3, 6]
    assert [r["ddp"]["total"] for r in results] == [9, 9]
    assert [r["dense_hook"] for r in results] == [[6], [6]]  # (1 + 2) images x 2 iterations


def test_wrap_ddp_is_the_identity_for_one_process():
    model = tiny_dart()
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert wrap_ddp(model, ctx) is model and not hasattr(model, "_ddp_params_and_buffers_to_ignore")


def test_the_counter_is_built_on_the_model_device_and_reset_after_a_meta_build():
    with torch.device("meta"):
        model = DART(img_size=16, patch_size=8, embed_dim=4, num_tokens=3, scorer=ImageScores())
    assert model.score_fallbacks.device.type == "meta"
    model = model.to_empty(device="cpu")
    for module in model.modules():  # timm's reinit_non_persistent_buffers convention
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    assert int(model.score_fallbacks) == 0
    built = DART(img_size=16, patch_size=8, embed_dim=4, num_tokens=3, scorer=ImageScores(), device="meta")
    assert built.score_fallbacks.device.type == "meta" and built.proj.weight.device.type == "meta"


def test_score_density_names_the_shape_it_needs():
    from dart_core.partition import score_density

    with pytest.raises(ValueError, match=r"scores must be \(B, h, w\); got shape \(5,\)"):
        score_density(torch.ones(5))
