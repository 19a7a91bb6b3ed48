"""``python -m dart_core.demo``: fixed grid vs DART on cluttered digits, same tiny ViT, same budget.

Trains both models on CPU, prints a table (accuracy, tokens, FLOPs, images/s), writes
``results.json`` and partition pictures of test images to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from ..training.jsonl import JsonlLogger
from .data import ClutterConfig, load_digits_split, make_canvases, with_box_mask
from .models import FixedGridClassifier, dart_classifier, oracle_classifier
from .pictures import save_partition_pictures
from .train import Result, evaluate, mflops_per_image, train


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dart_core.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="folder for results.json, log.jsonl and pictures")
    parser.add_argument("--train-size", type=int, default=6000, help="training canvases")
    parser.add_argument("--test-size", type=int, default=2000, help="test canvases (unseen handwriting)")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tokens", type=int, default=16, help="token budget of both models")
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--grid", type=int, default=8, help="DART score grid / positional table side")
    parser.add_argument("--canvas", type=int, default=64)
    parser.add_argument("--fragments", type=int, default=3, help="distracting digit fragments per canvas")
    parser.add_argument("--scorer", choices=("lite0", "lite0-v1", "cnn"), default="lite0",
                        help="DART's scorer: frozen ImageNet EfficientNet-Lite0 + v2 head on its frame-relative "
                             "features (lite0), + v1 head on the raw features (lite0-v1, the published DeiT "
                             "setting), or a small CNN trained from scratch (cnn)")
    parser.add_argument("--scorer-lr-scale", type=float, default=10.0, help="scorer learning rate / ViT learning rate")
    parser.add_argument("--contrast", type=float, default=1.0,
                        help="score contrast (dart_core.Scorer; 1 = the published activation, which lets a digit on "
                             "1/16 of the canvas draw at most 2x the background's token density; 4 allows 3x)")
    parser.add_argument("--no-oracle", action="store_true", help="skip the oracle-scorer diagnostic row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("TIMM_FUSED_ATTN", "0")  # so FlopCounterMode sees attention
    if args.threads:
        torch.set_num_threads(args.threads)
    side = int(round(args.tokens ** 0.5))
    if side * side != args.tokens:
        raise SystemExit(f"--tokens must be a square (the fixed grid is side × side), got {args.tokens}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = ClutterConfig(canvas=args.canvas, num_fragments=args.fragments)
    (train_digits, train_labels), (test_digits, test_labels) = load_digits_split(seed=args.seed)
    train_x, train_y, train_corners = make_canvases(train_digits, train_labels, args.train_size, config, seed=args.seed + 1)
    test_x, test_y, test_corners = make_canvases(test_digits, test_labels, args.test_size, config, seed=args.seed + 2)
    digit_side = 8 * config.digit_scale
    # name → (model builder, train inputs, test inputs)
    runs = {
        "fixed grid": (lambda: FixedGridClassifier(args.canvas, side, args.patch_size), train_x, test_x),
        "DART": (lambda: dart_classifier(args.canvas, args.grid, args.tokens, args.patch_size, args.scorer,
                                         args.contrast), train_x, test_x),
    }
    if not args.no_oracle:
        runs["DART, oracle"] = (lambda: oracle_classifier(args.canvas, args.grid, args.tokens, args.patch_size),
                                with_box_mask(train_x, train_corners, digit_side),
                                with_box_mask(test_x, test_corners, digit_side))
    results, models = [], {}
    log = JsonlLogger(out / "log.jsonl")
    for name, (build, train_inputs, test_inputs) in runs.items():
        torch.manual_seed(args.seed)
        model = build()
        seconds = train(model, train_inputs, train_y, args.epochs, args.batch_size, args.lr, args.seed, desc=name,
                        scorer_lr_scale=args.scorer_lr_scale)
        accuracy, speed = evaluate(model, test_inputs, test_y)
        result = Result(name, accuracy, args.tokens, mflops_per_image(model, test_inputs), speed, seconds)
        log.log(event="result", **vars(result))
        results.append(result)
        models[name] = model
    print_table(results, args)
    pictures = save_partition_pictures(models["DART"], test_x[:8], test_y[:8], out)
    summary = {"args": vars(args), "results": [vars(r) for r in results], "pictures": [str(p) for p in pictures]}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"pictures: {', '.join(str(p) for p in pictures)}\nresults: {out / 'results.json'}")
    return summary


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    print(f"\ncluttered digits: {args.canvas}x{args.canvas} canvas, {args.fragments} fragments, "
          f"{args.train_size} train / {args.test_size} test canvases, {args.epochs} epochs")
    print(f"DART: {args.scorer} scorer, contrast {args.contrast:g}")
    header = f"{'model':<16} {'top-1':>7} {'tokens':>7} {'MFLOPs':>8} {'images/s':>9} {'train s':>8}"
    print(header + "\n" + "-" * len(header))
    for r in results:
        print(f"{r.name:<16} {100 * r.accuracy:>6.1f}% {r.tokens:>7d} {r.mflops:>8.2f} {r.images_per_s:>9.0f} "
              f"{r.train_s:>8.0f}")
    print("'DART, oracle' is a diagnostic, not a result: its scorer is given the digit's box (the ceiling a\n"
          "learned scorer can reach with this tokenizer and budget).")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
