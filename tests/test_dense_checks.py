"""dart_dense input and checkpoint checks: strict loading for evaluation, unreadable checkpoints,
malformed COCO files, and sizes given as Python sequences."""

import glob
import json
import os

import dart_dense  # noqa: F401  (registers the mmengine modules)
import numpy as np
import pytest
import test_dense_seg
import torch
from mmengine.registry import MODELS
from PIL import Image
from test_dense_seg import tiny_options, train_dense
from test_dense_support import single_thread  # noqa: F401  (autouse fixture)

seg_root = test_dense_seg.seg_root  # the module-scoped ADE20K-style folder fixture


def tiny_seg_state(seg_root, tmp_path):
    """The state dict of the tiny segmentation config's model."""
    cfg = train_dense.build_config(train_dense.parse_args(tiny_options(seg_root, str(tmp_path / "work"), 2)))
    return MODELS.build(cfg.model).state_dict()


def test_evaluation_loads_the_checkpoint_strictly(seg_root, tmp_path, capsys):
    state = tiny_seg_state(seg_root, tmp_path)
    head = [key for key in state if key.startswith("head.")]
    assert head
    partial = {key: value for key, value in state.items() if key not in head}
    partial["bogus.weight"] = torch.zeros(3)
    path = str(tmp_path / "partial.pth")
    torch.save({"state_dict": partial}, path)
    options = tiny_options(seg_root, str(tmp_path / "eval"), 2)
    for mode in ("--val", "--test"):
        with pytest.raises(train_dense.UsageError, match="does not fit the config's model") as error:
            train_dense.main(options + [mode, "--load-from", path])
        assert path in str(error.value) and "bogus.weight" in str(error.value)
        assert all(key in str(error.value) for key in head if "num_batches_tracked" not in key)
    with pytest.raises(train_dense.UsageError, match="pass --load-from"):
        train_dense.main(options + ["--val"])
    # Training only initialises from it, and names the keys it skipped.
    train_dense.main(tiny_options(seg_root, str(tmp_path / "train"), 1) + ["--load-from", path])
    printed = capsys.readouterr().out
    assert "bogus.weight" in printed and all(key in printed for key in head if "num_batches_tracked" not in key)
    # The full state dict fits exactly and evaluates with its own weights: a classifier with zero
    # weights and a larger "thing" bias predicts "thing" on every pixel, so the metrics follow from
    # the validation labels alone.
    state["head.head.4.weight"] = torch.zeros_like(state["head.head.4.weight"])
    state["head.head.4.bias"] = torch.tensor([0.0, 10.0])
    torch.save({"state_dict": state}, path)
    metrics = train_dense.main(options + ["--val", "--load-from", path])
    stuff, thing = validation_label_counts(seg_root)
    assert stuff > 0 and thing > 0
    assert metrics["seg/aAcc"] == pytest.approx(100 * thing / (stuff + thing))
    assert metrics["seg/mIoU"] == pytest.approx(100 * thing / (stuff + thing) / 2)  # IoU: 0 for stuff
    assert metrics["seg/mAcc"] == pytest.approx(50)


def validation_label_counts(root) -> tuple[int, int]:
    """Pixels of "stuff" (file value 1) and "thing" (2) in the validation label maps (0 is ignored)."""
    values = np.concatenate([np.asarray(Image.open(path)).ravel()
                             for path in glob.glob(os.path.join(root, "annotations", "validation", "*.png"))])
    return int((values == 1).sum()), int((values == 2).sum())


def test_loader_tells_a_truncated_file_from_an_unsafe_one(tmp_path):
    from dart_dense.checkpoint import load_local_checkpoint
    whole = tmp_path / "whole.pth"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}}, whole)
    truncated, empty, text = tmp_path / "truncated.pth", tmp_path / "empty.pth", tmp_path / "text.pth"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    empty.write_bytes(b"")
    text.write_text("not a checkpoint\n")
    for path in (truncated, empty, text):
        with pytest.raises(ValueError, match="not a readable torch.save file") as error:
            load_local_checkpoint(str(path))
        assert str(path) in str(error.value) and "run code" not in str(error.value)
    torch.testing.assert_close(load_local_checkpoint(str(whole))["state_dict"]["w"], torch.arange(1000.0))


COCO_IMAGE = {"id": 1, "file_name": "a.jpg", "width": 30, "height": 20}
COCO_ANN = {"id": 4, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]}


@pytest.mark.parametrize("content, message", [
    ('{"images": [', r"is not valid JSON \(Expecting value: line 1 column 13"),
    ("[1, 2]", "holds a JSON list; a COCO file is an object"),
    ({"images": [{"id": 1, "file_name": "a.jpg", "height": 20}]}, r"image 1 has no 'width'"),
    ({"annotations": [{"id": 4, "image_id": 1, "category_id": 5}]}, r"annotation 4 has no 'bbox'"),
    ({"annotations": [dict(COCO_ANN, bbox=[1, 1, 5])]}, r"annotation 4 has bbox \[1, 1, 5\]"),
    ({"categories": [{"id": 5}]}, r"category 5 has no 'name'"),
    ({"annotations": [dict(COCO_ANN, image_id=99)]}, r"1 annotation\(s\) \(ids \[4\]\) refer to image ids not in"),
])
def test_malformed_coco_files_are_named(tmp_path, content, message):
    from dart_dense.det_data import CocoDetDataset
    if isinstance(content, dict):
        content = json.dumps({"images": [COCO_IMAGE], "categories": [{"id": 5, "name": "x"}], "annotations": [COCO_ANN],
                              **content})
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        CocoDetDataset(str(path), str(tmp_path))
    assert str(path) in str(error.value)


def test_grid_warp_accepts_sizes_as_python_sequences():
    from dart_dense import GridWarp
    scores = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0)) + 0.1
    sizes = [[48, 64], [30, 40]]
    from_list = GridWarp.from_scores(scores, sizes, (2, 3), 8)
    from_tensor = GridWarp.from_scores(scores, torch.tensor(sizes), (2, 3), 8)
    for name in ("row_edges", "col_edges", "image_sizes"):
        torch.testing.assert_close(getattr(from_list, name), getattr(from_tensor, name))
    torch.testing.assert_close(GridWarp.uniform(((48, 64),), (2, 3), 8).image_sizes,
                               torch.tensor([[48.0, 64.0]], dtype=torch.float64))
    with pytest.raises(TypeError, match="image_sizes must be a"):
        GridWarp.from_scores(scores, [["a", "b"]], (2, 3), 8)
    with pytest.raises(ValueError, match=r"must be \(B, 2\) rows"):
        GridWarp.from_scores(scores, [48, 64], (2, 3), 8)


def test_random_frozen_scorer_is_flagged_until_a_checkpoint_loads(seg_root, tmp_path):
    """The configs' scorer (weights=None) reaches dart_core's random-backbone warning, and loading a
    dense checkpoint through mmengine's loader (--load-from / --resume) clears it."""
    import warnings

    from dart_core.scorers import RANDOM_INIT_ATTR, warn_if_random_frozen_backbone
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    cfg = train_dense.build_config(train_dense.parse_args(tiny_options(seg_root, str(tmp_path / "work"), 2)))
    trained = MODELS.build(cfg.model)

    def random(model):
        return any(getattr(m, RANDOM_INIT_ATTR, False) for m in model.warp.scorer.backbone.modules())

    assert random(trained)
    fresh = MODELS.build(cfg.model)
    _load_checkpoint_to_model(fresh, {"state_dict": trained.state_dict()})
    assert not random(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_random_frozen_backbone(fresh.warp.scorer.backbone)


def test_a_backbone_weights_file_is_read_by_dart_and_must_cover_the_backbone(tmp_path):
    """TimmFeatures reads ``weights`` with DART's weights-only loader and refuses a file that leaves
    backbone layers at their initialisation (timm alone loads features models non-strictly)."""
    import timm
    from dart_core.checkpoint import CheckpointMismatchError
    from dart_dense.backbone import TimmFeatures

    torch.manual_seed(1)
    state = timm.create_model("resnet10t").state_dict()
    path = tmp_path / "resnet10t.pth"
    torch.save(state, path)
    torch.manual_seed(2)
    backbone = TimmFeatures("resnet10t", out_indices=(1, 2), weights=path)
    own = backbone.net.state_dict()
    assert own and all(torch.equal(value, state[key]) for key, value in own.items())
    assert backbone.channels == [64, 128] and backbone.strides == [4, 8]
    torch.save({key: value for key, value in state.items() if not key.startswith("layer2.")}, path)
    with pytest.raises(CheckpointMismatchError, match="layer2.0.conv1.weight"):
        TimmFeatures("resnet10t", out_indices=(1, 2), weights=path)


class Untrusted:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_user_errors_are_one_line_on_the_command_line(seg_root, tmp_path, monkeypatch, capsys):
    import sys

    options = tiny_options(seg_root, str(tmp_path / "work"), 1)
    torch.save({"state_dict": {}, "extra": Untrusted()}, tmp_path / "evil.pth")
    cases = [
        (["no_such_config.py"], "config file not found: no_such_config.py"),
        ([*options, "--test"], "--val/--test evaluate a checkpoint: pass --load-from"),
        ([*options, "--test", "--load-from", str(tmp_path / "evil.pth")], "is not a weights-only checkpoint"),
        ([*options, "--load-from", str(tmp_path / "nope.pth")], "nope.pth can not be found"),
        ([*options, "model.warp.gird=(4,4)"], "the config does not build: "),
    ]
    for argv, message in cases:
        monkeypatch.setattr(sys, "argv", ["train_dense.py", *argv])
        with pytest.raises(SystemExit) as exit_info:
            train_dense.cli()
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 1 and err[-1].startswith("train_dense: error: "), (argv, err[-3:])
        assert message in err[-1] and not any(line.startswith("Traceback") for line in err), (argv, err[-3:])
