"""dart-video training: recipes, clip augmentation, layer decay, exact resume, torchrun (CPU)."""

import argparse
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from dart_core.training import load_checkpoint, read_jsonl, seed_everything
from dart_video import data
from dart_video.augment import ClipMixup, ClipRandAugment
from dart_video.cli import run
from dart_video.demo.moving_digits import MovingDigitsConfig, write_dataset
from dart_video.recipes import PRESETS, ConfigError, TrainConfig, add_config_flags, config_from_args
from PIL import Image

TINY = ["--model", "videomamba_tiny_dart_patch16_224", "--num-frames", "2", "--img-size", "32", "--num-tokens", "6",
        "--model-kwargs", json.dumps({"patch_size": 8, "depth": 1, "embed_dim": 16, "d_state": 4})]
# RandAugment and Mixup/CutMix on: the resumed run must replay their random draws too.
COMMON = [*TINY, "--device", "cpu", "--deterministic", "--workers", "0", "--no-progress", "--batch-size", "4",
          "--num-sample", "2", "--epochs", "2", "--warmup-epochs", "1", "--ckpt-interval", "2", "--log-interval", "1",
          "--seed", "3", "--blr", "1e-2", "--aa", "rand-m9-n2-mstd0.5", "--threads", "1"]
ENV = dict(os.environ, TIMM_FUSED_ATTN="0", OMP_NUM_THREADS="1")


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return config_from_args(parser.parse_args(argv))


# ---------------------------------------------------------------- configuration


def test_presets_hold_the_videomamba_ssv2_recipe():
    assert {f"videomamba_{s}{d}_ssv2_{t}f" for s in ("tiny", "small") for d in ("", "_dart") for t in (8, 16)} == set(PRESETS)
    tiny, small = parse(["--config", "videomamba_tiny_dart_ssv2_16f"]), parse(["--config", "videomamba_small_ssv2_8f"])
    assert (tiny.model, tiny.num_frames, small.model, small.num_frames) == (
        "videomamba_tiny_dart_patch16_224", 16, "videomamba_small_patch16_224", 8)
    assert (tiny.epochs, tiny.drop_path, tiny.weight_decay, tiny.aa) == (35, 0.1, 0.1, "rand-m5-n2-mstd0.25-inc1")
    assert (small.epochs, small.drop_path, small.weight_decay) == (30, 0.35, 0.05)
    for c in (tiny, small):
        assert (c.blr, c.warmup_epochs, c.layer_decay, c.mixup, c.cutmix, c.smoothing, c.amp_dtype, c.num_sample) == (
            4e-4, 5, 0.75, 0.8, 1.0, 0.1, "bfloat16", 2)
        # 8 GPUs x 64 videos x 2 clips: 4e-4 x 1024 / 256
        assert c.scaled(world_size=8)["lr"] == pytest.approx(1.6e-3)


def test_config_precedence_and_errors(tmp_path):
    assert parse([]) == TrainConfig()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("weight-decay: 0.3\nepochs: 9\nmodel_kwargs: {depth: 2}\n")
    config = parse(["--config", str(recipe), "--epochs", "4", "--no-cache-videos", "--lr", "0.5"])
    assert (config.weight_decay, config.epochs, config.model_kwargs, config.lr) == (0.3, 4, {"depth": 2}, 0.5)
    assert config.scaled(world_size=4)["lr"] == 0.5
    config = parse(["--config", "videomamba_tiny_ssv2_8f", "--epochs", "2", "--cache-videos"])
    assert (config.epochs, config.cache_videos, config.drop_path) == (2, True, 0.1)
    recipe.write_text("weight_dcay: 0.1\n")
    with pytest.raises(ConfigError, match="unknown keys.*weight_dcay"):
        parse(["--config", str(recipe)])
    with pytest.raises(ConfigError, match="unknown config 'nope'"):
        parse(["--config", "nope"])
    with pytest.raises(ConfigError, match="--batch-size must be >= 1"):
        parse(["--batch-size", "0"])


# ---------------------------------------------------------------- augmentation


def random_clip(frames=3, size=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def test_clip_randaugment_draws_once_per_clip():
    augment = ClipRandAugment("rand-m9-n3-mstd0.5", 24)
    clip = random_clip()
    for seed in range(6):
        seed_everything(seed)
        got = augment(clip)
        # oracle: the frames one by one, each after the same seeding
        expected = []
        for frame in clip:
            seed_everything(seed)
            expected.append(np.asarray(augment.transform(Image.fromarray(frame))))
        np.testing.assert_array_equal(got, np.stack(expected))
    same = np.repeat(random_clip(1), 4, axis=0)  # a still clip stays still
    seed_everything(1)
    out = augment(same)
    assert all(np.array_equal(out[0], frame) for frame in out) and not np.array_equal(out[0], same[0])


def test_clip_mixup_mixes_whole_clips_with_one_box():
    clips, labels = torch.rand(4, 3, 5, 16, 16), torch.tensor([0, 1, 2, 3])
    seed_everything(0)
    mixed, soft = ClipMixup(0.8, 0.0, 1.0, 0.0, 0.0, 4)(clips, labels)
    lam = soft[0, 0].item()
    torch.testing.assert_close(mixed, lam * clips + (1 - lam) * clips.flip(0))
    torch.testing.assert_close(soft.sum(1), torch.ones(4))
    seed_everything(0)
    mixed, soft = ClipMixup(0.0, 1.0, 1.0, 1.0, 0.0, 4)(clips, labels)
    from_partner = (mixed == clips.flip(0)) & (mixed != clips)  # (B, C, T, H, W)
    box = from_partner[0, 0, 0]
    assert 0 < box.sum() < 256 and (from_partner == box).all()  # one box, every clip, channel and frame
    assert soft[0, 0].item() == pytest.approx(1 - box.float().mean().item())
    with pytest.raises(ValueError, match="even batch"):
        ClipMixup(0.8, 1.0, 1.0, 0.5, 0.1, 4)(clips[:3], labels[:3])


def test_layer_decay_groups_follow_the_release():
    from timm.optim import create_optimizer_v2

    model = timm.create_model("videomamba_tiny_dart_patch16_224", num_frames=2, img_size=32, patch_size=8, depth=3,
                              embed_dim=16, d_state=4, num_tokens=6, num_classes=3)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1.0, weight_decay=0.1, layer_decay=0.5)
    scale = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            scale[id(p)] = (group["lr_scale"], group["weight_decay"])
    named = dict(model.named_parameters())
    # embeddings 0.5^(depth + 1), block i 0.5^(depth - i), final norm and head 1; the new DART scorer head 1
    assert scale[id(named["pos_embed"])] == (0.5**4, 0.0) and scale[id(named["patch_embed.proj.weight"])] == (0.5**4, 0.1)
    assert [scale[id(named[f"layers.{i}.mixer.in_proj.weight"])][0] for i in range(3)] == [0.5**3, 0.5**2, 0.5]
    assert scale[id(named["head.weight"])] == (1.0, 0.1) and scale[id(named["norm_f.weight"])] == (1.0, 0.0)
    assert scale[id(named["patch_embed.scorer.head.mlp.fc1.weight"])] == (1.0, 0.1)


# ---------------------------------------------------------------- training end to end


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("moving_digits")
    write_dataset(str(root), 12, 4, MovingDigitsConfig(frame=32, frames=4, fragments=1), seed=0)
    return str(root)


@pytest.fixture(scope="module")
def full_run(digits_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, run(["train", "--data", digits_root, "--out", str(out), *COMMON])


def train_losses(out):
    return {r["global_step"]: r["loss"] for r in read_jsonl(out / "log.jsonl") if r["event"] == "train"}


def weights_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_mid_epoch_and_resume_matches_uninterrupted_run(digits_root, full_run, tmp_path):
    full_dir, full = full_run
    # 12 videos x 2 clips / batch 4 = 6 steps per epoch, 2 epochs
    assert (full["epoch"], full["global_step"]) == (2, 12)
    killed = subprocess.run([sys.executable, "-m", "dart_video", "train", "--data", digits_root, "--out", str(tmp_path),
                             *COMMON, "--debug-kill-at-step", "9"], capture_output=True, text=True, env=ENV, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = load_checkpoint(tmp_path / "last.pth")
    assert (partial["epoch"], partial["step_in_epoch"], partial["global_step"]) == (1, 2, 8)  # step 9 is lost
    run(["train", "--data", digits_root, "--out", str(tmp_path), *COMMON, "--resume", "auto"])
    a, b = load_checkpoint(full_dir / "last.pth"), load_checkpoint(tmp_path / "last.pth")
    assert (b["epoch"], b["global_step"]) == (2, 12) and weights_equal(a["model"], b["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert weights_equal(sa, sb)
    assert a["scheduler"] == b["scheduler"] and a["rng"][0]["python"] == b["rng"][0]["python"]
    assert train_losses(tmp_path) == train_losses(full_dir)  # every step, before and after the kill
    assert len(set(train_losses(full_dir).values())) == 12
    lrs = [r["lr"] for r in read_jsonl(full_dir / "log.jsonl") if r["event"] == "train"]
    # linear warm-up from 1e-6 to 1e-2 (per 256 clips; batch 4) over the first epoch, then cosine
    assert lrs[0] == pytest.approx(1e-6 * 4 / 256) and lrs[6] == pytest.approx(1e-2 * 4 / 256) and lrs[-1] < lrs[6]


def test_eval_matches_clip_by_clip_oracle(digits_root, full_run, capsys):
    full_dir, full = full_run
    stats = run(["eval", "--data", digits_root, "--checkpoint", str(full_dir / "best.pth"), "--workers", "0",
                 "--no-progress", "--eval-batch-size", "3"])
    ckpt = load_checkpoint(full_dir / "best.pth")
    model = timm.create_model("videomamba_tiny_dart_patch16_224", num_frames=2, img_size=32, patch_size=8, depth=1,
                              embed_dim=16, d_state=4, num_tokens=6, num_classes=6)
    model.load_state_dict(ckpt["model"])
    model.eval()
    samples, _ = data.read_ssv2(digits_root, "validation")
    hits, losses = [], []
    with torch.no_grad():
        for sample in samples:  # decode, crop and classify one clip at a time
            frames = data.read_frames(sample.path, 2, False, random.Random(0))
            clip = data.clip_transform(frames, 32, False, random.Random(0))
            logits = model(clip[None])
            hits.append(int(logits.argmax().item() == sample.label))
            losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor([sample.label])).item())
    assert stats["clips"] == 4 and stats["top1"] == pytest.approx(100 * sum(hits) / 4)
    assert stats["loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)
    assert stats["top1"] == pytest.approx(ckpt["best_top1"]) and stats["tokens"] == 6
    assert stats["params"] == sum(p.numel() for p in model.parameters()) and stats["gflops"] > 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["top1"] == stats["top1"]


def torchrun(args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "dart_video", "train", *args], capture_output=True, text=True, timeout=300, env=ENV)


def test_two_processes_under_torchrun_and_exact_resume(digits_root, tmp_path):
    common = ["--data", digits_root, *COMMON, "--batch-size", "2", "--accum-steps", "2"]
    proc = torchrun([*common, "--out", str(tmp_path / "full")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "full" / "last.pth")
    # 24 clips / 2 ranks / (batch 2 x 2 accumulated) = 3 optimizer steps per epoch, 2 epochs
    assert (ckpt["world_size"], ckpt["steps_per_epoch"], ckpt["global_step"]) == (2, 3, 6)
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    log = read_jsonl(tmp_path / "full" / "log.jsonl")
    assert [r["clips"] for r in log if r["event"] == "epoch"] == [4, 4]  # every validation clip once over both ranks
    start = next(r for r in log if r["event"] == "start")
    assert start["lr"] == pytest.approx(1e-2 * 2 * 2 * 2 / 256)  # global batch 8 clips

    killed = torchrun([*common, "--out", str(tmp_path / "killed"), "--debug-kill-at-step", "5"])
    assert killed.returncode != 0
    assert load_checkpoint(tmp_path / "killed" / "last.pth")["global_step"] == 4
    resumed = torchrun([*common, "--out", str(tmp_path / "killed"), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = load_checkpoint(tmp_path / "killed" / "last.pth")
    assert again["global_step"] == 6 and again["model"].keys() == ckpt["model"].keys()
    # Two uninterrupted 2-process runs of this model already differ by float rounding (~3e-8, from
    # DDP's gradient reduction), so across processes the resumed run is held to that, not to bits.
    for key, value in ckpt["model"].items():
        torch.testing.assert_close(again["model"][key], value, rtol=0, atol=1e-6)
    assert train_losses(tmp_path / "killed") == train_losses(tmp_path / "full")


def test_resume_with_other_settings_is_refused(digits_root, full_run, tmp_path):
    import shutil

    full_dir, _ = full_run
    ckpt = load_checkpoint(full_dir / "last.pth")
    assert ckpt["step_in_epoch"] == 0  # an epoch-end checkpoint resumes with any batch size
    from dart_video.cli import CommandError

    with pytest.raises(CommandError, match="trained as 'videomamba_tiny_dart_patch16_224'"):
        run(["train", "--data", digits_root, "--out", str(tmp_path), *COMMON, "--model",
             "videomamba_small_dart_patch16_224", "--resume", str(full_dir / "last.pth")])
    shutil.copy(full_dir / "last.pth", tmp_path / "done.pth")
    result = run(["train", "--data", digits_root, "--out", str(tmp_path), *COMMON, "--resume", str(tmp_path / "done.pth")])
    assert result["global_step"] == 12  # already finished: nothing more to do
