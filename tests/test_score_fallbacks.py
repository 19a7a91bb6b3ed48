"""Counting the samples whose scores fell back to a uniform grid (dart_core.fallbacks), and its
logging in the shared training loop, also under two-rank DDP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from dart_core import DART
from dart_core.fallbacks import fallback_counters, take_fallback_count
from dart_core.partition import usable_scores
from dart_core.training import (
    DistContext,
    EpochSampler,
    JsonlLogger,
    RunningMean,
    fallback_fields,
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


def ddp_rank(rank: int, init_file: str, out_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = tiny_dart()
        net = wrap_ddp(model, DistContext(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu")))
        assert isinstance(net, torch.nn.parallel.DistributedDataParallel)
        for _ in range(3):  # rank 0 spoils 1 sample per step, rank 1 spoils 2
            net(batch(list(range(rank + 1)))).sum().backward()
        own = int(model.score_fallbacks)
        total = fallback_fields(net)["score_fallbacks"]
        torch.save({"own": own, "total": total}, f"{out_file}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_wrap_ddp_keeps_each_rank_count_and_the_log_sums_them(tmp_path):
    mp.spawn(ddp_rank, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    results = [torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=True) for rank in range(2)]
    # DDP's default buffer broadcast would overwrite rank 1's count with rank 0's before each forward
    assert [r["own"] for r in results] == [3, 6]
    assert [r["total"] for r in results] == [9, 9]


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
