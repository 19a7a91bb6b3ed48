"""tools/pretrain_in1k.py end to end on a tiny ImageFolder of real photo crops (CPU)."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "pretrain_in1k.py")
sys.path.insert(0, os.path.join(ROOT, "tools"))

from dart_core.training import count_flops, load_checkpoint, read_jsonl  # noqa: E402
from pretrain_config import UsageError  # noqa: E402
from pretrain_in1k import main  # noqa: E402

VIT = ["--model", "vit_tiny_patch16_224", "--model-kwargs",
       "{img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}", "--input-size", "32"]
FAST = ["--num-workers", "0", "--no-progress", "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "4",
        "--eval-batch-size", "8", "--seed", "3"]


def make_image_folder(root, per_class=(8, 4), size=40, seed=0):
    """train/ and val/ with 3 classes, each the random crops of one real photo (scikit-image)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = {"astronaut": data.astronaut(), "cat": data.chelsea(), "coffee": data.coffee()}
    for split, count in zip(("train", "val"), per_class, strict=True):
        for name, photo in photos.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                side = int(rng.integers(size, min(photo.shape[:2])))
                y, x = (int(rng.integers(0, photo.shape[d] - side)) for d in (0, 1))
                crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BICUBIC)
                crop.save(os.path.join(root, split, name, f"{i}.png"))
    return str(root)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are overhead-bound: one intra-op thread is faster, and far faster on a shared
    machine (OpenMP threads spin when cores are oversubscribed). Subprocesses get OMP_NUM_THREADS=1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imagefolder"))


def run_tool(args):
    env = dict(os.environ, TIMM_FUSED_ATTN="0", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, env=env, timeout=300)


def weights_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def reference_eval(model, data_dir, input_size):
    """Slow obvious oracle: classify every val image one by one with timm's eval transform;
    returns (top-1 %, mean cross-entropy)."""
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(os.path.join(data_dir, "val"),
                     transform=create_transform(input_size, interpolation="bicubic", crop_pct=0.875))
    model.eval()
    hits, losses = [], []
    with torch.no_grad():
        for x, y in ds:
            logits = model(x[None])
            hits.append(int(logits.argmax(1).item() == y))
            losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor([y])).item())
    return 100 * sum(hits) / len(hits), sum(losses) / len(losses)


COMMON = [*VIT, *FAST, "--deterministic", "--ckpt-interval", "2", "--lr", "1e-3", "--model-ema", "--model-ema-decay",
          "0.9", "--log-interval", "1"]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """An uninterrupted 2-epoch run of a tiny ViT: (output dir, returned metrics)."""
    out = tmp_path_factory.mktemp("full")
    return out, main([*COMMON, "--data-dir", data_dir, "--output-dir", str(out)])


def train_losses(out):
    return {r["global_step"]: r["loss"] for r in read_jsonl(out / "log.jsonl") if r["event"] == "train"}


def epoch_records(out):
    """The epoch records without their wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_s", "ema_images_per_s")}
            for r in read_jsonl(out / "log.jsonl") if r["event"] == "epoch"]


def test_kill_mid_epoch_and_resume_matches_uninterrupted_run(data_dir, trained, tmp_path):
    full_dir, full = trained
    assert full["epoch"] == 2 and full["global_step"] == 12  # 2 epochs x 24 images / batch 4
    killed = run_tool([*COMMON, "--data-dir", data_dir, "--output-dir", str(tmp_path), "--debug-kill-at-step", "9"])
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = load_checkpoint(tmp_path / "last.pth")
    assert (partial["epoch"], partial["step_in_epoch"], partial["global_step"]) == (1, 2, 8)  # step 9 is lost

    # the resume names no model flags: the model (and its input size) come from the checkpoint
    resume_args = COMMON[len(VIT):]
    main([*resume_args, "--data-dir", data_dir, "--output-dir", str(tmp_path), "--resume", "auto"])
    a = load_checkpoint(full_dir / "last.pth")
    b = load_checkpoint(tmp_path / "last.pth")
    assert (b["epoch"], b["global_step"]) == (2, 12)
    assert weights_equal(a["model"], b["model"]) and weights_equal(a["ema"], b["ema"])
    assert not weights_equal(a["model"], a["ema"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert weights_equal(sa, sb)
    assert a["scheduler"] == b["scheduler"] and a["rng"][0]["python"] == b["rng"][0]["python"]
    assert train_losses(tmp_path) == train_losses(full_dir)  # every step, before and after the kill
    assert len(set(train_losses(full_dir).values())) == 12
    # the resumed epoch's train_loss averages all its steps, those before the kill included
    assert epoch_records(tmp_path) == epoch_records(full_dir)
    losses = train_losses(full_dir)
    assert epoch_records(full_dir)[1]["train_loss"] == sum(losses[s] for s in range(7, 13)) / 6


def test_resume_with_more_epochs_follows_the_new_schedule(data_dir, trained, tmp_path):
    """--epochs 3 on a finished 2-epoch run: the third epoch's learning rates are those of a run
    planned for 3 epochs from the start (the schedule is rebuilt, not the old one finished at its
    minimum)."""
    full_dir, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(full_dir, resumed)
    main([*COMMON[len(VIT):], "--epochs", "3", "--data-dir", data_dir, "--output-dir", str(resumed), "--resume", "auto"])
    fresh = tmp_path / "fresh"
    main([*COMMON, "--epochs", "3", "--data-dir", data_dir, "--output-dir", str(fresh)])

    def lrs(out):
        return {r["global_step"]: r["lr"] for r in read_jsonl(out / "log.jsonl") if r["event"] == "train"}

    third = range(13, 19)
    assert [lrs(resumed)[s] for s in third] == pytest.approx([lrs(fresh)[s] for s in third])
    assert lrs(resumed)[13] > 2 * lrs(full_dir)[12]  # not the 2-epoch schedule's floor


def tiny_vit(state):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                              num_classes=3)
    model.load_state_dict(state)
    return model


def test_eval_matches_per_image_oracle(data_dir, trained, tmp_path):
    full_dir, full = trained
    plain = ["--data-dir", data_dir, "--output-dir", str(tmp_path), "--num-workers", "0", "--no-progress"]
    stats = main(["--eval", "--checkpoint", str(full_dir / "last.pth"), *VIT, *plain])
    ckpt = load_checkpoint(full_dir / "last.pth")
    model = tiny_vit(ckpt["model"])
    top1, loss = reference_eval(model, data_dir, 32)
    assert stats["top1"] == pytest.approx(top1) and stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert stats["top1"] == pytest.approx(full["top1"]) and stats["images"] == 12 and stats["top5"] == 100.0
    assert stats["params"] == sum(p.numel() for p in model.parameters())
    assert stats["gflops"] * 1e9 == pytest.approx(count_flops(model, torch.zeros(1, 3, 32, 32)))
    assert stats["images_per_s"] > 0
    # no model flags: the model, its kwargs and input size come from the checkpoint
    ema = main(["--eval", "--eval-ema", "--checkpoint", str(full_dir / "last.pth"), *plain])
    assert ema["loss"] == pytest.approx(reference_eval(tiny_vit(ckpt["ema"]), data_dir, 32)[1], rel=1e-5)
    assert ema["top1"] == pytest.approx(full["ema_top1"])
    assert [r["event"] for r in read_jsonl(tmp_path / "log.jsonl")] == ["eval", "eval"]


DART = ["--model", "deit_tiny_dart_patch16_448", "--model-kwargs",
        "{img_size: 64, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}", "--num-tokens", "12"]


def published_layout(state):
    """Our DeiT + DART keys → the original release's (models_deit.py / dart/spn.py) names."""
    renames = {"patch_embed.scorer.backbone.": "patch_embed.spn.spn.spn.features.",
               "patch_embed.scorer.head.mlp.fc1.": "patch_embed.spn.spn.spn.mlp.net.0.",
               "patch_embed.scorer.head.mlp.fc2.": "patch_embed.spn.spn.spn.mlp.net.2."}
    out = {}
    for key, value in state.items():
        for ours, theirs in renames.items():
            if key.startswith(ours):
                key = theirs + key[len(ours):]
        out[key] = value
    return out


def test_dart_model_trains_with_scorer_and_published_checkpoint_evaluates(data_dir, tmp_path, monkeypatch):
    import argparse
    import warnings

    import timm
    import torchvision
    from dart_core import scorers

    torch.manual_seed(0)
    backbone = torchvision.models.mobilenet_v3_small(weights=None)
    torch.save(backbone.state_dict(), tmp_path / "mnv3s.pth")  # stands in for local ImageNet weights
    run = main([*DART, *FAST, "--epochs", "1", "--batch-size", "8", "--scorer", "mobilenet_v3_small",
                "--scorer-weights", str(tmp_path / "mnv3s.pth"), "--tensorboard", "--data-dir", data_dir,
                "--output-dir", str(tmp_path / "train")])  # input: the model's 64
    assert run["global_step"] == 3
    trains = [r for r in read_jsonl(tmp_path / "train" / "log.jsonl") if r["event"] == "train"]
    assert trains and all(r["score_fallbacks"] == 0 for r in trains)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "train" / "tb"))
    ckpt = load_checkpoint(tmp_path / "train" / "last.pth")
    frozen = {k.removeprefix("patch_embed.scorer.backbone."): v for k, v in ckpt["model"].items()
              if k.startswith("patch_embed.scorer.backbone.")}
    expected = {k.removeprefix("features."): v for k, v in backbone.state_dict().items()
                if k.startswith("features.") and int(k.split(".")[1]) < 11}
    assert weights_equal(frozen, expected)  # the local weights, untouched by training
    model = timm.create_model("deit_tiny_dart_patch16_448", img_size=64, patch_size=8, embed_dim=32, depth=1,
                              num_heads=2, num_tokens=12, num_classes=3)
    model.load_state_dict(ckpt["model"])
    top1, loss = reference_eval(model, data_dir, 64)
    # our checkpoint evaluates with the token budget and scorer it was trained with (12 tokens,
    # mobilenet_v3_small) though the command names neither; a flag that disagrees is refused
    eval_args = ["--data-dir", data_dir, "--output-dir", str(tmp_path / "eval"), "--num-workers", "0", "--no-progress"]
    monkeypatch.setattr(scorers, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        own = main(["--eval", "--checkpoint", str(tmp_path / "train" / "last.pth"), *DART[:4], *eval_args])
    # the scorer's weights come from the checkpoint: the input-size probe before the load does not warn
    assert not [(w.filename, w.lineno) for w in caught if "randomly initialised" in str(w.message)]
    assert own["top1"] == pytest.approx(top1) and own["loss"] == pytest.approx(loss, rel=1e-5)
    with pytest.raises(UsageError, match="--num-tokens 16 disagrees with .*last.pth, which was trained with "
                                         "--num-tokens 12: drop --num-tokens"):
        main(["--eval", "--checkpoint", str(tmp_path / "train" / "last.pth"), *DART[:4], "--num-tokens", "16",
              *eval_args])
    # --pretrained loads the weights into the model the flags describe: here with another token budget
    other = main(["--eval", "--pretrained", str(tmp_path / "train" / "last.pth"), *DART[:4], "--num-tokens", "16",
                  *eval_args])
    assert other["loss"] != pytest.approx(loss, rel=1e-5)
    published = tmp_path / "darvit-tiny.pth"
    torch.save({"model": published_layout(ckpt["model"]), "epoch": 299,
                "args": argparse.Namespace(model="darvit_tiny", lr=5e-4)}, published)
    stats = main(["--eval", "--checkpoint", str(published), *DART, *eval_args])
    assert stats["top1"] == pytest.approx(top1) and stats["loss"] == pytest.approx(loss, rel=1e-5)
    scorer_params = sum(p.numel() for p in model.patch_embed.scorer.parameters())
    assert stats["params"] == sum(p.numel() for p in model.parameters())
    assert stats["params_trainable"] < stats["params"]  # the frozen scorer backbone is counted too
    flops_scorer = count_flops(model.patch_embed.scorer, torch.zeros(1, 3, 64, 64))
    assert scorer_params > 0 and stats["gflops"] * 1e9 > flops_scorer > 0
    assert stats["gflops"] * 1e9 == pytest.approx(count_flops(model, torch.zeros(1, 3, 64, 64)))


def test_vim_dart_model_trains_and_evaluates(data_dir, tmp_path):
    import timm

    kwargs = dict(img_size=32, patch_size=8, embed_dim=16, depth=1)
    run = main(["--model", "vim_tiny_dart_patch16_224", "--model-kwargs", str(kwargs), "--num-tokens", "12",
                "--data-dir", data_dir, "--output-dir", str(tmp_path), *FAST, "--epochs", "1", "--batch-size", "8"])
    model = timm.create_model("vim_tiny_dart_patch16_224", **kwargs, num_tokens=12, num_classes=3)
    model.load_state_dict(load_checkpoint(tmp_path / "last.pth")["model"])
    top1, loss = reference_eval(model, data_dir, 32)
    assert run["global_step"] == 3 and run["top1"] == pytest.approx(top1)
    assert run["loss"] == pytest.approx(loss, rel=1e-5)


def torchrun(args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           TOOL, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TIMM_FUSED_ATTN="0", OMP_NUM_THREADS="1"))


def test_two_processes_under_torchrun_and_exact_resume(data_dir, tmp_path):
    common = [*VIT, *FAST, "--batch-size", "2", "--accum-steps", "2", "--data-dir", data_dir, "--device", "cpu",
              "--deterministic", "--ckpt-interval", "2", "--log-interval", "1"]
    proc = torchrun([*common, "--output-dir", str(tmp_path / "full")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "full" / "last.pth")
    # 24 images / 2 ranks / (batch 2 x 2 accumulated) = 3 optimizer steps per epoch, 2 epochs
    assert (ckpt["world_size"], ckpt["steps_per_epoch"], ckpt["global_step"]) == (2, 3, 6)
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    log = read_jsonl(tmp_path / "full" / "log.jsonl")
    epochs = [r for r in log if r["event"] == "epoch"]
    assert len(epochs) == 2 and epochs[-1]["images"] == 12  # every val image counted once over both ranks
    start = next(r for r in log if r["event"] == "start")
    assert start["lr"] == pytest.approx(1e-3 * 2 * 2 * 2 / 1024)  # DeiT's linear scaling, global batch 8
    top1, _ = reference_eval(tiny_vit(ckpt["model"]), data_dir, 32)
    assert epochs[-1]["top1"] == pytest.approx(top1)

    # both ranks die after step 5 (last checkpoint: step 4, mid-epoch); torchrun resumes them exactly
    killed = torchrun([*common, "--output-dir", str(tmp_path / "killed"), "--debug-kill-at-step", "5"])
    assert killed.returncode != 0
    assert load_checkpoint(tmp_path / "killed" / "last.pth")["global_step"] == 4
    resumed = torchrun([*common, "--output-dir", str(tmp_path / "killed"), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = load_checkpoint(tmp_path / "killed" / "last.pth")
    assert again["global_step"] == 6 and weights_equal(again["model"], ckpt["model"])
    assert train_losses(tmp_path / "killed") == train_losses(tmp_path / "full")
    assert epoch_records(tmp_path / "killed") == epoch_records(tmp_path / "full")


# ---------------------------------------------------------------- clear errors and configuration


def test_missing_data_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        main([*VIT, "--data-dir", str(tmp_path / "nope"), "--output-dir", str(tmp_path)])
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(UsageError, match="val.*does not exist"):
        main([*VIT, "--data-dir", str(tmp_path / "only_train"), "--output-dir", str(tmp_path)])
    result = run_tool([*VIT, "--data-dir", str(tmp_path / "nope")])
    assert result.returncode == 1 and "pretrain_in1k: error:" in result.stderr and "Traceback" not in result.stderr


def test_class_count_disagreeing_with_checkpoint(data_dir, trained, tmp_path):
    for split in ("train", "val"):
        for name in ("cat", "coffee"):
            os.makedirs(tmp_path / "two" / split, exist_ok=True)
            os.symlink(os.path.join(data_dir, split, name), tmp_path / "two" / split / name)
    with pytest.raises(UsageError, match="3-class classifier but .* has 2 classes"):
        main(["--eval", "--checkpoint", str(trained[0] / "last.pth"), *VIT, "--data-dir", str(tmp_path / "two"),
              "--output-dir", str(tmp_path / "o"), "--num-workers", "0"])
    with pytest.raises(UsageError, match="3-class classifier but .* has 2 classes"):
        main([*VIT, *FAST, "--resume", str(trained[0] / "last.pth"), "--data-dir", str(tmp_path / "two"),
              "--output-dir", str(tmp_path / "o")])
    with pytest.raises(UsageError, match="--reset-head"):
        main([*VIT, *FAST, "--pretrained", str(trained[0] / "last.pth"), "--data-dir", str(tmp_path / "two"),
              "--output-dir", str(tmp_path / "o")])
    # fine-tuning from it with a new 2-class head (learning rate 0: the weights must stay the checkpoint's)
    main([*VIT, *FAST, "--epochs", "1", "--pretrained", str(trained[0] / "last.pth"), "--reset-head", "--lr", "0",
          "--warmup-lr", "0", "--min-lr", "0", "--data-dir", str(tmp_path / "two"), "--output-dir", str(tmp_path / "ft")])
    source, tuned = load_checkpoint(trained[0] / "last.pth")["model"], load_checkpoint(tmp_path / "ft" / "last.pth")["model"]
    assert tuned["head.weight"].shape == (2, 32)
    assert weights_equal({k: v for k, v in source.items() if not k.startswith("head.")},
                         {k: v for k, v in tuned.items() if not k.startswith("head.")})


def test_checkpoint_that_does_not_fit_the_model_is_a_one_line_error(data_dir, trained, tmp_path, monkeypatch,
                                                                      capsys):
    import pretrain_in1k

    torch.save({"model": load_checkpoint(trained[0] / "last.pth")["model"]}, tmp_path / "plain.pth")
    shallow = [*VIT[:3], VIT[3].replace("depth: 2", "depth: 1"), *VIT[4:]]
    monkeypatch.setattr(sys, "argv", ["pretrain_in1k", "--eval", "--checkpoint", str(tmp_path / "plain.pth"), *shallow,
                                      "--data-dir", data_dir, "--output-dir", str(tmp_path), "--num-workers", "0"])
    with pytest.raises(SystemExit) as exit_info:
        pretrain_in1k.cli()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1
    assert re.match(r"pretrain_in1k: error: checkpoint .*plain.pth does not fit the model; unexpected keys "
                    r"\(\d+\): blocks\.1\..*; check that --model, --model-kwargs", err)


def test_input_size_the_model_cannot_take(data_dir, tmp_path):
    with pytest.raises(UsageError, match="cannot take 48x48 inputs.*--input-size 32"):
        main([*VIT, "--input-size", "48", "--data-dir", data_dir, "--output-dir", str(tmp_path)])


def test_scorer_flags_need_a_dart_model(data_dir, tmp_path):
    with pytest.raises(UsageError, match="--scorer only apply to DART models"):
        main([*VIT, "--scorer", "mobilenet_v3_small", "--data-dir", data_dir, "--output-dir", str(tmp_path)])


def test_config_precedence_and_lr_scaling(tmp_path):
    from pretrain_config import parse_args, scaled_lr

    args = parse_args(["--data-dir", "d"])
    assert (args.opt, args.blr, args.weight_decay, args.sched, args.warmup_epochs, args.epochs, args.smoothing) == (
        "adamw", 1e-3, 0.05, "cosine", 5, 300, 0.1)
    assert scaled_lr(args, world_size=8) == pytest.approx(1e-3)  # 128 x 8 = 1024 images
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("weight-decay: 0.1\nepochs: 30\nmodel_kwargs: {depth: 2}\n")
    args = parse_args(["--data-dir", "d", "--config", str(cfg), "--epochs", "7"])
    assert (args.weight_decay, args.epochs, args.model_kwargs) == (0.1, 7, {"depth": 2})
    assert scaled_lr(parse_args(["--data-dir", "d", "--lr", "0.5"]), world_size=4) == 0.5
    shipped = parse_args(["--data-dir", "d", "--config", os.path.join(ROOT, "tools", "pretrain_deit_tiny_dart.yaml")])
    assert (shipped.model, shipped.input_size, scaled_lr(shipped, world_size=8)) == ("deit_tiny_dart_patch16_448",
                                                                                   448, pytest.approx(1e-3))
    cfg.write_text("weight_dcay: 0.1\n")
    with pytest.raises(UsageError, match="unknown keys.*weight_dcay"):
        parse_args(["--data-dir", "d", "--config", str(cfg)])


@pytest.mark.parametrize("text, message", [
    ("epochs: 1.5\n", "epochs is 1.5, expected int"),
    ("batch-size: 4.0\n", "batch_size is 4.0, expected int"),
    ("model-ema: please\n", "model_ema is 'please', expected bool"),
    ("amp-dtype: float8\n", "amp_dtype is 'float8', expected one of"),
    ("epochs: [2\n", "is not valid YAML: .* line 2, column 1"),
])
def test_config_file_values_are_checked_as_their_flags_are(tmp_path, text, message):
    """argparse converts only string defaults: without the check, epochs: 1.5 ran 2 epochs and
    batch-size: 4.0 failed deep inside the data loader."""
    from pretrain_config import parse_args

    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(text)
    with pytest.raises(UsageError, match=message):
        parse_args(["--data-dir", "d", "--config", str(cfg)])


def test_config_file_values_convert_like_the_flags(tmp_path):
    from pretrain_config import parse_args

    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("lr: 1e-3\nweight-decay: 1\nscorer-version: null\nmodel-ema: true\namp-dtype: none\n")
    args = parse_args(["--data-dir", "d", "--config", str(cfg)])
    assert (args.lr, args.weight_decay, args.scorer_version, args.model_ema, args.amp_dtype) == (1e-3, 1.0, None, True, "none")
    assert isinstance(args.weight_decay, float)


def test_grad_checkpointing_recomputes_and_trains_the_same_run(data_dir, trained, tmp_path):
    """--grad-checkpointing switches timm's checkpointing on, and the run's losses and weights are
    those of the run without it."""
    from pretrain_config import parse_args
    from pretrain_in1k import build_model

    flags = [*VIT, "--data-dir", data_dir]
    assert build_model(parse_args([*flags, "--grad-checkpointing"]), 3).grad_checkpointing
    assert not build_model(parse_args(flags), 3).grad_checkpointing
    unsupported = ["--model", "convit_tiny", "--data-dir", data_dir, "--grad-checkpointing"]
    with pytest.raises(UsageError, match="--grad-checkpointing: 'convit_tiny' does not support it"):
        build_model(parse_args(unsupported), 3)
    main([*COMMON, "--grad-checkpointing", "--data-dir", data_dir, "--output-dir", str(tmp_path)])
    assert train_losses(tmp_path) == train_losses(trained[0])
    ours, theirs = load_checkpoint(tmp_path / "last.pth"), load_checkpoint(trained[0] / "last.pth")
    assert weights_equal(ours["model"], theirs["model"])


def test_evaluation_reports_its_own_score_fallbacks():
    """evaluate() returns the images whose scores fell back during that evaluation, counted by the
    tokenizer (here: the images holding a NaN pixel)."""
    import argparse

    import timm
    from dart_core.training import DistContext
    from pretrain_in1k import evaluate

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_dart_patch16_448", img_size=64, patch_size=8, embed_dim=32, depth=1,
                              num_heads=2, num_tokens=12, num_classes=3, scorer_weights=None)
    images = torch.rand(5, 3, 64, 64)
    images[[1, 4], :, 3, 3] = float("nan")
    loader = [(images[:3], torch.tensor([0, 1, 2])), (images[3:], torch.tensor([1, 0]))]
    args = argparse.Namespace(no_progress=True, amp_dtype="none")
    stats = evaluate(model, loader, args, DistContext(0, 1, 0, torch.device("cpu")), 3)
    assert stats["images"] == 5 and stats["score_fallbacks"] == 2
    assert evaluate(model, loader[:1], args, DistContext(0, 1, 0, torch.device("cpu")), 3)["score_fallbacks"] == 1
