"""Moving digits: a small Something-Something-V2-layout data set of real handwriting.

Each clip shows one of scikit-learn's real 8×8 handwritten digits (``load_digits``), upscaled
``digit_scale``× and small in a large grey frame, among static fragments of other digits (ink is
bright; the grey level sits near the ImageNet mean, so normalised frames are centred on 0 and the
digit stands out of a zero background instead of riding on a large constant offset). What
the digit does is the class, named like SSv2's templates:

* ``Pushing [something] from left to right`` / ``from right to left`` / ``Moving [something] up``
  / ``down``: it travels ``travel`` × the room it has (frame side − digit side; by default most
  of the way across, so where it starts and ends tells the direction even to a model that cannot
  compare positions finely);
* ``Holding [something]``: it stays where it is;
* ``Turning [something] upside down``: it stays, and is shown flipped vertically from the middle
  of the clip on. Telling this from "holding" needs the digit's shape, not just where it is, so
  only digits whose vertical flip differs from them are used (2, 4, 5, 6, 7, 9; 0, 1, 3 and 8
  look much the same upside down).

Handwriting is split once: validation clips use digits never seen in training. Clips are
written as real VP9 ``.webm`` files with PyAV, plus ``labels.json``, ``train.json`` and
``validation.json`` in the official SSv2 format, so they go through the same reading code as SSv2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import av
import numpy as np

from ..data import ssv2_class_name

TEMPLATES = (
    "Pushing [something] from left to right",
    "Pushing [something] from right to left",
    "Moving [something] up",
    "Moving [something] down",
    "Holding [something]",
    "Turning [something] upside down",
)
FLIP_DISTINCT_DIGITS = (2, 4, 5, 6, 7, 9)
# Unit direction (dy, dx) of each template's motion.
DIRECTIONS = {0: (0, 1), 1: (0, -1), 2: (-1, 0), 3: (1, 0), 4: (0, 0), 5: (0, 0)}
UPSIDE_DOWN = 5


@dataclass(frozen=True)
class MovingDigitsConfig:
    frame: int = 64  # frame side (pixels)
    frames: int = 8  # frames written per clip
    digit_scale: int = 1  # digit side = 8 · digit_scale pixels
    travel: float = 0.9  # distance moved over the clip, as a fraction of (frame side - digit side)
    fragments: int = 4  # static distracting fragments of other digits
    fragment: int = 4  # fragment side in original digit pixels
    noise: float = 0.04  # uniform noise amplitude (per frame)
    background: float = 0.45  # grey level of the frame; ink goes from it to white
    fps: int = 12

    def __post_init__(self):
        if self.frame < 8 * self.digit_scale:
            raise ValueError(f"a {8 * self.digit_scale}-pixel digit does not fit a {self.frame}-pixel frame: "
                             "lower digit_scale or enlarge the frame")
        if not 0 <= self.travel <= 1:
            raise ValueError(f"travel is a fraction of the room the digit has, in [0, 1]; got {self.travel}")


def digit_pools(test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, validation) sets of real (N, 8, 8) digits in [0, 1], only the classes in
    :data:`FLIP_DISTINCT_DIGITS`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.isin(digits.target, FLIP_DISTINCT_DIGITS)
    images = digits.images[keep].astype(np.float32) / 16.0
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(len(images) * (1 - test_fraction))
    return images[order[:cut]], images[order[cut:]]


def render_clip(digit: np.ndarray, label: int, pool: np.ndarray, config: MovingDigitsConfig,
                rng: np.random.Generator) -> np.ndarray:
    """One clip as (frames, S, S) float frames in [0, 1]: ``background + (1 - background) · ink``."""
    size, scale, frames = config.frame, config.digit_scale, config.frames
    side, piece_side = 8 * scale, config.fragment * scale
    background = np.zeros((size, size), np.float32)
    for _ in range(config.fragments):
        source = pool[rng.integers(len(pool))]
        fy, fx = rng.integers(0, 8 - config.fragment + 1, size=2)
        piece = np.kron(source[fy:fy + config.fragment, fx:fx + config.fragment], np.ones((scale, scale)))
        py, px = rng.integers(0, size - piece_side + 1, size=2)
        background[py:py + piece_side, px:px + piece_side] = np.maximum(
            background[py:py + piece_side, px:px + piece_side], piece)
    dy, dx = DIRECTIONS[label]
    distance = round(config.travel * (size - side))
    span_y, span_x = size - side - abs(dy) * distance, size - side - abs(dx) * distance
    y0 = rng.integers(0, span_y + 1) + (distance if dy < 0 else 0)
    x0 = rng.integers(0, span_x + 1) + (distance if dx < 0 else 0)
    sprite = np.kron(digit, np.ones((scale, scale), np.float32))
    clip = np.empty((frames, size, size), np.float32)
    for t in range(frames):
        progress = t / max(frames - 1, 1)
        y, x = round(y0 + dy * distance * progress), round(x0 + dx * distance * progress)
        shown = sprite[::-1] if label == UPSIDE_DOWN and t >= frames // 2 else sprite
        frame = background.copy()
        frame[y:y + side, x:x + side] = np.maximum(frame[y:y + side, x:x + side], shown)
        clip[t] = frame + config.noise * rng.random((size, size), dtype=np.float32)
    return config.background + (1 - config.background) * np.clip(clip, 0, 1)


def write_webm(path: str, clip: np.ndarray, fps: int = 12) -> None:
    """(frames, S, S) floats in [0, 1] → a grey VP9 .webm (near-lossless constant quality)."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        stream.options = {"crf": "4", "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
        for frame in clip:
            grey = np.round(frame * 255).astype(np.uint8)
            image = np.repeat(grey[:, :, None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_dataset(root: str, train_size: int, val_size: int, config: MovingDigitsConfig = MovingDigitsConfig(),
                  seed: int = 0) -> dict[str, int]:
    """Write an SSv2-layout data set under ``root`` (``videos/<id>.webm`` and the three JSON
    files); classes are balanced (clip i has class i mod 6). Returns the clip counts."""
    videos = os.path.join(root, "videos")
    os.makedirs(videos, exist_ok=True)
    names = [ssv2_class_name(t) for t in TEMPLATES]
    with open(os.path.join(root, "labels.json"), "w", encoding="utf-8") as f:
        json.dump({name: str(i) for i, name in enumerate(names)}, f, indent=1)
    train_pool, val_pool = digit_pools(seed=seed)
    rng = np.random.default_rng(seed + 1)
    next_id = 0
    for split, count, pool in (("train", train_size, train_pool), ("validation", val_size, val_pool)):
        entries = []
        for i in range(count):
            label = i % len(TEMPLATES)
            clip = render_clip(pool[rng.integers(len(pool))], label, pool, config, rng)
            write_webm(os.path.join(videos, f"{next_id}.webm"), clip, config.fps)
            entries.append({"id": str(next_id), "label": TEMPLATES[label].replace("[something]", "a digit"),
                            "template": TEMPLATES[label], "placeholders": ["a digit"]})
            next_id += 1
        with open(os.path.join(root, f"{split}.json"), "w", encoding="utf-8") as f:
            json.dump(entries, f)
    return {"train": train_size, "validation": val_size}
