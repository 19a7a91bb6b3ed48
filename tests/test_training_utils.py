"""dart_core.training: atomic/safe checkpoints, RNG capture, resumable data order, JSON lines,
torchrun helpers and FLOP counting."""

import argparse
import collections
import contextlib
import copy
import os
import random
import stat
import time

import numpy as np
import pytest
import torch
from dart_core.training import (
    CheckpointError,
    EpochSampler,
    JsonlLogger,
    RunningMean,
    SeededDataset,
    all_gather_objects,
    all_reduce_sum,
    capture_rng_state,
    count_flops,
    count_params,
    init_distributed,
    leaving_process_group,
    load_checkpoint,
    read_jsonl,
    restore_rng_state,
    resume_optimizer,
    save_checkpoint,
    save_last_and_best,
    seed_rank,
    seeded_rng,
    teardown_distributed,
    train_epoch,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader


class Exploding:
    """Pickling this raises: simulates a crash in the middle of torch.save."""

    def __reduce__(self):
        raise RuntimeError("boom")


class Untrusted:
    pass


def _draws():
    return (random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist())


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_with_namespace_and_rng(tmp_path):
    path = tmp_path / "sub" / "ckpt.pth"
    obj = {
        "model": {"w": torch.randn(3, 4)},
        "args": argparse.Namespace(lr=1e-3, model="deit", epochs=300, flags=[1, 2]),
        "rng": capture_rng_state(),
        "epoch": 7,
    }
    save_checkpoint(obj, path)
    out = load_checkpoint(path)
    assert torch.equal(out["model"]["w"], obj["model"]["w"])
    assert out["args"] == obj["args"]
    assert out["epoch"] == 7


def test_checkpoint_save_is_atomic(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"v": torch.ones(2)}, path)
    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"v": torch.zeros(2), "bad": Exploding()}, path)
    assert torch.equal(load_checkpoint(path)["v"], torch.ones(2))  # old file intact
    assert os.listdir(tmp_path) == ["ckpt.pth"]  # no temporary left behind


def test_save_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    """The POSIX recipe for a save that survives a power cut: the data reaches the disk before the
    rename publishes it, and the rename itself is made durable by an fsync of the directory."""
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint({"v": torch.ones(2)}, tmp_path / "c.pth")
    inode = os.stat(tmp_path / "c.pth").st_ino
    assert events == [("fsync", "file", inode), ("replace", inode), ("fsync", "dir", os.stat(tmp_path).st_ino)]


def test_checkpoint_refuses_unlisted_class_with_clear_error(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": Untrusted()}, path)
    with pytest.raises(CheckpointError, match="Untrusted.*extra_safe_globals") as error:
        load_checkpoint(path)
    assert error.value.refused == (f"{__name__}.Untrusted",) and error.value.path == str(path)
    torch.save({"x": Untrusted()}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="holds .*Untrusted") as error:
        load_checkpoint(tmp_path / "legacy.pth")
    assert error.value.refused == (f"{__name__}.Untrusted",)
    assert isinstance(load_checkpoint(path, extra_safe_globals=[Untrusted])["x"], Untrusted)


def test_checkpoint_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as error:
        load_checkpoint(tmp_path / "nope.pth")
    assert error.value.refused is None


@pytest.mark.parametrize("content", [b"not a checkpoint", b"\x80\x02}q\x00", b"PK\x03\x04 truncated zip"])
def test_checkpoint_unreadable_file(tmp_path, content):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a readable torch.save file") as error:
        load_checkpoint(tmp_path / "bad.pth")
    assert error.value.refused is None


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoint_gets_the_permissions_of_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_checkpoint({"v": torch.ones(2)}, tmp_path / "ckpt.pth")
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "ckpt.pth").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode) == 0o666 & ~umask


def test_checkpoint_save_removes_stale_temporaries_of_its_own_destination_only(tmp_path):
    """A save killed mid-write leaves ``last.pth.<random>.tmp``; the next save to last.pth removes
    such files last written before this process started, and nothing else."""
    def touch(name, age_s):
        (tmp_path / name).write_bytes(b"partial")
        os.utime(tmp_path / name, (time.time() - age_s, time.time() - age_s))

    touch("last.pth.k2_9xq1a.tmp", 3600)  # mkstemp-style leftover of a killed earlier run
    touch("last.pth.0a1b2c3d4e5f.tmp", 3600)
    touch("last.pth.4f3e2d1c0b0a.tmp", 0)  # being written right now (by another live process)
    touch("best.pth.0a1b2c3d4e5f.tmp", 3600)  # another destination's
    touch("last.pth.tmp", 3600)  # not the temporary pattern
    touch("last.pth.a.b.tmp", 3600)
    touch("notes.txt", 3600)
    save_checkpoint({"v": torch.ones(2)}, tmp_path / "last.pth")
    assert sorted(os.listdir(tmp_path)) == sorted(["last.pth", "last.pth.4f3e2d1c0b0a.tmp", "best.pth.0a1b2c3d4e5f.tmp",
                                                   "last.pth.tmp", "last.pth.a.b.tmp", "notes.txt"])
    assert torch.equal(load_checkpoint(tmp_path / "last.pth")["v"], torch.ones(2))


def test_mapping_arg_refuses_yaml_that_cannot_be_meant():
    from dart_core.training.arguments import mapping_arg

    assert mapping_arg("{depth: 2, img_size: [32, 32], scorer_batch_stats: true}") == {
        "depth": 2, "img_size": [32, 32], "scorer_batch_stats": True}
    assert mapping_arg('{"depth": 2}') == {"depth": 2}
    # YAML reads '{depth:2}' as {'depth:2': None}, which timm.create_model would silently drop
    with pytest.raises(argparse.ArgumentTypeError, match=r"key 'depth:2' .*write '\{depth: 2\}', a space after each"):
        mapping_arg("{depth:2}")
    with pytest.raises(argparse.ArgumentTypeError, match=r"write '\{embed_dim: 32\}'"):
        mapping_arg("{depth: 2, embed_dim:32}")
    with pytest.raises(argparse.ArgumentTypeError, match=r"'depth' has no value"):
        mapping_arg("{depth: }")
    with pytest.raises(argparse.ArgumentTypeError, match="key 1 is not an argument name"):
        mapping_arg("{1: 2}")
    with pytest.raises(argparse.ArgumentTypeError, match="expected a mapping"):
        mapping_arg("[1, 2]")


def test_running_mean_survives_a_checkpoint(tmp_path):
    losses = [0.5, 0.25, 1.0 / 3.0, 0.1]
    whole = RunningMean()
    for loss in losses:
        whole.add(loss)
    first = RunningMean()
    for loss in losses[:2]:
        first.add(loss)
    save_checkpoint({"loss": first.state_dict()}, tmp_path / "ckpt.pth")
    resumed = RunningMean()
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt.pth")["loss"])
    for loss in losses[2:]:
        resumed.add(loss)
    assert resumed.mean == whole.mean == sum(losses) / len(losses)


# ---------------------------------------------------------------- RNG


def test_rng_capture_restore_reproduces_all_generators():
    _draws()
    state = capture_rng_state()
    first = _draws()
    _draws()
    restore_rng_state(state)
    assert _draws() == first


def test_rng_state_survives_a_checkpoint(tmp_path):
    np.random.randn()  # leave a cached Gaussian in NumPy's state
    save_checkpoint(capture_rng_state(), tmp_path / "rng.pth")
    first = _draws()
    # the RNG state needs no allow-list entry: plain torch.load(weights_only=True) reads it
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert _draws() == first


def test_seeded_rng_is_a_pure_function_of_the_seed_and_leaves_outer_state_alone():
    state = capture_rng_state()
    with seeded_rng(123):
        a = _draws()
    after_block = _draws()
    restore_rng_state(state)
    expected_after = _draws()
    _draws()
    with seeded_rng(123):
        b = _draws()
    assert a == b
    assert after_block == expected_after


def test_seed_rank_differs_per_rank():
    seed_rank(5, 0)
    r0 = _draws()
    seed_rank(5, 1)
    r1 = _draws()
    seed_rank(5, 0)
    assert _draws() == r0 and r0 != r1


# ---------------------------------------------------------------- data order


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), ws=st.integers(1, 4), epoch=st.integers(0, 3), shuffle=st.booleans())
def test_eval_sampler_covers_every_item_exactly_once(n, ws, epoch, shuffle):
    items = []
    for rank in range(ws):
        s = EpochSampler(n, rank=rank, world_size=ws, shuffle=shuffle, pad=False, seed=3)
        s.set_epoch(epoch)
        items += [i for i, _ in s]
    assert sorted(items) == list(range(n))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), ws=st.integers(1, 4), repeats=st.integers(1, 3), epoch=st.integers(0, 3))
def test_train_sampler_balanced_and_repeats_each_image_on_different_ranks(n, ws, repeats, epoch):
    per_rank = []
    for rank in range(ws):
        s = EpochSampler(n, rank=rank, world_size=ws, repeats=repeats, seed=1)
        s.set_epoch(epoch)
        per_rank.append(list(s))
    assert all(len(p) == -(-n // ws) for p in per_rank)
    idx = [i for p in per_rank for i, _ in p]
    assert all(0 <= i < n for i in idx)
    if repeats == 1 and n % ws == 0:
        assert sorted(idx) == list(range(n))  # a plain permutation, no padding needed
    if len(idx) <= n * repeats:  # no wrap-around: a prefix of "each drawn image `repeats` times in a row"
        counts = sorted(collections.Counter(idx).values())
        assert all(c == repeats for c in counts[1:]) and 1 <= counts[0] <= repeats, counts
    if repeats <= ws:  # DeiT's repeated augmentation: copies of an image go to different ranks
        for p in per_rank:
            if ws * len(p) <= n * repeats:
                counts = np.bincount([i for i, _ in p], minlength=n)
                assert counts.max() <= 1
    seeds = [sd for p in per_rank for _, sd in p]
    assert len(set(seeds)) == len(seeds)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), ws=st.integers(1, 3), start=st.integers(0, 30))
def test_sampler_start_skips_exactly_the_consumed_prefix(n, ws, start):
    s = EpochSampler(n, rank=ws - 1, world_size=ws, seed=9)
    s.set_epoch(2)
    full = list(s)
    start = min(start, len(full))
    s.set_start(start)
    assert list(s) == full[start:] and len(s) == len(full) - start
    s.set_epoch(3)  # a new epoch starts from its beginning
    assert len(s) == len(full)


def test_sampler_order_is_a_function_of_seed_and_epoch_with_no_collisions():
    def order(seed, epoch):
        s = EpochSampler(50, seed=seed)
        s.set_epoch(epoch)
        return tuple(i for i, _ in s)

    assert order(0, 1) == order(0, 1)
    # every (seed, epoch) pair its own order: e.g. (0, 1) and (1, 0) must not share one
    assert len({order(seed, epoch) for seed in range(4) for epoch in range(4)}) == 16


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="non-empty"):
        EpochSampler(0)
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(5, rank=2, world_size=2)
    with pytest.raises(ValueError, match="pad"):
        EpochSampler(5, repeats=3, pad=False)


class RandomAug(torch.utils.data.Dataset):
    """Each item draws from all three global RNGs, like a timm training transform does."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.tensor([float(i), random.random(), float(np.random.rand())]), torch.rand(2)


def test_seeded_dataset_augmentation_is_independent_of_workers_and_outer_rng():
    sampler = EpochSampler(12, seed=4)
    sampler.set_epoch(1)

    def batches(workers):
        torch.manual_seed(workers)  # different main-process state: must not matter
        loader = DataLoader(SeededDataset(RandomAug()), batch_size=4, sampler=sampler, num_workers=workers)
        return [torch.cat([a.flatten(), b.flatten()]) for a, b in loader]

    b0, b2 = batches(0), batches(2)
    assert all(torch.equal(x, y) for x, y in zip(b0, b2, strict=True))
    assert len({tuple(x.tolist()) for x in b0}) == 3  # and the draws really are random


# ---------------------------------------------------------------- the epoch loop


class Indices(torch.utils.data.Dataset):
    """Item ``(index, seed)`` is its index: a loader over it yields the sampler's order."""

    def __len__(self):
        return 12

    def __getitem__(self, item):
        return item[0]


def test_train_epoch_feeds_each_epoch_its_own_order_and_resumes_mid_epoch():
    """Oracle: a fresh sampler's order for the epoch, without the ``step_in_epoch × batch`` samples
    a resumed epoch has already consumed."""
    def order(epoch):
        s = EpochSampler(12, seed=3)
        s.set_epoch(epoch)
        return [i for i, _ in s]

    class Trainer:
        epoch = step_in_epoch = global_step = 0
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    trainer, seen = Trainer(), []

    def step(batches):
        seen.extend(next(batches).tolist())
        trainer.step_in_epoch += 1
        trainer.global_step += 1
        return 0.0

    sampler = EpochSampler(12, seed=3)
    loader = DataLoader(Indices(), batch_size=4, sampler=sampler)
    for epoch, start in ((0, 0), (1, 0), (2, 1)):  # epoch 2 resumed after its first step
        trainer.epoch, trainer.step_in_epoch, seen[:] = epoch, start, []
        train_epoch(trainer, step, sampler, loader, 3, 4, log_interval=100, ckpt_interval=100, logger=JsonlLogger(None),
                    save=lambda: None, running=RunningMean(), progress=False)
        assert seen == order(epoch)[4 * start:]
    assert order(0) != order(1)


# ---------------------------------------------------------------- JSON lines


def test_jsonl_logger(tmp_path):
    path = tmp_path / "logs" / "log.jsonl"
    log = JsonlLogger(path)
    log.log(step=1, loss=torch.tensor(0.5), acc=np.float32(0.25), lrs=[1e-3, torch.tensor(2.0)])
    log.log(step=2, loss=float("nan"))
    JsonlLogger(path, enabled=False).log(step=3)
    recs = read_jsonl(path)
    assert [r["step"] for r in recs] == [1, 2]
    assert recs[0]["loss"] == 0.5 and recs[0]["acc"] == 0.25 and recs[0]["lrs"] == [1e-3, 2.0]
    assert recs[1]["loss"] == "nan" and "time" in recs[1]


# ---------------------------------------------------------------- FLOPs


def test_count_flops_matches_analytic_vit_count_even_with_fused_attention():
    import timm

    C, S, P, D, depth, heads, classes = 3, 32, 8, 64, 2, 2, 10
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=S, patch_size=P, embed_dim=D, depth=depth, num_heads=heads,
        num_classes=classes,
    )
    attn = [m for m in model.modules() if hasattr(m, "fused_attn")]
    for m in attn:
        m.fused_attn = True
    n = (S // P) ** 2
    T = n + 1  # class token
    patch = 2 * C * P * P * D * n
    block = 2 * T * D * 3 * D + 2 * 2 * T * T * D + 2 * T * D * D + 2 * 2 * T * D * 4 * D
    expected = patch + depth * block + 2 * D * classes
    assert count_flops(model, torch.randn(1, C, S, S)) == expected
    assert count_flops(model, torch.randn(2, C, S, S)) == 2 * expected
    assert all(m.fused_attn for m in attn)  # flags restored
    assert model.training


def test_count_params_counts_shared_tensors_once():
    lin = torch.nn.Linear(3, 4)
    model = torch.nn.Sequential(lin, torch.nn.ReLU(), lin)
    assert count_params(model) == 3 * 4 + 4


# ---------------------------------------------------------------- distributed


def test_init_distributed_single_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.device.type) == (0, 1, True, "cpu")
    assert torch.equal(all_reduce_sum(torch.tensor([1.0, 2.0])), torch.tensor([1.0, 2.0]))
    assert all_gather_objects({"a": 1}) == [{"a": 1}]
    teardown_distributed()


@pytest.mark.parametrize("raises", [False, True])
def test_leaving_process_group_waits_for_the_others_only_on_success(tmp_path, monkeypatch, raises):
    """A one-rank gloo group is left when the block ends; the barrier before leaving runs only when
    the block finished (a failing rank must not wait for ranks that may be inside a collective)."""
    import torch.distributed as dist
    barriers = []
    real_barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: (barriers.append(1), real_barrier(*a, **k))[1])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(KeyError) if raises else contextlib.nullcontext():
            with leaving_process_group():
                assert dist.is_initialized()
                if raises:
                    raise KeyError("a failing step")
        assert not dist.is_initialized() and barriers == ([] if raises else [1])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_init_distributed_needs_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_distributed("cpu")

# Two gloo processes (init_distributed, all_reduce_sum, all_gather_objects) run under torchrun in
# tests/test_pretrain.py::test_two_processes_under_torchrun.


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (None, FileNotFoundError, "does not exist"),
        (b"  \n", ValueError, "is empty"),
        (b'{"a": \xff}', ValueError, "is not UTF-8 text"),
        (b'{"a": [1,', ValueError, r"is not valid JSON \(Expecting value: line 1 column 10"),
    ],
)
def test_read_json_names_the_file_the_problem_and_the_remedy(tmp_path, content, error, message):
    from dart_core.datafiles import read_json

    path = tmp_path / "labels.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=message) as raised:
        read_json(path, "restore it from the release")
    assert str(path) in str(raised.value) and str(raised.value).endswith("; restore it from the release")


def test_read_json_returns_the_parsed_content(tmp_path):
    from dart_core.datafiles import read_json

    path = tmp_path / "split.json"
    path.write_text('[{"id": "7", "template": "Pushing [something]"}]', encoding="utf-8")
    assert read_json(path, "unused") == [{"id": "7", "template": "Pushing [something]"}]
    path.write_text('{"a": 1}', encoding="utf-8-sig")  # with a byte-order mark
    assert read_json(path, "unused") == {"a": 1}
    with pytest.raises(FileNotFoundError, match="is a folder, not a JSON file; fix it"):
        read_json(tmp_path, "fix it")


def test_resume_scaler_accepts_the_empty_state_of_a_run_without_float16():
    from dart_core.training import resume_scaler

    disabled = torch.amp.GradScaler("cpu", enabled=False)  # a bf16 / fp32 / CPU run
    fp16 = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with pytest.raises(RuntimeError, match="empty"):
        fp16.load_state_dict(disabled.state_dict())  # what a plain load does
    resume_scaler(fp16, disabled.state_dict())
    assert fp16.get_scale() == 2.0**10  # a fresh fp16 run's scale
    trained = torch.amp.GradScaler("cpu", init_scale=2.0**7, growth_interval=3)
    trained.scale(torch.ones(())).item()  # the scale tensor exists once used
    resume_scaler(fp16, trained.state_dict())
    assert fp16.get_scale() == 2.0**7 and fp16.get_growth_interval() == 3
    resume_scaler(disabled, trained.state_dict())  # a float16 checkpoint resumed without float16: no error


def test_resume_optimizer_keeps_the_new_settings_and_the_saved_moments():
    p = torch.nn.Parameter(torch.ones(3))
    old = torch.optim.AdamW([p], lr=0.1, weight_decay=0.05)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    old.step()
    q = torch.nn.Parameter(p.detach().clone())
    new = torch.optim.AdamW([q], lr=0.3, weight_decay=0.2)
    resume_optimizer(new, copy.deepcopy(old.state_dict()))
    assert (new.param_groups[0]["lr"], new.param_groups[0]["weight_decay"]) == (0.3, 0.2)
    assert torch.equal(new.state[q]["exp_avg"], old.state[p]["exp_avg"])
    assert torch.equal(new.state[q]["exp_avg_sq"], old.state[p]["exp_avg_sq"])


def test_resume_auto_needs_every_process_to_see_the_same_last_checkpoint(tmp_path, monkeypatch):
    """Only rank 0 writes last.pth: processes that disagree about it (nodes without a shared
    output dir) are refused instead of resuming on some ranks and starting afresh on others."""
    from dart_core.training import checkpoint

    assert checkpoint.resume_path("auto", str(tmp_path)) is None  # one process, nothing saved
    (tmp_path / "last.pth").write_bytes(b"")
    assert checkpoint.resume_path("auto", str(tmp_path)) == str(tmp_path / "last.pth")
    assert checkpoint.resume_path("other.pth", str(tmp_path)) == "other.pth"
    monkeypatch.setattr(checkpoint, "all_gather_objects", lambda seen: [seen, False, seen, False])  # 4 ranks
    with pytest.raises(CheckpointError, match=r"exists for rank\(s\) \[0, 2\] but not for rank\(s\) \[1, 3\]"):
        checkpoint.resume_path("auto", str(tmp_path))
    monkeypatch.setattr(checkpoint, "all_gather_objects", lambda seen: [True, True])
    assert checkpoint.resume_path("auto", str(tmp_path)) == str(tmp_path / "last.pth")


class Killed(Exception):
    """Stands for the process dying in the middle of a save."""


@pytest.mark.parametrize("writes_before_the_kill", [0, 1, 2])
def test_a_kill_during_an_epoch_end_save_never_leaves_best_pth_worse_than_last_pth_records(
        writes_before_the_kill, tmp_path, monkeypatch):
    """``last.pth`` records the best score and a resumed run writes ``best.pth`` only when it beats
    it: after a kill at any point, ``best.pth`` must hold a model scoring at least that record."""
    import dart_core.training.checkpoint as checkpoint

    save_last_and_best({"best_top1": 10.0, "top1": 10.0}, tmp_path, best=True)  # epoch 0
    real_save, writes = checkpoint.save_checkpoint, []

    def dying_save(obj, path):
        if len(writes) == writes_before_the_kill:
            raise Killed
        writes.append(os.path.basename(path))
        real_save(obj, path)

    monkeypatch.setattr(checkpoint, "save_checkpoint", dying_save)
    with contextlib.suppress(Killed):
        save_last_and_best({"best_top1": 20.0, "top1": 20.0}, tmp_path, best=True)  # epoch 1 improves
    record = load_checkpoint(tmp_path / "last.pth")["best_top1"]
    assert load_checkpoint(tmp_path / "best.pth")["top1"] >= record
    assert writes == ["best.pth", "last.pth"][:writes_before_the_kill]


def test_an_epoch_that_does_not_improve_writes_last_pth_only(tmp_path):
    save_last_and_best({"step": 1}, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]
