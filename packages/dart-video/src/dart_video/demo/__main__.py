"""``python -m dart_video.demo``: DART vs uniform tokens on moving handwritten digits, same budget.

1. Writes a small SSv2-layout data set of real VP9 ``.webm`` clips (:mod:`.moving_digits`): a
   small real handwritten digit moves (or is held, or turned upside down) in a large grey frame.
2. Trains two tiny VideoMambas with the ``dart-video train`` loop (:func:`dart_video.engine.fit`,
   two processes side by side, one CPU thread each; :mod:`.models`): uniform tokens (the frames
   resized so that a fixed patch grid gives the budget) and DART (full-resolution frames, the same
   budget, placed by the temporal-difference scorer on a frozen ImageNet EfficientNet-Lite0 stem).
3. Prints a table (top-1 of the last epoch on unseen handwriting, tokens, FLOPs, clips/s), draws
   DART's partitions of validation clips across their frames, writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import torch
from dart_core.visualize import image_grid, partition_overview, save_png, to_pil
from PIL import Image

from .. import data
from ..checkpoint import load_video_checkpoint
from ..engine import clip_dataset
from ..tokenizer import frames_to_tall
from . import train
from .moving_digits import TEMPLATES, MovingDigitsConfig, write_dataset


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dart_video.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/video_demo", help="folder for the data, runs, pictures, results.json")
    p.add_argument("--train-size", type=int, default=600, help="training clips")
    p.add_argument("--val-size", type=int, default=240, help="validation clips (unseen handwriting)")
    p.add_argument("--frame", type=int, default=64, help="frame side of the clips (pixels)")
    p.add_argument("--video-frames", type=int, default=4,
                   help="frames written per clip (= T: every frame is used, no temporal jitter in training)")
    p.add_argument("--num-frames", type=int, default=4, help="frames the models sample per clip (T)")
    p.add_argument("--patch", type=int, default=8, help="patch size of both models")
    p.add_argument("--tokens-per-frame", type=int, default=16, help="budget per frame (a square: the uniform grid)")
    p.add_argument("--fragments", type=int, default=4, help="static distracting fragments per clip")
    p.add_argument("--digit-scale", type=int, default=1, help="digit side = 8 x this (pixels)")
    p.add_argument("--travel", type=float, default=MovingDigitsConfig.travel,
                   help="distance a moving digit covers, as a fraction of (frame side - digit side)")
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--contrast", type=float, default=6.0, help="DART scorer contrast (1: the published activation)")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sequential", action="store_true", help="train one model after the other (default: side by side)")
    args = p.parse_args(argv)
    if round(args.tokens_per_frame ** 0.5) ** 2 != args.tokens_per_frame:
        p.error(f"--tokens-per-frame must be a square (the uniform grid is side x side), got {args.tokens_per_frame}")
    return args


def settings(args: argparse.Namespace) -> dict:
    keys = ("frame", "num_frames", "patch", "tokens_per_frame", "embed_dim", "depth", "contrast", "epochs",
            "batch_size", "lr", "seed")
    return {k: getattr(args, k) for k in keys}


def train_both(jobs: list[train.Job], sequential: bool) -> list[dict]:
    """Run :func:`train.run` for every job: one after the other, or in parallel processes."""
    if sequential:
        return [train.run(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        results = pool.map(train.run, jobs)
        pool.close()  # let the workers exit on their own: the context's terminate() could kill one
        pool.join()  # holding a queue's semaphore ("leaked semaphore objects" at shutdown)
    return results


ZOOM = 3  # frames are tiny: draw on a nearest-neighbour enlargement


@torch.no_grad()
def save_partitions(job: train.Job, out: Path, count: int = 6) -> Path:
    """DART's tall-frame partitions (with scores) of the first validation clip of each class: the
    clip's frames stacked top to bottom, the rows and tokens drawn across them."""
    samples, names = data.read_ssv2(job.root, "validation")
    samples = [next(s for s in samples if s.label == c) for c in range(min(count, len(names)))]
    model = train.build_model(job, len(names)).eval()
    load_video_checkpoint(model, Path(job.out) / "last.pth")
    dataset = clip_dataset(samples, train.config_of(job), train=False)
    clips = torch.stack([dataset[i][0] for i in range(len(dataset))])
    details = model.patch_embed(clips, return_details=True)
    tall = frames_to_tall(clips)
    pictures = []
    for i in range(len(clips)):
        frames = to_pil(tall, i, mean=data.IMAGENET_MEAN, std=data.IMAGENET_STD)
        frames = frames.resize((frames.width * ZOOM, frames.height * ZOOM), Image.NEAREST)
        pictures.append(partition_overview(frames, details.partition, scores=details.scores, index=i))
    path = out / "partitions.png"
    save_png(image_grid(pictures, [names[s.label] for s in samples], columns=len(pictures)), path)
    return path


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    root = out / "moving_digits"
    started = time.perf_counter()
    config = MovingDigitsConfig(frame=args.frame, frames=args.video_frames, fragments=args.fragments,
                                digit_scale=args.digit_scale, travel=args.travel)
    write_dataset(str(root), args.train_size, args.val_size, config, seed=args.seed)
    jobs = [train.Job(name, name == "DART", str(root), str(out / name.lower()), settings(args))
            for name in ("uniform", "DART")]
    results = train_both(jobs, args.sequential)
    picture = save_partitions(jobs[1], out)
    summary = {"args": vars(args), "data": vars(config), "classes": [data.ssv2_class_name(t) for t in TEMPLATES],
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
