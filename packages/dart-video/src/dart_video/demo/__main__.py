"""``python -m dart_video.demo``: DART vs uniform tokens on moving handwritten digits, same budget.

1. Writes a small SSv2-layout data set of real VP9 ``.webm`` clips (:mod:`.moving_digits`).
2. Trains two tiny VideoMambas with ``dart-video train`` (the command's own code, run as two
   processes side by side, one CPU thread each): uniform tokens (the frames resized so that a
   fixed patch grid gives the token budget) and DART (full-resolution frames, the same budget,
   the temporal-difference scorer trained end to end).
3. Evaluates both with ``dart-video eval``, prints a table (top-1, tokens, FLOPs, clips/s),
   draws DART's partitions of validation clips across their frames, writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from dart_core.visualize import image_grid, partition_overview, save_png, to_pil
from PIL import Image

from .. import cli, data
from ..checkpoint import load_video_checkpoint
from ..engine import build_model, clip_dataset
from ..recipes import config_from_args
from ..tokenizer import frames_to_tall
from .moving_digits import TEMPLATES, MovingDigitsConfig, write_dataset


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dart_video.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/video_demo", help="folder for the data, runs, pictures, results.json")
    p.add_argument("--train-size", type=int, default=600, help="training clips")
    p.add_argument("--val-size", type=int, default=240, help="validation clips (unseen handwriting)")
    p.add_argument("--frame", type=int, default=64, help="frame side of the clips (pixels)")
    p.add_argument("--video-frames", type=int, default=8, help="frames written per clip")
    p.add_argument("--num-frames", type=int, default=4, help="frames the models sample per clip (T)")
    p.add_argument("--patch", type=int, default=8, help="patch size of both models")
    p.add_argument("--tokens-per-frame", type=int, default=16, help="budget per frame (a square: the uniform grid)")
    p.add_argument("--fragments", type=int, default=4, help="static distracting fragments per clip")
    p.add_argument("--digit-scale", type=int, default=1, help="digit side = 8 x this (pixels)")
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sequential", action="store_true", help="train one model after the other (default: side by side)")
    return p.parse_args(argv)


def model_flags(args: argparse.Namespace, dart: bool) -> list[str]:
    """The ``dart-video`` model settings of one of the two models."""
    side = round(args.tokens_per_frame ** 0.5)
    kwargs = {"patch_size": args.patch, "embed_dim": args.embed_dim, "depth": args.depth, "d_state": 8}
    if dart:  # no pretrained scorer weights offline: a shallow MobileNetV3 stage, trained end to end
        kwargs.update(scorer_stage=4, scorer_trainable=True)
        flags = ["--model", "videomamba_tiny_dart_patch16_224", "--img-size", str(args.frame),
                 "--num-tokens", str(args.tokens_per_frame * args.num_frames)]
    else:
        flags = ["--model", "videomamba_tiny_patch16_224", "--img-size", str(side * args.patch)]
    return [*flags, "--num-frames", str(args.num_frames), "--model-kwargs", json.dumps(kwargs)]


def train_flags(args: argparse.Namespace, root: Path) -> list[str]:
    """The recipe both models share: AdamW + cosine with warm-up, no RandAugment/Mixup (a few
    hundred clips, a few epochs), decoded videos cached in memory."""
    return ["--data", str(root), "--device", "cpu", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--warmup-epochs", "1", "--min-blr", "0", "--weight-decay", "0.05",
            "--layer-decay", "1", "--drop-path", "0", "--num-sample", "1", "--aa", "none", "--mixup", "0",
            "--cutmix", "0", "--smoothing", "0.1", "--min-crop-scale", "1", "--workers", "0", "--cache-videos",
            "--seed", str(args.seed), "--log-interval", "5", "--threads", "1"]


def train_both(args: argparse.Namespace, root: Path, runs: dict[str, Path]) -> dict[str, float]:
    """Run ``dart-video train`` for both models (side by side, or one after the other); returns
    the training seconds of each."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TIMM_FUSED_ATTN="0")
    commands = {name: [sys.executable, "-m", "dart_video", "train", *train_flags(args, root), *model_flags(args, name == "DART"),
                       "--out", str(out), "--no-progress"] for name, out in runs.items()}
    seconds, running = {}, {}
    for name, command in commands.items():
        start = time.perf_counter()
        with open(runs[name] / "train.out", "w") as log:
            running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), start)
        if args.sequential:
            running[name][0].wait()
            seconds[name] = time.perf_counter() - start
    for name, (process, start) in running.items():
        if process.wait() != 0:
            tail = (runs[name] / "train.out").read_text()[-3000:]
            raise SystemExit(f"training {name} failed (exit {process.returncode}):\n{tail}")
        seconds.setdefault(name, time.perf_counter() - start)
    return seconds


ZOOM = 3  # frames are tiny: draw on a nearest-neighbour enlargement


@torch.no_grad()
def save_partitions(checkpoint: Path, root: Path, out: Path, count: int = 6) -> Path:
    """DART's tall-frame partitions (with scores) of the first ``count`` validation clips: the
    clip's frames stacked top to bottom, the rows and tokens drawn across them."""
    config = config_from_args(argparse.Namespace(), base=cli.stored_config(str(checkpoint)))
    samples, names = data.read_ssv2(str(root), "validation")
    model = build_model(config, len(names)).eval()
    load_video_checkpoint(model, checkpoint)
    dataset = clip_dataset(samples[:count], config, train=False)
    clips = torch.stack([dataset[i][0] for i in range(len(dataset))])
    details = model.patch_embed(clips, return_details=True)
    tall = frames_to_tall(clips)
    pictures = []
    for i in range(len(clips)):
        frames = to_pil(tall, i, mean=data.IMAGENET_MEAN, std=data.IMAGENET_STD)
        frames = frames.resize((frames.width * ZOOM, frames.height * ZOOM), Image.NEAREST)
        pictures.append(partition_overview(frames, details.partition, scores=details.scores, index=i))
    captions = [names[s.label] for s in samples[:count]]
    path = out / "partitions.png"
    save_png(image_grid(pictures, captions, columns=count), path)
    return path


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    root = out / "moving_digits"
    started = time.perf_counter()
    config = MovingDigitsConfig(frame=args.frame, frames=args.video_frames, fragments=args.fragments,
                                digit_scale=args.digit_scale)
    write_dataset(str(root), args.train_size, args.val_size, config, seed=args.seed)
    runs = {"uniform": out / "uniform", "DART": out / "dart"}
    for run in runs.values():
        run.mkdir(parents=True, exist_ok=True)
    seconds = train_both(args, root, runs)
    results = []
    for name, run in runs.items():
        stats = cli.run(["eval", "--data", str(root), "--checkpoint", str(run / "best.pth"), "--workers", "0",
                         "--no-progress", "--cache-videos", "--eval-batch-size", "64", "--threads", "1"])
        results.append({"name": name, **stats, "train_s": seconds[name]})
    picture = save_partitions(runs["DART"] / "best.pth", root, out)
    summary = {"args": vars(args), "data": vars(config), "classes": [t.replace("[", "").replace("]", "") for t in TEMPLATES],
               "results": results, "partitions": str(picture), "total_s": time.perf_counter() - started}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print_table(results, args)
    print(f"partitions: {picture}\nresults: {out / 'results.json'}  ({summary['total_s']:.0f} s in all)")
    return summary


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    print(f"\nmoving digits: {args.frame}x{args.frame} frames, T={args.num_frames}, {args.fragments} fragments, "
          f"{args.train_size} train / {args.val_size} validation clips, {args.epochs} epochs")
    header = f"{'tokens from':<12} {'top-1':>7} {'tokens':>7} {'MFLOPs':>8} {'clips/s':>8} {'train s':>8}"
    print(header + "\n" + "-" * len(header))
    for r in results:
        print(f"{r['name']:<12} {r['top1']:>6.1f}% {r['tokens']:>7d} {1000 * r['gflops']:>8.1f} "
              f"{r['clips_per_s']:>8.0f} {r['train_s']:>8.0f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
