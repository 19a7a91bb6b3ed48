"""Training and measuring one demo model."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm


@dataclass
class Result:
    name: str
    accuracy: float
    tokens: int
    mflops: float
    images_per_s: float
    train_s: float


def param_groups(model: nn.Module, lr: float, scorer_lr_scale: float) -> list[dict]:
    """The score network's trainable parameters get ``lr × scorer_lr_scale``, the rest ``lr``."""
    scorer, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (scorer if ".scorer." in f".{name}" else rest).append(param)
    groups = [{"params": rest, "lr": lr}]
    if scorer:
        groups.append({"params": scorer, "lr": lr * scorer_lr_scale})
    return groups


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int,
          lr: float, seed: int, desc: str, scorer_lr_scale: float = 1.0) -> float:
    """AdamW + cosine schedule with warm-up; returns seconds spent."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(param_groups(model, lr, scorer_lr_scale), weight_decay=0.05)
    steps = epochs * math.ceil(len(images) / batch_size)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    start = time.perf_counter()
    with tqdm(total=steps, desc=desc, leave=False) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for i in range(0, len(images), batch_size):
                index = order[i:i + batch_size]
                loss = F.cross_entropy(model(images[index]), labels[index], label_smoothing=0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """(top-1 accuracy, images per second) in eval mode."""
    model.eval()
    correct, start = 0, time.perf_counter()
    for i in range(0, len(images), batch_size):
        correct += (model(images[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum().item()
    return correct / len(images), len(images) / (time.perf_counter() - start)


@torch.no_grad()
def mflops_per_image(model: nn.Module, image: torch.Tensor) -> float:
    """Forward FLOPs of one image, in millions (torch FlopCounterMode; needs TIMM_FUSED_ATTN=0)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(image[:1])
    return counter.get_total_flops() / 1e6
