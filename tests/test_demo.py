"""The cluttered-digits demo: its data, its oracle diagnostic and one tiny end-to-end run."""

import json

import numpy as np
import torch
from dart_core.demo.__main__ import main
from dart_core.demo.data import ClutterConfig, load_digits_split, make_canvases, upscale, with_box_mask
from dart_core.demo.models import BoxOracleScorer, FixedGridClassifier, dart_classifier, oracle_classifier
from PIL import Image


def test_canvases_hold_the_labelled_digit_at_its_corner():
    config = ClutterConfig(num_fragments=0, noise=0.0)
    (digits, labels), _ = load_digits_split()
    images, targets, corners = make_canvases(digits, labels, 5, config, seed=3)
    assert images.shape == (5, 1, 64, 64) and images.min() >= 0 and images.max() <= 1
    for image, target, (y, x) in zip(images, targets, corners.tolist(), strict=True):
        crop = image[0, y:y + 16, x:x + 16].numpy()
        # Without clutter the canvas is exactly one upscaled real digit of the right class.
        matches = [i for i in np.flatnonzero(labels == target.item()) if np.allclose(upscale(digits[i], 2), crop, atol=1e-6)]
        assert matches
        assert image.sum() == torch.from_numpy(crop).sum()


def test_train_and_test_digits_are_disjoint_handwriting():
    (train, _), (test, _) = load_digits_split()
    assert not {d.tobytes() for d in train} & {d.tobytes() for d in test}


def test_box_mask_and_oracle_scores():
    images = torch.zeros(1, 1, 64, 64)
    masked = with_box_mask(images, torch.tensor([[8, 24]]), 16)
    assert masked[0, 1].sum() == 256 and masked[0, 1, 8:24, 24:40].all()
    scores = BoxOracleScorer(grid=8)(masked)
    expected = torch.full((8, 8), 0.1)
    expected[1:3, 3:5] = 1.1  # the box covers cells (1..2, 3..4) of the 8-px grid exactly
    torch.testing.assert_close(scores[0], expected)


def test_models_share_the_token_budget_and_oracle_ignores_the_mask_channel():
    fixed = FixedGridClassifier(64, 4, 4)
    dart = dart_classifier(64, 8, 16, 4, scorer="cnn")
    assert fixed.vit.patch_embed.num_patches == 16 and dart.patch_embed.num_tokens == 16
    oracle = oracle_classifier(64, 8, 16, 4)
    images = with_box_mask(torch.rand(2, 1, 64, 64), torch.tensor([[0, 0], [40, 40]]), 16)
    oracle(images).sum().backward()
    weight = oracle.patch_embed.proj.weight
    assert torch.all(weight[:, 1] == 0) and torch.all(weight.grad[:, 1] == 0) and weight.grad[:, 0].abs().sum() > 0


def test_demo_runs_end_to_end(tmp_path, capsys):
    summary = main(["--out", str(tmp_path), "--train-size", "64", "--test-size", "32", "--epochs", "1",
                    "--scorer", "cnn", "--threads", "1", "--contrast", "4"])
    table = capsys.readouterr().out
    assert "contrast 4" in table
    names = ["fixed grid", "DART", "DART, oracle"]
    for name in names:
        assert name in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in saved["results"]] == names
    assert all(r["tokens"] == 16 and 0 <= r["accuracy"] <= 1 and r["mflops"] > 0 for r in saved["results"])
    for path in summary["pictures"]:
        assert Image.open(path).size[0] > 200
    assert (tmp_path / "log.jsonl").read_text().count("\n") == len(names)


def test_default_scorer_starts_from_where_something_stands_out():
    """At initialisation (random head) the v2 head on frame-relative Lite0 features already scores
    the digit's cells above the empty canvas: the prior DART's partition starts from."""
    torch.manual_seed(0)
    model = dart_classifier(64, 8, 16, 4)
    scorer = model.patch_embed.scorer
    assert scorer.version == "v2" and not any(p.requires_grad for p in scorer.backbone.parameters())
    (digits, labels), _ = load_digits_split()
    images, _, corners = make_canvases(digits, labels, 8, ClutterConfig(num_fragments=0, noise=0.0), seed=5)
    with torch.no_grad():
        scores = scorer(images)
    inside = with_box_mask(images, corners, 16)[:, 1:]
    box = torch.nn.functional.adaptive_avg_pool2d(inside, 8)[:, 0] > 0.5
    for s, b in zip(scores, box, strict=True):
        assert s[b].mean() > 2 * s[~b].mean()
