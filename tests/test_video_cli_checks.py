"""dart-video's handling of reviewer-reported misuse: class order in checkpoints, resuming with a
longer schedule, output folders, stored weight files, bad annotations and configs, frame sizes."""

import dataclasses
import json
import shutil

import pytest
import timm
import torch
from dart_core.training import load_checkpoint, read_jsonl, save_checkpoint
from dart_video import data
from dart_video.cli import CommandError, run
from dart_video.recipes import ConfigError, preset_values
from video_fixtures import write_webm

TEMPLATES = ["Pushing [something] from left to right", "Pushing [something] from right to left", "Holding [something]"]
TINY = ["--model", "videomamba_tiny_dart_patch16_224", "--num-frames", "2", "--img-size", "32", "--num-tokens", "4",
        "--model-kwargs", json.dumps({"depth": 1, "embed_dim": 16, "d_state": 4}), "--device", "cpu"]
FAST = ["--batch-size", "2", "--workers", "0", "--no-progress", "--aa", "none", "--num-sample", "1", "--mixup", "0",
        "--cutmix", "0", "--threads", "1", "--deterministic"]
EVAL = ["--workers", "0", "--no-progress", "--device", "cpu", "--threads", "1"]


def write_ssv2(root, labels=None, val=None):
    """Three classes, three training and three validation clips (one per class)."""
    root.mkdir(exist_ok=True)
    labels = labels or {data.ssv2_class_name(t): str(i) for i, t in enumerate(TEMPLATES)}
    (root / "labels.json").write_text(json.dumps(labels))
    videos = root / "videos"
    videos.mkdir(exist_ok=True)
    train = [{"id": str(100 + i), "template": t} for i, t in enumerate(TEMPLATES)]
    val = val if val is not None else [{"id": str(200 + i), "template": t} for i, t in enumerate(TEMPLATES)]
    (root / "train.json").write_text(json.dumps(train))
    (root / "validation.json").write_text(json.dumps(val))
    for i, entry in enumerate(train + [v for v in val if isinstance(v, dict) and "id" in v]):
        write_webm(videos / f"{entry['id']}.webm", frames=4, level=lambda k, i=i: 30 * i + 10 * k)
    return root


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    return write_ssv2(tmp_path_factory.mktemp("ssv2"))


@pytest.fixture(scope="module")
def trained(ssv2, tmp_path_factory):
    """A one-epoch run of two steps (lr 0.1, no warm-up, cosine to 0), written with --overwrite
    over another run's last.pth."""
    out = tmp_path_factory.mktemp("run")
    (out / "last.pth").write_bytes(b"another run")
    run(["train", "--data", str(ssv2), "--out", str(out), *TINY, *FAST, "--epochs", "1", "--max-steps", "2", "--num-sample", "2",
         "--warmup-epochs", "0", "--lr", "0.1", "--min-blr", "0", "--layer-decay", "1", "--log-interval", "1",
         "--overwrite"])
    return out


def evaluate(root, checkpoint, *extra):
    return run(["eval", "--data", str(root), "--checkpoint", str(checkpoint), *EVAL, *extra])


# ---------------------------------------------------------------- 1, 6: classes of a checkpoint


def test_eval_matches_classes_by_name(ssv2, trained, tmp_path):
    reference = evaluate(ssv2, trained / "last.pth")
    renumbered = write_ssv2(tmp_path / "renumbered",
                            labels={data.ssv2_class_name(t): str(2 - i) for i, t in enumerate(TEMPLATES)})
    result = evaluate(renumbered, trained / "last.pth")
    for key in ("top1", "top5", "loss", "videos"):
        assert result[key] == pytest.approx(reference[key]), key
    other = write_ssv2(tmp_path / "other", labels={"Holding something": "0", "Dropping something": "1",
                                                   "Pushing something from left to right": "2"},
                       val=[{"id": "300", "template": "Holding [something]"}])
    with pytest.raises(CommandError, match="trained on other classes.*Dropping something"):
        evaluate(other, trained / "last.pth")


def test_list_format_eval_takes_the_class_count_from_the_checkpoint(ssv2, tmp_path):
    videos = sorted((ssv2 / "videos").glob("*.webm"))
    (tmp_path / "train.txt").write_text("".join(f"{v.name} {i % 3}\n" for i, v in enumerate(videos)))
    (tmp_path / "val.txt").write_text(f"{videos[0].name} 0\n{videos[1].name} 1\n")  # class 2 absent
    lists = ["--format", "list", "--train-list", str(tmp_path / "train.txt"), "--val-list", str(tmp_path / "val.txt")]
    out = tmp_path / "run"
    run(["train", "--data", str(ssv2 / "videos"), "--out", str(out), *TINY, *FAST, *lists, "--epochs", "1",
         "--max-steps", "1"])
    result = evaluate(ssv2 / "videos", out / "last.pth")
    assert result["videos"] == 2
    (tmp_path / "bad.txt").write_text(f"{videos[0].name} 3\n")
    with pytest.raises(CommandError, match=r"bad.txt:1: label 3 is not a class index 0 \.\. 2"):
        evaluate(ssv2 / "videos", out / "last.pth", "--val-list", str(tmp_path / "bad.txt"))


# ---------------------------------------------------------------- 2: resume with a longer schedule


def test_resume_with_more_epochs_rebuilds_the_schedule(ssv2, trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    run(["train", "--data", str(ssv2), "--out", str(out), *TINY, *FAST, "--epochs", "2", "--max-steps", "2", "--num-sample", "2",
         "--warmup-epochs", "0", "--lr", "0.1", "--min-blr", "0", "--layer-decay", "1", "--log-interval", "1",
         "--resume", "auto"])
    log = read_jsonl(out / "log.jsonl")
    lrs = {r["global_step"]: r["lr"] for r in log if r["event"] == "train"}
    # the first run: cosine over 2 steps; resumed: over 2 x 2 steps, step t (from 0) at 0.05 (1 + cos(pi t / 4))
    assert lrs == pytest.approx({1: 0.1, 2: 0.05, 3: 0.05, 4: 0.05 * (1 - 2**-0.5)})
    assert [r["lr"] for r in log if r["event"] == "start"] == [0.1, 0.1]
    assert load_checkpoint(out / "last.pth")["scheduler"]["t_initial"] == 4


# ---------------------------------------------------------------- 3, 15: output folder


def test_train_refuses_to_overwrite_another_run(ssv2, trained, tmp_path):
    before = (trained / "last.pth").read_bytes()
    with pytest.raises(CommandError, match="already holds last.pth and best.pth.*--resume auto.*--overwrite"):
        run(["train", "--data", str(ssv2), "--out", str(trained), *TINY, *FAST, "--epochs", "1"])
    assert (trained / "last.pth").read_bytes() == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CommandError, match="afile is a file"):
        run(["train", "--data", str(ssv2), "--out", str(tmp_path / "afile"), *TINY, *FAST, "--epochs", "1"])


# ---------------------------------------------------------------- 5, 9: eval and visualize of a checkpoint


def test_eval_and_visualize_ignore_the_run_s_weight_files(ssv2, trained, tmp_path):
    ckpt = load_checkpoint(trained / "last.pth")
    gone = str(tmp_path / "moved_away.pth")
    ckpt["config"].update(init=gone, init_image=True, scorer_weights=gone)
    save_checkpoint(ckpt, tmp_path / "moved.pth")
    assert evaluate(ssv2, tmp_path / "moved.pth")["videos"] == 3
    png = tmp_path / "clip.png"
    run(["visualize", str(ssv2 / "videos" / "200.webm"), "--checkpoint", str(tmp_path / "moved.pth"), "--out", str(png)])
    assert png.is_file()


class Untrusted:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_a_checkpoint_that_would_run_code_is_refused_in_command_line_terms(ssv2, tmp_path):
    """The library's advice (``extra_safe_globals``) is no use on a command line."""
    torch.save({"model": {}, "extra": Untrusted()}, tmp_path / "evil.pth")
    with pytest.raises(CommandError) as info:
        evaluate(ssv2, tmp_path / "evil.pth")
    assert "holds builtins.print; dart-video loads checkpoints weights-only" in str(info.value)
    assert "Re-save it with plain tensors" in str(info.value) and "extra_safe_globals" not in str(info.value)


def test_visualize_reports_a_mismatched_checkpoint(ssv2, trained, tmp_path):
    with pytest.raises(CommandError, match="does not fit the model"):
        run(["visualize", str(ssv2 / "videos" / "200.webm"), "--checkpoint", str(trained / "last.pth"),
             "--model-kwargs", json.dumps({"depth": 1, "embed_dim": 24, "d_state": 4}), "--out", str(tmp_path / "x.png")])


# ---------------------------------------------------------------- 7, 8: annotations


def test_bad_ssv2_annotations_name_the_file_and_entry(tmp_path):
    root = write_ssv2(tmp_path / "ssv2")
    (root / "labels.json").write_text("{not json")
    with pytest.raises(ValueError, match="labels.json is not valid JSON"):
        data.read_ssv2(str(root), "train")
    (root / "labels.json").write_text(json.dumps({"Holding something": "0", "Pushing something from left to right": "5",
                                                  "Pushing something from right to left": "1"}))
    with pytest.raises(ValueError, match="labels.json: class 'Pushing something from left to right' has index '5'"):
        data.read_ssv2(str(root), "train")
    (root / "labels.json").write_text(json.dumps({"Holding something": "0", "Pushing something": "0"}))
    with pytest.raises(ValueError, match="share the index 0"):
        data.read_ssv2(str(root), "train")
    write_ssv2(root, val=[{"id": "200", "template": TEMPLATES[0]}, {"id": "201"}])
    with pytest.raises(ValueError, match=r"validation.json: entry 1 \(\{'id': '201'\}\) needs an 'id' and a 'template'"):
        data.read_ssv2(str(root), "validation")
    (root / "validation.json").write_text("[]")
    with pytest.raises(ValueError, match="validation.json lists no clips"):
        data.read_ssv2(str(root), "validation")
    with pytest.raises(CommandError, match="validation.json lists no clips"):
        run(["eval", "--data", str(root), *TINY, *EVAL])


def test_list_file_labels_are_class_indices(tmp_path):
    lines = {"neg.txt": "a.webm 0\nb.webm -1\n", "big.txt": "a.webm 0\nb.webm 2\n", "empty.txt": "\n"}
    for name, text in lines.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match="neg.txt:2: label -1 is not a class index"):
        data.read_list_file(str(tmp_path / "neg.txt"))
    with pytest.raises(ValueError, match=r"big.txt:2: label 2 is not a class index 0 \.\. 1"):
        data.read_list_file(str(tmp_path / "big.txt"), num_classes=2)
    with pytest.raises(ValueError, match="empty.txt lists no videos"):
        data.read_list_file(str(tmp_path / "empty.txt"))
    with pytest.raises(CommandError, match="big.txt:2: label 2"):
        run(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *TINY, *FAST, "--format", "list",
             "--train-list", str(tmp_path / "big.txt"), "--val-list", str(tmp_path / "big.txt"), "--num-classes", "2"])


# ---------------------------------------------------------------- 13, 14: settings


def test_config_values_are_type_checked(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("num_frames: four\n")
    with pytest.raises(ConfigError, match="num_frames is 'four', expected int"):
        preset_values(str(recipe))
    recipe.write_text("lr: 1e-3\nepochs: 3\nblr: 1\nclip_grad: null\nmodel_kwargs: {depth: 2}\n")
    assert preset_values(str(recipe)) == {"lr": 1e-3, "epochs": 3, "blr": 1.0, "clip_grad": None,
                                          "model_kwargs": {"depth": 2}}
    for bad in ("epochs: 2.5", "batch_size: true", "model_kwargs: 3", "epochs: null", "deterministic: 1"):
        recipe.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=bad.split(":")[0] + " is"):
            preset_values(str(recipe))
    recipe.write_text("epochs: [2\n")
    with pytest.raises(ConfigError, match="is not valid YAML: .* line 2, column 1"):
        preset_values(str(recipe))


def test_mixup_needs_an_even_batch(ssv2, tmp_path):
    with pytest.raises(CommandError, match="--batch-size must be even, got 1"):
        run(["train", "--data", str(ssv2), "--out", str(tmp_path / "run"), *TINY, "--batch-size", "1", "--mixup", "0.8"])


# ---------------------------------------------------------------- 4: frame size


@pytest.mark.parametrize("name", ["videomamba_tiny_patch16_224", "videomamba_tiny_dart_patch16_224"])
@pytest.mark.parametrize("size", [(79, 70), (48, 64)])
def test_models_check_the_frame_size(name, size):
    model = timm.create_model(name, num_frames=2, img_size=64, depth=1, embed_dim=16, d_state=4, num_classes=3)
    assert model(torch.zeros(1, 3, 2, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match=rf"frames of {size[0]}x{size[1]} \(H x W\).*64x64 frames"):
        model(torch.zeros(1, 3, 2, *size))


@pytest.mark.parametrize("model_kwargs, message", [
    ({"num_frames": 4}, "cannot set 'num_frames', which --num-frames sets: use --num-frames alone"),
    ({"num_classes": 4}, "cannot set 'num_classes': it comes from the data"),
    ({"dpeth": 1}, "--model-kwargs: 'videomamba_tiny_dart_patch16_224' takes no argument 'dpeth'"),
])
def test_model_kwargs_mistakes_are_named(model_kwargs, message):
    """Was: a raw TypeError traceback ("got multiple values for keyword argument 'num_frames'",
    "unexpected keyword argument 'dpeth'")."""
    from dart_video.engine import TrainingError, build_model
    from dart_video.recipes import TrainConfig

    shape = {"depth": 1, "embed_dim": 16, "d_state": 4}
    config = TrainConfig(model="videomamba_tiny_dart_patch16_224", num_frames=2, img_size=32, num_tokens=4,
                         model_kwargs={**shape, **model_kwargs})
    with pytest.raises(TrainingError, match=message):
        build_model(config, num_classes=3)
    assert build_model(dataclasses.replace(config, model_kwargs=shape), num_classes=3).head.out_features == 3
