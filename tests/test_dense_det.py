"""dart_dense detection: COCO-format data and its bad input, the COCO metric on known answers, ground truth
warped forward and predictions warped back, and the real config trained / resumed / evaluated on the CPU."""

import glob
import json
import os
import os.path as osp
import sys

import dart_dense  # noqa: F401  (registers the mmengine modules)
import numpy as np
import pytest
import torch
from dart_dense.det_data import CocoDetDataset
from dart_dense.det_metric import CocoBoxMetric
from mmengine.config import Config
from mmengine.registry import MODELS
from PIL import Image

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, "tools"))
import train_dense  # noqa: E402
from test_dense_support import single_thread  # noqa: E402, F401  (autouse fixture)

CONFIG = osp.join(ROOT, "packages/dart-dense/configs/det_fcos_resnet50_coco_dart.py")
# (height, width), then boxes as (category id, x, y, w, h); category ids 3 and 7 are not contiguous.
IMAGES = [
    ((48, 64), [(3, 5, 6, 14, 12), (7, 40, 20, 16, 18)]),
    ((56, 56), [(7, 10, 30, 20, 16)]),
    ((40, 72), [(3, 50, 4, 15, 15), (3, 8, 20, 12, 14)]),
    ((52, 60), []),
]
COLOURS = {3: (240, 240, 240), 7: (220, 30, 30)}


def write_coco(root, images=IMAGES, extra_anns=()):
    os.makedirs(osp.join(root, "img"), exist_ok=True)
    doc = dict(images=[], annotations=[], categories=[dict(id=3, name="white"), dict(id=7, name="red")])
    rng = np.random.default_rng(0)
    for index, ((h, w), boxes) in enumerate(images):
        pixels = (rng.random((h, w, 3)) * 50).astype(np.uint8)
        for cat, x, y, bw, bh in boxes:
            pixels[y : y + bh, x : x + bw] = COLOURS[cat]
            doc["annotations"].append(dict(id=len(doc["annotations"]) + 1, image_id=index + 1, category_id=cat,
                                           bbox=[x, y, bw, bh], area=bw * bh, iscrowd=0))
        Image.fromarray(pixels).save(osp.join(root, "img", f"{index}.png"))
        doc["images"].append(dict(id=index + 1, file_name=f"{index}.png", height=h, width=w))
    for ann in extra_anns:
        doc["annotations"].append(dict(ann, id=len(doc["annotations"]) + 1))
    path = osp.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco"))
    write_coco(root)
    return root


def test_dataset_reads_boxes_labels_and_flips(tmp_path):
    ann = write_coco(str(tmp_path), extra_anns=[
        dict(image_id=1, category_id=7, bbox=[58, 40, 10, 12], area=120, iscrowd=0),  # sticks out: clipped
        dict(image_id=1, category_id=3, bbox=[0, 0, 30, 30], area=900, iscrowd=1),  # crowd: not a target
    ])
    data = CocoDetDataset(ann, str(tmp_path / "img"))
    sample = data[0]["data_samples"]
    torch.testing.assert_close(sample["gt_boxes"], torch.tensor([[5, 6, 19, 18], [40, 20, 56, 38], [58, 40, 64, 48]],
                                                                dtype=torch.float32))
    assert sample["gt_labels"].tolist() == [0, 1, 1] and sample["img_shape"] == (48, 64)
    assert data.metainfo["classes"] == ("white", "red")
    assert data[3]["data_samples"]["gt_boxes"].shape == (0, 4)  # negatives are kept
    flipped = CocoDetDataset(ann, str(tmp_path / "img"), flip_prob=1.0)[0]
    torch.testing.assert_close(flipped["data_samples"]["gt_boxes"][0], torch.tensor([45.0, 6, 59, 18]))
    torch.testing.assert_close(flipped["inputs"], data[0]["inputs"].flip(-1))


def test_dataset_bad_input_is_named(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        CocoDetDataset(str(empty), str(tmp_path))
    empty.write_text(json.dumps(dict(images=[], annotations=[], categories=[dict(id=1, name="a")])))
    with pytest.raises(ValueError, match="has no 'images'"):
        CocoDetDataset(str(empty), str(tmp_path))
    ann = write_coco(str(tmp_path), extra_anns=[dict(image_id=2, category_id=3, bbox=[70, 5, 10, 10], area=100)])
    with pytest.raises(ValueError, match=r"annotation 6 of image 2 \(1.png, 56×56\) has bbox \[70, 5, 10, 10\] with no area inside"):
        CocoDetDataset(ann, str(tmp_path / "img"))
    skipped = CocoDetDataset(ann, str(tmp_path / "img"), invalid_boxes="skip")[1]["data_samples"]
    assert len(skipped["gt_boxes"]) == 1  # the valid box of image 2 stays, the invalid one is skipped with a warning
    ann = write_coco(str(tmp_path))
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "img" / "1.png")
    with pytest.raises(ValueError, match="is 10×10 but"):
        CocoDetDataset(ann, str(tmp_path / "img"))[1]


def test_coco_metric_known_answers(coco_root):
    data = CocoDetDataset(osp.join(coco_root, "ann.json"), osp.join(coco_root, "img"))

    def run(shift, keep=True):
        metric = CocoBoxMetric(osp.join(coco_root, "ann.json"))
        for i in range(len(data)):
            s = data[i]["data_samples"]
            boxes = s["gt_boxes"] + shift
            metric.process(None, [dict(img_id=s["img_id"], pred_boxes=boxes if keep else boxes[:0],
                                       pred_scores=torch.ones(len(boxes) if keep else 0),
                                       pred_labels=s["gt_labels"] if keep else s["gt_labels"][:0])])
        return metric.compute_metrics(metric.results)

    assert run(0.0)["mAP"] == pytest.approx(100.0)
    assert run(30.0)["mAP"] == pytest.approx(0.0)
    assert run(0.0, keep=False)["mAP"] == 0.0


def tiny_model(head="fcos", scorer=True, grid=(4, 4)):
    torch.manual_seed(0)
    return MODELS.build(dict(
        type="DartDetector", num_classes=2, head=head, fpn_channels=32,
        backbone=dict(name="mobilenetv3_small_050", out_indices=(2, 3, 4)),
        warp=dict(grid=grid, cell_size=16, score_input_size=(64, 64),
                  scorer=dict(backbone="mobilenetv3_small_050", stage=2, grid_size=(4, 4)) if scorer else None),
    ))


def batch_of(data, indices):
    samples = [data[i] for i in indices]
    return dict(inputs=[s["inputs"] for s in samples], data_samples=[s["data_samples"] for s in samples])


@pytest.mark.parametrize("head,loss_names", [("fcos", {"loss_cls", "loss_bbox", "loss_ctrness"}),
                                             ("retinanet", {"loss_cls", "loss_bbox"})])
def test_ground_truth_is_warped_forward_and_the_loss_trains_the_scorer(coco_root, head, loss_names):
    data = CocoDetDataset(osp.join(coco_root, "ann.json"), osp.join(coco_root, "img"))
    model = tiny_model(head)
    batch = model.data_preprocessor(batch_of(data, [0, 2, 3]), True)
    model.train()
    seen = {}
    inner = model.detector.forward
    model.detector.forward = lambda images, targets=None: seen.setdefault("targets", targets) and inner(images, targets)
    losses = model(**batch, mode="loss")
    assert set(losses) == loss_names and all(bool(torch.isfinite(v)) for v in losses.values())
    sum(losses.values()).backward()
    assert model.warp.scorer.head.mlp.fc1.weight.grad.abs().sum() > 0
    _, warp = model.warp(batch["inputs"], torch.tensor([[48, 64], [40, 72], [52, 60]]))
    for i, target in enumerate(seen["targets"]):
        gt = batch["data_samples"][i]["gt_boxes"]
        want = warp.select(i).boxes_to_warped(gt[None].double())[0].float()
        torch.testing.assert_close(target["boxes"], want, rtol=0, atol=1e-4)
        assert bool((target["boxes"] >= 0).all() and (target["boxes"] <= 64).all())


@pytest.mark.parametrize("head", ["fcos", "retinanet"])
def test_predictions_are_warped_back_onto_the_objects(coco_root, head):
    """A detector that finds each object on the warped image reports it where it is in the original image."""
    data = CocoDetDataset(osp.join(coco_root, "ann.json"), osp.join(coco_root, "img"))
    model = tiny_model(head).eval()
    raw = batch_of(data, [0, 1, 2])
    batch = model.data_preprocessor(raw, False)
    _, warp = model.warp(batch["inputs"], torch.tensor([[48, 64], [56, 56], [40, 72]]))
    samples = batch["data_samples"]
    perfect = [dict(boxes=warp.select(i).boxes_to_warped(s["gt_boxes"][None].double())[0].float(),
                    scores=torch.ones(len(s["gt_boxes"])), labels=s["gt_labels"]) for i, s in enumerate(samples)]
    real = model.val_step(raw)  # the untrained detector runs end to end
    assert all(o["pred_boxes"].shape[-1] == 4 and len(o["pred_scores"]) == len(o["pred_boxes"]) for o in real)
    model.detector.forward = lambda images, targets=None: perfect
    out = model.val_step(raw)
    for o, s in zip(out, samples, strict=True):
        torch.testing.assert_close(o["pred_boxes"], s["gt_boxes"], rtol=0, atol=1e-3)
        assert o["pred_labels"].tolist() == s["gt_labels"].tolist()


def test_detector_transform_keeps_a_non_square_warped_image():
    """The warp already made the detector's input size: torchvision's resize-and-normalise step must be
    the identity on a (32, 64) warped canvas, not shrink it to fit a square size range."""
    model = tiny_model(scorer=False, grid=(2, 4)).eval()
    warped = torch.randn(2, 3, 32, 64)
    images, _ = model.detector.transform(list(warped))
    assert images.tensors.shape[-2:] == (32, 64)
    torch.testing.assert_close(images.tensors, warped)


def tiny_options(root, work_dir, iters):
    ann, img = osp.join(root, "ann.json"), osp.join(root, "img")
    return [
        CONFIG, "--work-dir", work_dir, "--cfg-options",
        "model.num_classes=2", "model.fpn_channels=32",
        "model.backbone.name=mobilenetv3_small_050", "model.backbone.out_indices=(2,3,4)",
        "model.warp.grid=(4,4)", "model.warp.cell_size=16", "model.warp.score_input_size=(64,64)",
        "model.warp.scorer.backbone=mobilenetv3_small_050", "model.warp.scorer.stage=2",
        "model.warp.scorer.grid_size=(4,4)",
        *[f"{loader}.{key}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
          for key in (f"dataset.ann_file={ann}", f"dataset.img_dir={img}", "num_workers=0",
                      "persistent_workers=False", "batch_size=2")],
        f"val_evaluator.ann_file={ann}", f"test_evaluator.ann_file={ann}",
        f"train_cfg.max_iters={iters}", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2",
        "default_hooks.logger.interval=1",
    ]


def test_config_trains_checkpoints_resumes_and_evaluates(coco_root, tmp_path):
    work = str(tmp_path / "work")
    train_dense.main(tiny_options(coco_root, work, 2))
    assert osp.isfile(osp.join(work, "iter_2.pth")) and not glob.glob(osp.join(work, "*.tmp"))
    torch.load(osp.join(work, "iter_2.pth"), map_location="cpu", weights_only=True)  # no globals beyond torch's own
    train_dense.main(tiny_options(coco_root, work, 4) + ["--resume"])
    from dart_dense.checkpoint import load_local_checkpoint
    assert load_local_checkpoint(osp.join(work, "iter_4.pth"))["meta"]["iter"] == 4
    metrics = train_dense.main(tiny_options(coco_root, str(tmp_path / "test"), 4)
                               + ["--test", "--load-from", osp.join(work, "iter_4.pth")])
    assert {"coco/mAP", "coco/mAP_50"} <= set(metrics) and 0 <= metrics["coco/mAP"] <= 100


def test_baseline_is_one_flag_away():
    dart = Config.fromfile(CONFIG)
    base = Config.fromfile(CONFIG.replace("_dart.py", "_baseline.py"))
    assert base.model.warp.scorer is None
    dart.model.warp.scorer = None
    assert dart.model.to_dict() == base.model.to_dict()

    model = MODELS.build(Config.fromfile(CONFIG).model).eval()  # the full-size defaults
    image = torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8)
    with torch.no_grad():
        out = model.val_step(dict(inputs=[image], data_samples=[dict(img_shape=(48, 64))]))
    boxes = out[0]["pred_boxes"]
    assert model.warp.out_size == (640, 640) and boxes.shape[-1] == 4
    assert bool((boxes >= 0).all() and (boxes[:, [0, 2]] <= 64).all() and (boxes[:, [1, 3]] <= 48).all())


@pytest.mark.slow
def test_trained_detector_finds_the_objects_in_original_coordinates(coco_root, tmp_path):
    """150 CPU iterations on the tiny set: the DART detector's warped-back boxes match the objects (IoU 0.5)."""
    options = tiny_options(coco_root, str(tmp_path / "fit"), 150) + [
        "optim_wrapper.optimizer.lr=0.01", "param_scheduler.0.end=20", "train_cfg.val_interval=150",
        "default_hooks.checkpoint.interval=150", "default_hooks.logger.interval=50",
    ]
    train_dense.main(options)
    metrics = train_dense.main(options + ["--val", "--load-from", str(tmp_path / "fit" / "iter_150.pth")])
    assert metrics["coco/mAP_50"] > 80, metrics
