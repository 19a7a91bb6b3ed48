"""Video classification data: Something-Something V2 and ``path label`` list files.

Layouts:

* SSv2 (the official release): ``ROOT/labels.json`` maps class names to indices (``{"Pushing
  something from left to right": "94", ...}``); ``ROOT/train.json`` / ``ROOT/validation.json``
  list ``{"id": "78687", "template": "Holding [something] next to [something]", ...}``; videos
  are ``ROOT/<videos dir>/<id>.webm`` (``20bn-something-something-v2`` or ``videos``). A clip's
  class is its template without the brackets.
* List files (VideoMamba / UniFormer style): one ``relative/path.webm LABEL`` per line (the path
  may contain spaces; the label is the last field), paths relative to a root folder.

Clips are T frames by segment sampling (the video is cut into T equal segments; training takes a
random frame of each, evaluation the middle one), resized on the short side, cropped (random
scale crop in training, centre crop in evaluation) and normalised. Multi-view testing (the
VideoMamba release tests SSv2 with 2 clips × 3 crops) takes K temporal clips × J spatial crops of
every video: see :func:`segment_indices` and :func:`clip_transform`; the views' softmax scores are
averaged per video by :func:`dart_video.engine.evaluate`. There is **no horizontal
flip**: SSv2 labels such as "left to right" depend on direction. A training video that cannot be
decoded is replaced by another one of the split (a warning names it); in evaluation it is left out
(its views come back with video index −1, and the evaluation counts it as skipped: a replacement
would give another video extra views); after ``max_retries`` failures in a
row the dataset raises.

Decoding uses decord (``decord2``) when importable and PyAV otherwise (or when decord fails);
:class:`FrameCache` keeps decoded videos in memory for small data sets.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from dart_core.datafiles import read_json
from dart_core.training import seeded_rng
from torch.utils.data import Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SSV2_VIDEO_DIRS = ("20bn-something-something-v2", "videos")
SSV2_SPLITS = {"train": "train.json", "validation": "validation.json", "val": "validation.json"}


class VideoDecodeError(RuntimeError):
    """A video file could not be decoded by any available reader."""


@dataclass(frozen=True)
class VideoSample:
    path: str
    label: int


# ---------------------------------------------------------------------------------------------
# Annotations


RESTORE_SSV2 = "restore the file from the SSv2 release"


def ssv2_class_name(template: str) -> str:
    """The SSv2 class of a clip: its template without the placeholder brackets."""
    return template.replace("[", "").replace("]", "")


def read_ssv2_classes(labels_path: str) -> list[str]:
    """The class names by index from an SSv2 ``labels.json`` (``{name: "index"}``, the indices
    0 .. C−1 each once)."""
    raw = read_json(labels_path, RESTORE_SSV2)
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f'{labels_path} must map class names to indices, e.g. {{"Holding something": "0"}}')
    names: list[str | None] = [None] * len(raw)
    for name, index in raw.items():
        number = int(index) if isinstance(index, (int, str)) and str(index).strip().isdigit() else None
        if number is None or number >= len(raw):
            raise ValueError(f"{labels_path}: class {name!r} has index {index!r}; the {len(raw)} classes need the "
                             f"indices 0 .. {len(raw) - 1}, each once")
        if names[number] is not None:
            raise ValueError(f"{labels_path}: classes {names[number]!r} and {name!r} share the index {number}")
        names[number] = name
    return names


def read_ssv2(root: str, split: str) -> tuple[list[VideoSample], list[str]]:
    """SSv2 samples of a split ("train" or "validation") and the class names by index.

    Raises:
        FileNotFoundError: a missing annotation file or videos folder.
        ValueError: malformed annotations (the message names the file and the entry).
    """
    if split not in SSV2_SPLITS:
        raise ValueError(f"unknown SSv2 split {split!r}: use one of {sorted(SSV2_SPLITS)}")
    labels_path, split_path = os.path.join(root, "labels.json"), os.path.join(root, SSV2_SPLITS[split])
    for path in (labels_path, split_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: an SSv2 root holds labels.json, train.json, validation.json and the videos folder"
            )
    names = read_ssv2_classes(labels_path)
    labels = {name: index for index, name in enumerate(names)}
    video_dir = next((os.path.join(root, d) for d in SSV2_VIDEO_DIRS if os.path.isdir(os.path.join(root, d))), None)
    if video_dir is None:
        raise FileNotFoundError(f"no videos folder in {root}: expected one of {list(SSV2_VIDEO_DIRS)}")
    entries = read_json(split_path, RESTORE_SSV2)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{split_path} lists no clips: expected a non-empty list of "
                         '{"id": ..., "template": ...} entries')
    samples = []
    for number, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), (str, int))
                and isinstance(entry.get("template"), str)):
            raise ValueError(f"{split_path}: entry {number} ({entry!r:.200}) needs an 'id' and a 'template' string")
        name = ssv2_class_name(entry["template"])
        if name not in labels:
            raise ValueError(f"{split_path}: clip {entry['id']} has template {entry['template']!r}, not in labels.json")
        samples.append(VideoSample(os.path.join(video_dir, f"{entry['id']}.webm"), labels[name]))
    return samples, names


def read_list_file(list_file: str, root: str = "", num_classes: int | None = None) -> list[VideoSample]:
    """Samples from a ``path label`` list file (paths relative to ``root``); labels must be class
    indices, below ``num_classes`` when it is given.

    Raises:
        ValueError: an empty file, a malformed line or a label out of range (naming file:line).
    """
    samples = []
    with open(list_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            path, _, label = line.rpartition(" ")
            if not path or not label.lstrip("-").isdigit():
                raise ValueError(f"{list_file}:{number}: expected 'relative/path LABEL', got {line!r}")
            if int(label) < 0 or (num_classes is not None and int(label) >= num_classes):
                limit = f"0 .. {num_classes - 1}" if num_classes is not None else ">= 0"
                raise ValueError(f"{list_file}:{number}: label {label} is not a class index {limit}"
                                 + ("; raise --num-classes" if num_classes is not None else ""))
            samples.append(VideoSample(os.path.join(root, path), int(label)))
    if not samples:
        raise ValueError(f"{list_file} lists no videos: expected 'relative/path LABEL' lines")
    return samples


# ---------------------------------------------------------------------------------------------
# Decoding


def _decord_frames(path: str, count_only: bool, indices: Sequence[int]):
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    if count_only:
        return len(reader)
    return reader.get_batch(list(indices)).asnumpy()


def _pyav_frames(path: str, count_only: bool, indices: Sequence[int]):
    import av

    with av.open(path) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise VideoDecodeError(f"{path} has no decodable video frames")
    if count_only:
        return len(frames)
    return np.stack([frames[i] for i in indices])


def available_readers() -> list[Callable]:
    """Decoders in order of preference: decord, then PyAV (those importable)."""
    readers = []
    for module, reader in (("decord", _decord_frames), ("av", _pyav_frames)):
        try:
            __import__(module)
            readers.append(reader)
        except ImportError:
            pass
    if not readers:
        raise ImportError("no video decoder: install decord2 or av (pip install 'dart-video[data]')")
    return readers


def _decode(path: str, readers: Sequence[Callable] | None, choose: Callable[[int], Sequence[int]]) -> np.ndarray:
    """Frames ``choose(frame count)`` of a video, from the first reader that can decode it."""
    if not os.path.isfile(path):
        raise VideoDecodeError(f"video file not found: {path}")
    errors = []
    for reader in readers or available_readers():
        try:
            total = reader(path, True, ())
            if total < 1:
                raise VideoDecodeError("no frames")
            return reader(path, False, choose(total))
        except Exception as error:  # each decoder raises its own types
            errors.append(f"{getattr(reader, '__name__', type(reader).__name__).strip('_')}: {error}")
    raise VideoDecodeError(f"cannot decode {path} ({'; '.join(errors)})")


def read_frames(path: str, num_frames: int, train: bool, rng: random.Random,
                readers: Sequence[Callable] | None = None, clip: int = 0, clips: int = 1) -> np.ndarray:
    """Segment-sample ``num_frames`` frames of a video (evaluation: temporal clip ``clip`` of
    ``clips``, see :func:`segment_indices`).

    Returns:
        (T, H, W, 3) uint8 RGB frames.

    Raises:
        VideoDecodeError: no reader could decode the file.
    """
    return _decode(path, readers, lambda total: segment_indices(total, num_frames, train, rng, clip, clips))


class FrameCache:
    """A reader (same interface as the decoders) that decodes each video once, with the first of
    ``readers`` that can, and serves frames from memory afterwards."""

    def __init__(self, readers: Sequence[Callable] | None = None):
        self.readers = list(readers) if readers is not None else available_readers()
        self.videos: dict[str, np.ndarray] = {}

    def __call__(self, path: str, count_only: bool, indices: Sequence[int]):
        if path not in self.videos:
            self.videos[path] = _decode(path, self.readers, range)
        frames = self.videos[path]
        return len(frames) if count_only else frames[list(indices)]


def segment_indices(total: int, num_frames: int, train: bool, rng: random.Random, clip: int = 0,
                    clips: int = 1) -> list[int]:
    """TSN segment sampling: one frame from each of ``num_frames`` equal segments of ``total``
    frames; short videos repeat frames.

    Training takes a random frame of each segment. Evaluation takes temporal clip ``clip`` of
    ``clips`` (K): the frame at fraction ``(1/2 + clip/K) mod 1`` of every segment, so clip 0 is
    the segment middles (K = 1: the single-view frames) and the K clips are spaced 1/K of a segment
    apart. For K = 2 that is the VideoMamba release's SSv2 test set of clips {segment middles,
    segment starts} (for K > 2 the release pads its index list with copies of the last frame
    instead). Positions are computed in exact integer arithmetic (the floor of the exact position).
    """
    if not 0 <= clip < clips:
        raise ValueError(f"temporal clip must be in [0, {clips}), got {clip}")
    if train:
        length = total / num_frames
        return [min(int(rng.uniform(s * length, (s + 1) * length)), total - 1) for s in range(num_frames)]
    offset = (clips + 2 * clip) % (2 * clips)  # in units of 1 / (2K) of a segment
    return [total * (2 * clips * s + offset) // (2 * clips * num_frames) for s in range(num_frames)]


def crop_start(room: int, crop: int, crops: int) -> int:
    """Offset of spatial crop ``crop`` of ``crops`` (J) along a side with ``room`` spare pixels:
    J = 1 the centre; otherwise J crops evenly spaced from one end to the other (J = 3: left /
    top, centre, right / bottom), as the release's ``test_num_crop``."""
    if not 0 <= crop < crops:
        raise ValueError(f"spatial crop must be in [0, {crops}), got {crop}")
    return room // 2 if crops == 1 else crop * room // (crops - 1)


# ---------------------------------------------------------------------------------------------
# Transforms


def clip_transform(frames: np.ndarray, size: int, train: bool, rng: random.Random,
                   scale: tuple[float, float] = (0.66, 1.0), crop: int = 0, crops: int = 1) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (3, T, size, size) float normalised with ImageNet statistics.

    Resize the short side to ``size`` (evaluation) or ``size / scale`` (training, a random scale
    in ``scale``), then crop ``size × size``: randomly in training, in evaluation spatial crop
    ``crop`` of ``crops`` (:func:`crop_start`; the short side has no room, so the crops move along
    the long side). Never flips.
    """
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
    height, width = clip.shape[-2:]
    short = size / rng.uniform(*scale) if train else size
    factor = short / min(height, width)
    new_size = (max(size, round(height * factor)), max(size, round(width * factor)))
    clip = F.interpolate(clip, size=new_size, mode="bilinear", align_corners=False, antialias=True)
    top_range, left_range = new_size[0] - size, new_size[1] - size
    top = rng.randint(0, top_range) if train else crop_start(top_range, crop, crops)
    left = rng.randint(0, left_range) if train else crop_start(left_range, crop, crops)
    clip = clip[:, :, top:top + size, left:left + size]
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((clip - mean) / std).transpose(0, 1).contiguous()


class VideoClassification(Dataset):
    """Clips, labels and video indices.

    Args:
        samples: the videos and their labels.
        num_frames: T.
        size: crop size.
        train: random segment frames and random crops (else deterministic).
        seed: base seed; item i of epoch e uses ``Random(seed, e, i)``, so runs are reproducible.
        max_retries: how many replacement videos to try after a decoding failure.
        readers: decoders to try (default: :func:`available_readers`).
        augment: applied to the (T, H, W, 3) uint8 frames before cropping in training, e.g.
            :class:`dart_video.augment.ClipRandAugment` (it may draw from the global RNGs: they
            are seeded from the item's own generator).
        erase: applied to the normalised (3, T, size, size) clip in training, e.g.
            :class:`dart_video.augment.ClipRandomErasing` (global RNGs seeded the same way).
        repeats: the dataset lists every video this many times (repeated sampling: several
            differently augmented clips of a video per epoch).
        scale: training crop scale range (see :func:`clip_transform`).
        cache: keep decoded videos in memory (:class:`FrameCache`).
        views: (K, J) test views per video in evaluation: K temporal clips
            (:func:`segment_indices`) × J spatial crops (:func:`clip_transform`); (1, 1) is the
            single centre view.

    The dataset lists ``len(samples) · repeats · K · J`` items; item i is view ``i mod K·J``
    (clip ``view // J``, crop ``view mod J``) of video ``i // (K·J) mod len(samples)``. Items are
    ``((3, T, size, size) float clip, label, video)`` where ``video`` indexes ``samples`` (the
    video actually decoded: in training a replacement's index when the video could not be; in
    evaluation −1, with a zero clip, for a video that could not be decoded). An item may also
    be asked for as ``dataset[(index, seed)]`` (what :class:`dart_core.training.EpochSampler`
    yields): then the clip is a pure function of (index, seed), whatever the epoch or the process.
    """

    def __init__(self, samples: Sequence[VideoSample], num_frames: int = 8, size: int = 224, train: bool = False,
                 seed: int = 0, max_retries: int = 10, readers: Sequence[Callable] | None = None,
                 augment: Callable[[np.ndarray], np.ndarray] | None = None,
                 erase: Callable[[torch.Tensor], torch.Tensor] | None = None, repeats: int = 1,
                 scale: tuple[float, float] = (0.66, 1.0), cache: bool = False, views: tuple[int, int] = (1, 1)):
        if not samples:
            raise ValueError("the dataset has no samples")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if min(views) < 1 or (train and tuple(views) != (1, 1)):
            raise ValueError(f"views must be (clips >= 1, crops >= 1), and (1, 1) in training; got {views}")
        self.samples, self.num_frames, self.size, self.train = list(samples), num_frames, size, train
        self.seed, self.max_retries, self.epoch = seed, max_retries, 0
        self.augment, self.erase, self.repeats, self.scale = augment, erase, repeats, scale
        self.clips, self.crops = views
        readers = list(readers) if readers is not None else available_readers()
        self.readers = [FrameCache(readers)] if cache else readers
        self.replaced: list[str] = []  # training videos that could not be decoded (each time)
        self.skipped: list[str] = []  # evaluation videos that could not be decoded (each view)

    def __len__(self) -> int:
        return len(self.samples) * self.repeats * self.clips * self.crops

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        if isinstance(item, tuple):
            index, seed = item
            rng = random.Random(seed)
        else:
            index, rng = item, random.Random(f"{self.seed}/{self.epoch}/{item}")
        index, view = divmod(index, self.clips * self.crops)
        clip, crop = divmod(view, self.crops)
        index %= len(self.samples)
        for _ in range(self.max_retries + 1):
            sample = self.samples[index]
            try:
                frames = read_frames(sample.path, self.num_frames, self.train, rng, self.readers, clip, self.clips)
                if self.train and self.augment is not None:
                    with seeded_rng(rng.getrandbits(32)):
                        frames = self.augment(frames)
                out = clip_transform(frames, self.size, self.train, rng, self.scale, crop, self.crops)
                if self.train and self.erase is not None:
                    with seeded_rng(rng.getrandbits(32)):
                        out = self.erase(out)
                return out, sample.label, index
            except VideoDecodeError as error:
                if not self.train:
                    warnings.warn(f"{error}; evaluation leaves it out", RuntimeWarning, stacklevel=2)
                    self.skipped.append(sample.path)
                    return torch.zeros(3, self.num_frames, self.size, self.size), sample.label, -1
                warnings.warn(f"{error}; replacing it with another video", RuntimeWarning, stacklevel=2)
                self.replaced.append(sample.path)
                index = rng.randrange(len(self.samples))
        raise VideoDecodeError(f"{self.max_retries + 1} videos in a row could not be decoded; check the data")
