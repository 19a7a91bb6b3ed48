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
import torch.nn.functional as F
from dart_core.training import DistContext, load_checkpoint, read_jsonl, save_checkpoint, seed_everything
from dart_video import data
from dart_video.augment import ClipMixup, ClipRandAugment, ClipRandomErasing
from dart_video.cli import CommandError, run
from dart_video.demo.moving_digits import MovingDigitsConfig, write_dataset
from dart_video.engine import Trainer, evaluate
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
        # run_class_finetuning.py's random erasing defaults; the scripts' --test_num_segment 2 --test_num_crop 3
        assert (c.reprob, c.remode, c.recount, c.test_clips, c.test_crops) == (0.25, "pixel", 1, 2, 3)
    generic = TrainConfig()
    assert (generic.reprob, generic.test_clips, generic.test_crops) == (0.0, 1, 1)


def test_scaled_learning_rate_counts_accumulated_clips():
    """The release's rule: lr = blr × global clips per optimizer step / 256, accumulated micro-batches included."""
    config = TrainConfig(batch_size=4, accum_steps=3, blr=1e-3, min_blr=1e-5, warmup_blr=1e-6)
    clips = 4 * 3 * 2  # batch × accumulation × 2 processes
    assert config.scaled(2) == pytest.approx({"lr": 1e-3 * clips / 256, "min_lr": 1e-5 * clips / 256,
                                             "warmup_lr": 1e-6 * clips / 256})


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
    config = parse(["--config", "videomamba_tiny_ssv2_8f", "--test-clips", "1", "--reprob", "0.5", "--remode", "rand"])
    assert (config.test_clips, config.test_crops, config.reprob, config.remode) == (1, 3, 0.5, "rand")
    with pytest.raises(ConfigError, match="--test-crops must be >= 1"):
        parse(["--test-crops", "0"])
    with pytest.raises(ConfigError, match=r"--reprob must be in \[0, 1\]"):
        parse(["--reprob", "1.5"])
    with pytest.raises(ConfigError, match="--remode must be pixel, rand or const"):
        parse(["--remode", "noise"])


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


def erased_box(mask):
    """The one (top, left, h, w) box of a (3, T, H, W) mask that is the same in every channel and
    frame; fails otherwise."""
    box = mask[0, 0]
    assert (mask == box).all(), "the box must go through every channel and frame"
    rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
    top, left, h, w = rows[0].item(), cols[0].item(), len(rows), len(cols)
    assert box[top:top + h, left:left + w].all() and box.sum() == h * w, "the erased region must be one rectangle"
    return top, left, h, w


def within_timm_bounds(h, w, size):
    """timm draws area a in [0.02, 1/3]·size² and aspect r in [0.3, 1/0.3], then rounds
    h = round(√(a·r)), w = round(√(a/r)): the rounded box must be reachable from such (a, r)."""
    area = size * size
    return ((h + 0.5) * (w + 0.5) >= 0.02 * area and (h - 0.5) * (w - 0.5) <= area / 3
            and (h + 0.5) / (w - 0.5) >= 0.3 and (h - 0.5) / (w + 0.5) <= 1 / 0.3)


def test_random_erasing_cuts_one_box_through_all_frames():
    clip = torch.ones(3, 4, 48, 48)
    boxes = set()
    for seed in range(8):
        seed_everything(seed)
        out = ClipRandomErasing(1.0, "pixel")(clip)
        assert torch.equal(clip, torch.ones(3, 4, 48, 48))  # the input is left alone
        top, left, h, w = erased_box(out != 1)
        assert within_timm_bounds(h, w, 48)
        noise = out[:, :, top:top + h, left:left + w]
        assert not torch.equal(noise[:, 0], noise[:, 1])  # per-pixel noise, drawn afresh for every frame
        assert abs(noise.mean().item()) < 0.5 and 0.7 < noise.std().item() < 1.3  # standard normal
        boxes.add((top, left, h, w))
        seed_everything(seed)
        const = ClipRandomErasing(1.0, "const")(clip)
        assert erased_box(const == 0) == (top, left, h, w)  # the same draws: the same box, zeros
        seed_everything(seed)
        colour = ClipRandomErasing(1.0, "rand")(clip)[:, :, top:top + h, left:left + w]
        assert (colour == colour[..., :1, :1]).all()  # one colour per channel and frame
    assert len(boxes) == 8
    seed_everything(0)
    assert torch.equal(ClipRandomErasing(0.0)(clip), clip)
    with pytest.raises(ValueError, match="mode pixel, rand or const"):
        ClipRandomErasing(0.5, "noise")


def test_random_erasing_in_the_dataset(digits_root):
    samples, _ = data.read_ssv2(digits_root, "train")
    plain = data.VideoClassification(samples, num_frames=2, size=32, train=True, seed=1)
    never = data.VideoClassification(samples, num_frames=2, size=32, train=True, seed=1,
                                     erase=ClipRandomErasing(0.0))
    always = data.VideoClassification(samples, num_frames=2, size=32, train=True, seed=1,
                                      erase=ClipRandomErasing(1.0, "const"))
    for item in ((0, 5), (3, 5), (3, 6)):
        clip = plain[item][0]
        assert torch.equal(never[item][0], clip)  # probability 0: unchanged
        erased = always[item][0]
        top, left, h, w = erased_box(erased != clip)  # after normalisation: zeros where the box is
        assert within_timm_bounds(h, w, 32) and (erased[:, :, top:top + h, left:left + w] == 0).all()
        assert torch.equal(always[item][0], erased)  # a pure function of (index, seed)
    assert erased_box(always[(3, 5)][0] != plain[(3, 5)][0]) != erased_box(always[(3, 6)][0] != plain[(3, 6)][0])
    evaluation = data.VideoClassification(samples, num_frames=2, size=32, erase=ClipRandomErasing(1.0))
    assert torch.equal(evaluation[0][0], data.VideoClassification(samples, num_frames=2, size=32)[0][0])  # train only


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
    # the release's no_weight_decay set: pos_embed, cls_token, temporal_pos_embedding
    assert scale[id(named["cls_token"])][1] == scale[id(named["temporal_pos_embedding"])][1] == 0.0
    assert [scale[id(named[f"layers.{i}.mixer.in_proj.weight"])][0] for i in range(3)] == [0.5**3, 0.5**2, 0.5]
    assert scale[id(named["head.weight"])] == (1.0, 0.1) and scale[id(named["norm_f.weight"])] == (1.0, 0.0)
    assert scale[id(named["patch_embed.scorer.head.mlp.fc1.weight"])] == (1.0, 0.1)


# ---------------------------------------------------------------- the optimizer step


def test_accumulated_step_reports_the_full_batch_loss():
    """One optimizer step over 2 accumulated micro-batches of 2 clips returns the mean cross-entropy of
    the model on all 4 clips at the weights before the step (not the sum of the micro-batch means)."""
    torch.manual_seed(0)
    model = timm.create_model("videomamba_tiny_patch16_224", img_size=16, patch_size=8, num_frames=2, depth=1,
                              embed_dim=16, d_state=4, num_classes=3, drop_path_rate=0.0)
    clips, labels = torch.randn(4, 3, 2, 16, 16), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        want = F.cross_entropy(model(clips), labels).item()
    config = TrainConfig(model="videomamba_tiny_patch16_224", batch_size=2, accum_steps=2, mixup=0.0, cutmix=0.0,
                         smoothing=0.0, epochs=1, warmup_epochs=0, layer_decay=1.0, progress=False)
    trainer = Trainer(config, DistContext(0, 1, 0, torch.device("cpu")), model, 3, steps_per_epoch=1)
    batches = iter([(clips[:2], labels[:2], None), (clips[2:], labels[2:], None)])
    assert trainer.step(batches) == pytest.approx(want, rel=1e-5)


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
    # the epoch killed mid-way reports the mean of all its 6 steps, not of the 4 after the resume
    epoch_losses = {r["epoch"]: r["train_loss"] for r in read_jsonl(tmp_path / "log.jsonl") if r["event"] == "epoch"}
    assert epoch_losses == {r["epoch"]: r["train_loss"] for r in read_jsonl(full_dir / "log.jsonl") if r["event"] == "epoch"}
    assert epoch_losses[1] == pytest.approx(sum(train_losses(full_dir)[step] for step in range(7, 13)) / 6)
    lrs = [r["lr"] for r in read_jsonl(full_dir / "log.jsonl") if r["event"] == "train"]
    # linear warm-up from 1e-6 to 1e-2 (per 256 clips; batch 4) over the first epoch, then cosine
    assert lrs[0] == pytest.approx(1e-6 * 4 / 256) and lrs[6] == pytest.approx(1e-2 * 4 / 256) and lrs[-1] < lrs[6]


def eval_oracle(model, samples, clips, crops):
    """Top-1, top-5 and per-view loss: each view decoded, cropped and classified on its own, the
    softmax scores averaged per video by hand."""
    hits, hits5, losses = [], [], []
    with torch.no_grad():
        for sample in samples:
            probs = []
            for k in range(clips):
                frames = data.read_frames(sample.path, 2, False, random.Random(0), clip=k, clips=clips)
                for j in range(crops):
                    logits = model(data.clip_transform(frames, 32, False, random.Random(0), crop=j, crops=crops)[None])
                    probs.append(logits.softmax(1)[0])
                    losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor([sample.label])).item())
            mean = sum(probs) / len(probs)
            hits.append(int(mean.argmax().item() == sample.label))
            hits5.append(int(sample.label in mean.topk(5).indices.tolist()))
    return 100 * sum(hits) / len(samples), 100 * sum(hits5) / len(samples), sum(losses) / len(losses)


@pytest.fixture(scope="module")
def trained_model(full_run):
    ckpt = load_checkpoint(full_run[0] / "best.pth")
    model = timm.create_model("videomamba_tiny_dart_patch16_224", num_frames=2, img_size=32, patch_size=8, depth=1,
                              embed_dim=16, d_state=4, num_tokens=6, num_classes=6)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


EVAL = ["--workers", "0", "--no-progress", "--eval-batch-size", "3"]


def test_eval_matches_clip_by_clip_oracle(digits_root, full_run, trained_model, capsys):
    full_dir, full = full_run
    model, ckpt = trained_model
    stats = run(["eval", "--data", digits_root, "--checkpoint", str(full_dir / "best.pth"), *EVAL])
    samples, _ = data.read_ssv2(digits_root, "validation")
    top1, top5, loss = eval_oracle(model, samples, 1, 1)
    assert (stats["clips"], stats["videos"], stats["views"]) == (4, 4, [1, 1])
    assert stats["top1"] == pytest.approx(top1) and stats["top5"] == pytest.approx(top5)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert stats["top1"] == pytest.approx(ckpt["best_top1"]) and stats["tokens"] == 6
    assert stats["score_fallbacks"] == 0  # the evaluation's own count, from the DART tokenizer
    assert stats["params"] == sum(p.numel() for p in model.parameters()) and stats["gflops"] > 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["top1"] == stats["top1"]


class ViewLogits(torch.utils.data.Dataset):
    """Stand-in for a multi-view dataset: item i is (the logits it should produce, label, video)."""

    def __init__(self, items, labels):
        self.items, self.samples = items, [data.VideoSample(str(v), label) for v, label in enumerate(labels)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        logits, video = self.items[i]
        return torch.tensor(logits), self.samples[video].label, video


class PassThrough(torch.nn.Module):
    num_classes = 6

    def forward(self, clips):
        return clips


def test_evaluate_averages_softmax_not_logits_nor_votes():
    # video 0 (label 1): one confident view of class 0, two moderate views of class 1. Mean softmax
    # picks class 1; mean logits (3.3, 2, 0, ...) and the first view would pick class 0.
    strong, moderate = [10.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0]
    # video 1 (label 4): two views; its label is 5th in the mean softmax, so a top-5 hit but no top-1
    ranked = [[5.0, 4, 3, 2, 1, 0], [5.0, 4, 3, 2, 1, 0]]
    items = [(strong, 0), (ranked[0], 1), (moderate, 0), (ranked[1], 1), (moderate, 0)]  # views interleaved
    labels = [1, 4, 2]  # video 2 could not be decoded: its view comes back as video -1 and is left out
    loader = torch.utils.data.DataLoader(ViewLogits(items + [(strong, -1)], labels), batch_size=2)
    stats = evaluate(PassThrough(), loader, TrainConfig(progress=False), DistContext(0, 1, 0, torch.device("cpu")))
    assert (stats["clips"], stats["videos"], stats["skipped"]) == (5, 2, 1)
    assert stats["top1"] == pytest.approx(50) and stats["top5"] == pytest.approx(100)
    logits = torch.tensor([x for x, _ in items])
    targets = torch.tensor([labels[v] for _, v in items])
    assert stats["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item())


def test_multi_view_eval_averages_softmax_per_video(digits_root, full_run, trained_model, capsys):
    full_dir, _ = full_run
    model, _ = trained_model
    common = ["eval", "--data", digits_root, "--checkpoint", str(full_dir / "best.pth"), *EVAL]
    stats = run([*common, "--test-clips", "2", "--test-crops", "3"])
    samples, _ = data.read_ssv2(digits_root, "validation")
    top1, top5, loss = eval_oracle(model, samples, 2, 3)
    assert (stats["clips"], stats["videos"], stats["views"]) == (24, 4, [2, 3])
    assert stats["top1"] == pytest.approx(top1) and stats["top5"] == pytest.approx(top5)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    # two processes: rank r gets views r, r + 2, ... so every video's views are split between the ranks
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "dart_video", *common, "--test-clips", "2", "--test-crops", "3"],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("{")]  # rank 0 prints once
    both = json.loads(line)
    assert (both["clips"], both["videos"]) == (24, 4)
    assert both["top1"] == pytest.approx(top1) and both["top5"] == pytest.approx(top5)
    assert both["loss"] == pytest.approx(loss, rel=1e-5)


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
    assert [r["score_fallbacks"] for r in log if r["event"] == "train"] == [0] * 6  # summed over the ranks
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
    save_checkpoint({**ckpt, "epoch": 1, "step_in_epoch": 1}, tmp_path / "mid.pth")  # as if killed after step 1
    with pytest.raises(CommandError, match="saved mid-epoch"):  # the consumed part depends on the batch size
        run(["train", "--data", digits_root, "--out", str(tmp_path), *COMMON, "--batch-size", "2",
             "--resume", str(tmp_path / "mid.pth")])
    save_checkpoint({"model": ckpt["model"]}, tmp_path / "weights.pth")
    with pytest.raises(CommandError, match="not a dart-video training checkpoint"):
        run(["train", "--data", digits_root, "--out", str(tmp_path), *COMMON, "--resume", str(tmp_path / "weights.pth")])
    with pytest.raises(CommandError, match="trained as 'videomamba_tiny_dart_patch16_224'"):
        run(["train", "--data", digits_root, "--out", str(tmp_path), *COMMON, "--model",
             "videomamba_small_dart_patch16_224", "--resume", str(full_dir / "last.pth")])
    shutil.copy(full_dir / "last.pth", tmp_path / "done.pth")
    result = run(["train", "--data", digits_root, "--out", str(tmp_path), *COMMON, "--resume", str(tmp_path / "done.pth")])
    assert result["global_step"] == 12  # already finished: nothing more to do


def test_grad_checkpointing_setting_switches_the_model_checkpointing():
    from dart_video.engine import build_model

    tiny = dict(model="videomamba_tiny_patch16_224", num_frames=2, img_size=16,
                model_kwargs={"patch_size": 8, "depth": 1, "embed_dim": 16, "d_state": 4})
    assert build_model(TrainConfig(**tiny, grad_checkpointing=True), 3).grad_checkpointing
    assert not build_model(TrainConfig(**tiny), 3).grad_checkpointing
    assert parse(["--grad-checkpointing"]).grad_checkpointing


def test_eval_runs_on_this_machine_whatever_machine_trained(digits_root, full_run, tmp_path):
    """A checkpoint trained on a GPU machine (device cuda, 64 threads) evaluates and draws here on the CPU."""
    full_dir, _ = full_run
    ckpt = load_checkpoint(full_dir / "best.pth")
    save_checkpoint({**ckpt, "config": {**ckpt["config"], "device": "cuda", "threads": 64}}, tmp_path / "gpu.pth")
    here = run(["eval", "--data", digits_root, "--checkpoint", str(full_dir / "best.pth"), *EVAL])
    moved = run(["eval", "--data", digits_root, "--checkpoint", str(tmp_path / "gpu.pth"), *EVAL])
    assert moved["top1"] == here["top1"] and moved["loss"] == here["loss"]
    video = data.read_ssv2(digits_root, "validation")[0][0].path
    run(["visualize", video, "--checkpoint", str(tmp_path / "gpu.pth"), "--out", str(tmp_path / "clip.png")])
    assert (tmp_path / "clip.png").is_file()
