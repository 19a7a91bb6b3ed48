"""The dart-video command line on a tiny SSv2-layout dataset of real (PyAV-written) webm files."""

import dataclasses
import json
import re

import numpy as np
import pytest
from dart_core.training import load_checkpoint, read_jsonl
from dart_core.visualize import draw_partition, heatmap, partition_overview, to_pil
from dart_video import cli
from dart_video.cli import main
from dart_video.recipes import TrainConfig
from PIL import Image
from test_visualize import caption_boxes
from video_fixtures import ssv2_root, write_webm  # noqa: F401  (fixture)

TINY = ["--model", "videomamba_tiny_dart_patch16_224", "--num-frames", "2", "--img-size", "32", "--num-tokens", "4",
        "--model-kwargs", json.dumps({"depth": 1, "embed_dim": 16, "d_state": 4}), "--device", "cpu"]
FAST = ["--batch-size", "2", "--workers", "0", "--no-progress", "--aa", "none", "--num-sample", "1"]


@pytest.mark.filterwarnings("ignore:cannot decode")
def test_train_resume_eval(ssv2_root, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    common = ["--data", str(ssv2_root), *FAST, *TINY]
    assert main(["train", *common, "--out", str(out), "--epochs", "1", "--max-steps", "1"]) == 0
    epochs = [r for r in read_jsonl(out / "log.jsonl") if r["event"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["epoch"] == 0 and epochs[0]["clips"] == 1
    state = load_checkpoint(out / "last.pth")
    assert state["epoch"] == 1 and "optimizer" in state and (out / "best.pth").is_file()
    assert main(["train", *common, "--out", str(out), "--epochs", "2", "--max-steps", "1",
                 "--resume", str(out / "last.pth")]) == 0
    assert [r["epoch"] for r in read_jsonl(out / "log.jsonl") if r["event"] == "epoch"] == [0, 1]
    capsys.readouterr()
    assert main(["eval", "--data", str(ssv2_root), "--workers", "0", "--no-progress",
                 "--checkpoint", str(out / "last.pth")]) == 0  # model settings from the checkpoint
    result = json.loads(capsys.readouterr().out.strip())
    assert result["clips"] == 1 and 0 <= result["top1"] <= result["top5"] <= 100
    assert result["tokens"] == 4 and result["model"] == "videomamba_tiny_dart_patch16_224"
    # the release's SSv2 test views: 2 temporal clips x 3 spatial crops of the one (wide) validation video
    assert main(["eval", "--data", str(ssv2_root), "--workers", "0", "--no-progress", "--checkpoint",
                 str(out / "last.pth"), "--test-clips", "2", "--test-crops", "3", "--eval-batch-size", "4"]) == 0
    multi = json.loads(capsys.readouterr().out.strip())
    assert (multi["clips"], multi["videos"], multi["views"]) == (6, 1, [2, 3])
    assert multi["top1"] in (0, 100) and multi["top1"] <= multi["top5"]


def test_visualize_writes_the_tall_partition(tmp_path):
    video = tmp_path / "clip.webm"
    write_webm(video, frames=6)
    png = tmp_path / "clip.png"
    assert main(["visualize", str(video), *TINY, "--out", str(png)]) == 0
    with Image.open(png) as picture:
        assert picture.height >= 2 * 32  # two frames stacked


@pytest.mark.filterwarnings("ignore:cannot decode")
def test_errors_are_one_clear_line(ssv2_root, tmp_path, capsys):  # noqa: F811
    assert main(["eval", "--data", str(tmp_path / "nowhere"), *TINY]) == 1
    assert "data folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--data", str(tmp_path / "empty"), *TINY]) == 1
    assert "labels.json" in capsys.readouterr().err
    assert main(["visualize", str(tmp_path / "none.webm"), *TINY]) == 1
    assert "not found" in capsys.readouterr().err
    plain = [a if a != "videomamba_tiny_dart_patch16_224" else "videomamba_tiny_patch16_224" for a in TINY]
    plain = plain[:6] + plain[8:]  # no --num-tokens for a plain model
    video = tmp_path / "clip.webm"
    write_webm(video, frames=4)
    assert main(["visualize", str(video), *plain]) == 1
    assert "no DART tokenizer" in capsys.readouterr().err
    assert main(["visualize", str(video), *plain, "--num-tokens", "4"]) == 1
    assert "--num-tokens only applies to DART models" in capsys.readouterr().err
    assert main(["train", "--data", str(ssv2_root), "--out", str(tmp_path / "run"), *TINY, *FAST,
                 "--resume", str(tmp_path / "no.pth")]) == 1
    assert "no.pth' does not exist" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path), "--config", "videomamba_huge_ssv2_8f"]) == 1
    assert "unknown config 'videomamba_huge_ssv2_8f'" in capsys.readouterr().err


# ---------------------------------------------------------------- help and the 64-pixel picture (user review)


def help_entries(command, capsys):
    """``dart-video COMMAND --help`` as {an entry's option strings: its text, whitespace joined}."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    entries, current = {}, None
    for line in capsys.readouterr().out.splitlines():
        if re.match(r"  \S", line):  # an option or positional; its help continues on deeper lines
            current = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            entries[current] = line.strip()
        elif line.startswith("   ") and current is not None:
            entries[current] += " " + line.strip()
        else:  # usage, a section title or a blank line
            current = None
    return {key: " ".join(text.split()) for key, text in entries.items()}


def flags(entries):
    return {word.rstrip(",") for key in entries for word in key.split() if word.startswith("--")}


def test_visualize_help_lists_only_what_visualize_uses(capsys):
    shown = flags(help_entries("visualize", capsys))
    for used in ("--checkpoint", "--out", "--config", "--model", "--num-frames", "--img-size", "--num-tokens",
                 "--model-kwargs", "--scorer-weights", "--init", "--device"):
        assert used in shown
    for training_only in ("--epochs", "--mixup", "--cutmix", "--lr", "--blr", "--batch-size", "--workers", "--aa",
                          "--drop-path", "--seed", "--test-clips", "--resume", "--data"):
        assert training_only not in shown
    with pytest.raises(SystemExit):
        main(["visualize", "clip.webm", "--epochs", "3"])
    assert "unrecognized arguments: --epochs 3" in capsys.readouterr().err


def test_train_and_eval_help_list_every_setting(capsys):
    every = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)}
    assert every <= flags(help_entries("train", capsys))
    assert every <= flags(help_entries("eval", capsys))


@pytest.mark.parametrize("command", ["train", "eval", "visualize"])
def test_help_states_each_default_once(command, capsys):
    entries = help_entries(command, capsys)
    assert "DART token budget (default 196·T/2)" in entries["--num-tokens NUM_TOKENS"]
    assert "(default 224)" in entries["--img-size IMG_SIZE"]  # defaults the text does not state are still shown
    for text in entries.values():
        assert len(re.findall(r"\bdefault\b", text)) <= 1, f"{command} --help states a default twice: {text!r}"


def test_visualize_picture_of_64_pixel_frames(tmp_path, monkeypatch):
    """The review's case: 64-pixel frames; the captions stay in their own panels' columns and
    the panels are the heat map and partition of the clip, unchanged."""
    video, png = tmp_path / "clip.webm", tmp_path / "clip.png"
    write_webm(video, frames=6)
    drawn = []

    def overview(image, part, **options):
        drawn.append((image, part, options))
        return partition_overview(image, part, **options)

    monkeypatch.setattr(cli, "partition_overview", overview)
    tiny = [a if a != "32" else "64" for a in TINY]
    assert main(["visualize", str(video), *tiny, "--out", str(png)]) == 0
    image, part, options = drawn[0]
    frames = to_pil(image, mean=options["mean"], std=options["std"])
    assert frames.size == (64, 2 * 64)  # two 64-pixel frames stacked
    panels = [heatmap(frames, options["scores"]), draw_partition(frames, part)]
    with Image.open(png) as picture:
        grid = np.asarray(picture.convert("RGB"))
    caption_boxes(grid, [p.size for p in panels])
    for k, panel in enumerate(panels):
        np.testing.assert_array_equal(grid[4:4 + 128, 4 + 68 * k:4 + 68 * k + 64], np.asarray(panel))
