"""The video demo: moving-digit clips (rendering, webm round trip, SSv2 layout) and a tiny end-to-end run."""

import json
import random

import numpy as np
import pytest
import torch
from dart_core.pretrained import efficientnet_lite0
from dart_core.scorers import FeatureContrast, standardise
from dart_video import data
from dart_video.demo import models
from dart_video.demo.__main__ import main
from dart_video.demo.moving_digits import (
    DIRECTIONS,
    FLIP_DISTINCT_DIGITS,
    TEMPLATES,
    UPSIDE_DOWN,
    MovingDigitsConfig,
    digit_pools,
    render_clip,
    write_dataset,
)
from PIL import Image

CLEAN = MovingDigitsConfig(frame=48, frames=6, fragments=0, noise=0.0)


def test_handwriting_pools_are_disjoint_and_flip_distinct():
    train, val = digit_pools()
    assert len(train) > 2 * len(val) > 0
    flat_train = {d.tobytes() for d in train}
    assert not any(d.tobytes() in flat_train for d in val)  # validation handwriting is unseen
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16
    kept = {d.tobytes() for d, t in zip(images, digits.target, strict=True) if t in FLIP_DISTINCT_DIGITS}
    assert flat_train | {d.tobytes() for d in val} <= kept


def locate(frame, digit):
    """The (y, x) where ``digit``'s ink sits in ``frame`` exactly (brute force), drawn bright on
    the grey background."""
    sprite = CLEAN.background + (1 - CLEAN.background) * digit
    side = sprite.shape[0]
    hits = [(y, x) for y in range(frame.shape[0] - side + 1) for x in range(frame.shape[1] - side + 1)
            if np.array_equal(frame[y:y + side, x:x + side], sprite)]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("label", range(len(TEMPLATES)))
def test_clips_do_what_their_label_says(label):
    train, _ = digit_pools()
    digit = train[0]
    clip = render_clip(digit, label, train, CLEAN, np.random.default_rng(label))
    assert clip.shape == (6, 48, 48) and clip.min() == np.float32(CLEAN.background) and clip.max() <= 1
    y, x = locate(clip[0], digit)
    if label < 4:  # it travels the set distance in its direction
        shift = np.subtract(locate(clip[-1], digit), (y, x))
        np.testing.assert_array_equal(shift, np.array(DIRECTIONS[label]) * round(CLEAN.travel * (48 - 8)))
    elif label == UPSIDE_DOWN:  # the same place, flipped vertically from the middle on
        assert locate(clip[2], digit) == (y, x) and locate(clip[3], digit[::-1]) == (y, x) == locate(clip[-1], digit[::-1])
    elif label == 4:
        assert locate(clip[-1], digit) == (y, x)


def test_dataset_is_ssv2_layout_and_webm_round_trips(tmp_path):
    config = MovingDigitsConfig(frame=32, frames=4, fragments=1)
    assert write_dataset(str(tmp_path), 12, 6, config, seed=1) == {"train": 12, "validation": 6}
    train, names = data.read_ssv2(str(tmp_path), "train")
    val, _ = data.read_ssv2(str(tmp_path), "validation")
    assert names == [t.replace("[", "").replace("]", "") for t in TEMPLATES]
    assert [s.label for s in train] == [i % 6 for i in range(12)] and len(val) == 6
    entry = json.loads((tmp_path / "train.json").read_text())[0]
    assert entry["template"] == TEMPLATES[0] and entry["label"] == "Pushing a digit from left to right"
    frames = data.read_frames(train[0].path, 4, False, random.Random(0))  # every frame of the real VP9 file
    assert frames.shape == (4, 32, 32, 3) and np.array_equal(frames[..., 0], frames[..., 2])
    # regenerate the first clip from the same seeds: the codec keeps it to a few grey levels
    train_pool, _ = digit_pools(seed=1)
    rng = np.random.default_rng(2)
    expected = render_clip(train_pool[rng.integers(len(train_pool))], 0, train_pool, config, rng)
    assert np.abs(frames[..., 0] / 255 - expected).mean() < 0.02


def test_demo_models_share_network_and_budget():
    uniform = models.build(False, 6, num_frames=2, frame=32, patch=8, tokens_per_frame=4, embed_dim=16, depth=1)
    dart = models.build(True, 6, num_frames=2, frame=32, patch=8, tokens_per_frame=4, embed_dim=16, depth=1)
    clips = torch.randn(2, 3, 2, 32, 32)
    assert uniform.embed(clips[..., :16, :16]).shape == dart.embed(clips).shape == (2, 1 + 8, 16)  # the same budget
    mamba = {k: v.shape for k, v in uniform.state_dict().items() if k.startswith(("layers.", "head", "norm_f"))}
    assert mamba == {k: v.shape for k, v in dart.state_dict().items() if k.startswith(("layers.", "head", "norm_f"))}
    scorer = dart.patch_embed.scorer
    assert not any(p.requires_grad for p in scorer.backbone.parameters())  # frozen: only the gate head learns
    torch.testing.assert_close(scorer.backbone[0].net[0].weight, efficientnet_lite0().conv_stem.weight)  # real ImageNet weights
    assert scorer(torch.randn(2, 3, 2 * 32, 32)).shape == (2, 2 * 4, 4)  # one score per 8x8 cell of each frame
    # the fixed sine-cosine tables: unit amplitude, distinct rows
    for table in (uniform.pos_embed[0, 1:], dart.pos_embed[0, 1:], dart.temporal_pos_embedding[0]):
        assert table.abs().max() <= 1 and torch.cdist(table, table).add(torch.eye(len(table))).min() > 0.1


def test_frame_contrast_is_zero_on_a_plain_frame_and_the_scorer_contrast_scales_logits():
    plain = torch.full((1, 3, 16, 16), 0.7)
    assert FeatureContrast()(plain).abs().max() < 1e-6
    assert models.lite0_stem(4)(plain.expand(2, 3, 16, 16)).abs().max() < 1e-5  # no border shows up either
    torch.manual_seed(0)
    tall = torch.randn(2, 3, 2 * 32, 32)
    one, three = (models.temporal_scorer(2, 32, 8, contrast=c) for c in (1.0, 3.0))
    three.load_state_dict(one.state_dict())
    with torch.no_grad():  # sigmoid(2 c z), z = the clip-standardised raw scores of the gate head
        features = one.features(tall.view(2, 3, 2, 32, 32).transpose(1, 2).reshape(4, 3, 32, 32)).view(2, 2, 16, 4, 4)
        z = standardise(one.head.raw_scores(features).reshape(2, 8, 4))
        torch.testing.assert_close(one(tall), torch.sigmoid(2 * z))
        torch.testing.assert_close(three(tall), torch.sigmoid(6 * z))


def normalised(clip: np.ndarray) -> torch.Tensor:
    """(T, S, S) grey clip in [0, 1] → (1, 3, T·S, S) ImageNet-normalised tall image."""
    frames = torch.tensor(clip)[None].expand(3, -1, -1, -1)
    mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in (data.IMAGENET_MEAN, data.IMAGENET_STD))
    return ((frames - mean) / std).reshape(1, 3, -1, clip.shape[-1])


@pytest.mark.parametrize("appearance_gate, lead", [(models.APPEARANCE_GATE, (0.1, 1.0)), (0.5, (-0.05, 0.05))])
def test_demo_scorer_starts_from_motion(appearance_gate, lead):
    """At initialisation the demo's scorer scores the moving digit's cells above the static
    fragments' (with the appearance gate at ½ it cannot tell them apart): cells are found by
    rendering each clip again with blank fragments (the same random draws)."""
    pool = digit_pools()[0]
    torch.manual_seed(0)
    scorer = models.temporal_scorer(4, 64, 8, contrast=6.0, appearance_gate=appearance_gate)
    config = MovingDigitsConfig(frames=4)

    def ink_cells(clip):  # (T, 64, 64) → (T, 8, 8): an 8x8 cell holds ink
        return torch.tensor(clip - config.background).view(4, 8, 8, 8, 8).amax(dim=(2, 4)) > 0.2

    for label in (0, 1, 2, 3):
        for k in range(3):
            clip = render_clip(pool[k], label, pool, config, np.random.default_rng(k))
            digit = ink_cells(render_clip(pool[k], label, np.zeros_like(pool), config, np.random.default_rng(k)))
            fragments = ink_cells(clip) & ~digit
            with torch.no_grad():
                scores = scorer(normalised(clip)).view(4, 8, 8)
            assert lead[0] < scores[digit].mean() - scores[fragments].mean() < lead[1]


def test_demo_end_to_end_tiny(tmp_path, capsys):
    summary = main(["--out", str(tmp_path), "--train-size", "24", "--val-size", "12", "--frame", "32",
                    "--video-frames", "4", "--num-frames", "2", "--tokens-per-frame", "4", "--embed-dim", "16",
                    "--depth", "1", "--epochs", "1", "--batch-size", "6"])
    results = {r["name"]: r for r in summary["results"]}
    assert set(results) == {"uniform", "DART"}
    assert results["uniform"]["tokens"] == results["DART"]["tokens"] == 8  # the same budget
    assert results["uniform"]["model"] == "videomamba_tiny_patch16_224"
    assert results["DART"]["gflops"] > results["uniform"]["gflops"] > 0  # DART pays for its scorer
    for r in results.values():
        assert r["clips"] == 12 and 0 <= r["top1"] <= 100 and r["clips_per_s"] > 0 and r["train_s"] > 0
    assert json.loads((tmp_path / "results.json").read_text())["results"] == summary["results"]
    with Image.open(tmp_path / "partitions.png") as picture:
        assert picture.height > 2 * 32 * 3  # the two frames stacked, enlarged
    table = capsys.readouterr().out
    assert "uniform" in table and "DART" in table and "top-1" in table
    for run in ("uniform", "dart"):  # trained by the dart-video command: its log and checkpoints
        assert (tmp_path / run / "best.pth").is_file() and (tmp_path / run / "log.jsonl").is_file()
