"""Shared video test data: tiny webm clips written with PyAV and an SSv2-layout dataset of them."""

import json
import os

import av
import numpy as np
import pytest
from dart_video import data


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
