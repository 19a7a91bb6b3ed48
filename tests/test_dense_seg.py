"""dart_dense segmentation: ADE20K-style data, the mIoU metric against sklearn, the segmentor, and the real
config trained / checkpointed / resumed / evaluated on the CPU through tools/train_dense.py."""

import glob
import json
import os
import os.path as osp
import sys
import warnings

import dart_dense  # noqa: F401  (registers the mmengine modules)
import numpy as np
import pytest
import torch
from dart_dense.seg_data import SegFolderDataset
from dart_dense.seg_metric import MeanIoU
from mmengine.config import Config
from mmengine.registry import MODELS
from PIL import Image
from sklearn.metrics import confusion_matrix

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, "tools"))
import train_dense  # noqa: E402
from test_dense_support import single_thread  # noqa: E402, F401  (autouse fixture)

CONFIG = osp.join(ROOT, "packages/dart-dense/configs/seg_deeplabv3_mobilenetv3_ade20k_dart.py")
SIZES = [(36, 48), (40, 40), (30, 50), (44, 36)]


def write_sample(root, split, name, size, seed):
    """An image with a bright square (label 2) on dark noise (label 1) and an unlabeled border (0)."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    labels = np.ones((h, w), np.uint8)
    y, x = rng.integers(2, h - 14), rng.integers(2, w - 14)
    image[y : y + 12, x : x + 12] = 230
    labels[y : y + 12, x : x + 12] = 2
    labels[0] = 0
    os.makedirs(osp.join(root, "images", split), exist_ok=True)
    os.makedirs(osp.join(root, "annotations", split), exist_ok=True)
    Image.fromarray(image).save(osp.join(root, "images", split, name + ".jpg"), quality=95)
    Image.fromarray(labels).save(osp.join(root, "annotations", split, name + ".png"))


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ade"))
    for split in ("training", "validation"):
        for i, size in enumerate(SIZES):
            write_sample(root, split, f"img{i}", size, seed=i + (10 if split == "validation" else 0))
    return root


def test_dataset_reads_ade20k_layout(seg_root):
    data = SegFolderDataset(seg_root, classes=["stuff", "thing"], split="validation")
    sample = data[1]
    assert sample["inputs"].shape == (3, 40, 40) and sample["inputs"].dtype == torch.uint8
    labels = sample["data_samples"]["gt_sem_seg"]
    raw = torch.from_numpy(np.array(Image.open(osp.join(seg_root, "annotations/validation/img1.png")))).long()
    # reduce_zero_label: 0 → ignore, c → c - 1.
    torch.testing.assert_close(labels, torch.where(raw == 0, 255, raw - 1))
    assert sample["data_samples"]["img_shape"] == (40, 40)


def test_dataset_bad_input_is_named(tmp_path, seg_root):
    root = str(tmp_path)
    write_sample(root, "training", "a", (20, 20), 0)
    Image.fromarray(np.ones((19, 20), np.uint8)).save(osp.join(root, "annotations/training/a.png"))
    with pytest.raises(ValueError, match="must match their images"):
        SegFolderDataset(root, classes=["x", "y"])[0]
    with pytest.raises(ValueError, match=r"labels \[1\] outside the 1 classes"):
        SegFolderDataset(seg_root, classes=["only"])[0]
    os.remove(osp.join(root, "annotations/training/a.png"))
    with pytest.raises(FileNotFoundError, match="no label map"):
        SegFolderDataset(root, classes=["x", "y"])
    with pytest.raises(ValueError, match="no '\\*.jpg' images"):
        SegFolderDataset(root, classes=["x"], split="training", img_suffix=".jpg", img_dir="annotations")


def test_mean_iou_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    metric = MeanIoU(num_classes=4)
    truths, preds = [], []
    for size in [(5, 7), (8, 3)]:
        gt = torch.randint(0, 4, size, generator=g)
        gt[0, 0] = 255
        pred = torch.randint(0, 3, size, generator=g)  # class 3 never predicted
        metric.process(None, [dict(gt_sem_seg=gt, pred_sem_seg=pred)])
        keep = gt != 255
        truths.append(gt[keep].numpy())
        preds.append(pred[keep].numpy())
    cm = confusion_matrix(np.concatenate(truths), np.concatenate(preds), labels=[0, 1, 2, 3])
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    got = metric.compute_metrics(metric.results)
    assert got["mIoU"] == pytest.approx(100 * iou.mean())
    assert got["aAcc"] == pytest.approx(100 * np.trace(cm) / cm.sum())


def tiny_options(root, work_dir, iters, extra=()):
    return [
        CONFIG, "--work-dir", work_dir, "--cfg-options",
        "model.num_classes=2", "val_evaluator.num_classes=2", "test_evaluator.num_classes=2",
        "model.backbone.name=mobilenetv3_small_050", "model.backbone.out_indices=(1,4)",
        "model.warp.grid=(4,4)", "model.warp.cell_size=8", "model.warp.score_input_size=(64,64)",
        "model.warp.scorer.backbone=mobilenetv3_small_050", "model.warp.scorer.stage=2",
        "model.warp.scorer.grid_size=(4,4)",
        *[f"{loader}.{key}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
          for key in (f"dataset.data_root={root}", "dataset.classes=[stuff,thing]", "num_workers=0",
                      "persistent_workers=False", "batch_size=2")],
        f"train_cfg.max_iters={iters}", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2",
        "default_hooks.logger.interval=1", *extra,
    ]


def test_config_trains_checkpoints_resumes_and_evaluates(seg_root, tmp_path):
    work = str(tmp_path / "work")
    train_dense.main(tiny_options(seg_root, work, 2))
    assert osp.isfile(osp.join(work, "iter_2.pth")) and not glob.glob(osp.join(work, "*.tmp"))
    # The checkpoint loads under weights-only torch.load (the allow-list), and resuming continues at iter 2.
    from dart_dense.checkpoint import load_local_checkpoint
    torch.load(osp.join(work, "iter_2.pth"), map_location="cpu", weights_only=True)  # no globals beyond torch's own
    state = load_local_checkpoint(osp.join(work, "iter_2.pth"))
    assert state["meta"]["iter"] == 2
    train_dense.main(tiny_options(seg_root, work, 4) + ["--resume"])
    resumed = load_local_checkpoint(osp.join(work, "iter_4.pth"))
    assert resumed["meta"]["iter"] == 4
    # exactly where an uninterrupted run gets: the same batches, flips and dropout masks
    train_dense.main(tiny_options(seg_root, str(tmp_path / "straight"), 4))
    straight = load_local_checkpoint(str(tmp_path / "straight" / "iter_4.pth"))["state_dict"]
    assert any(not torch.equal(straight[k], v) for k, v in state["state_dict"].items())
    assert [k for k, v in straight.items() if not torch.equal(resumed["state_dict"][k], v)] == []
    metrics = train_dense.main(tiny_options(seg_root, str(tmp_path / "test"), 4)
                               + ["--test", "--load-from", osp.join(work, "iter_4.pth")])
    assert set(metrics) >= {"seg/mIoU", "seg/aAcc"} and 0 <= metrics["seg/mIoU"] <= 100
    val = train_dense.main(tiny_options(seg_root, str(tmp_path / "val"), 4)
                           + ["--val", "--load-from", osp.join(work, "iter_4.pth")])
    assert val == metrics  # validation and test sets are the same folder here


def test_a_save_killed_midway_leaves_no_checkpoint_and_resume_continues_from_the_last_one(
        seg_root, tmp_path, monkeypatch):
    import mmengine.runner.runner as mmengine_runner

    work = str(tmp_path / "work")
    train_dense.main(tiny_options(seg_root, work, 2))
    before = open(osp.join(work, "iter_2.pth"), "rb").read()
    real_save, saved = mmengine_runner.save_checkpoint, []

    def killed_while_writing_iter_4(checkpoint, path, *args, **kwargs):
        saved.append(osp.basename(path).split(".pth")[0])
        if saved[-1] != "iter_4":
            return real_save(checkpoint, path, *args, **kwargs)
        with open(path, "wb") as f:
            f.write(b"torn")  # what a kill in the middle of torch.save leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(mmengine_runner, "save_checkpoint", killed_while_writing_iter_4)
    with pytest.raises(KeyboardInterrupt):
        train_dense.main(tiny_options(seg_root, work, 4) + ["--resume"])
    # resumed at iteration 2 (a fresh start would save iter_2 again), and the torn file never took the name
    assert saved == ["iter_4"] and open(osp.join(work, "iter_2.pth"), "rb").read() == before
    assert not osp.exists(osp.join(work, "iter_4.pth")) and not glob.glob(osp.join(work, "*.tmp"))


def test_loader_keeps_weights_only_and_names_unsafe_files(tmp_path):
    from dart_dense.checkpoint import load_local_checkpoint
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.runner import CheckpointLoader
    assert CheckpointLoader._get_checkpoint_loader(str(tmp_path / "a.pth")) is load_local_checkpoint
    unsafe = tmp_path / "plain_runner.pth"
    torch.save(dict(state_dict={}, message_hub=dict(log_scalars=dict(loss=HistoryBuffer([1.0], [1])))), unsafe)
    with pytest.raises(ValueError, match="not a weights-only checkpoint"):
        CheckpointLoader.load_checkpoint(str(unsafe))
    with pytest.raises(FileNotFoundError):
        load_local_checkpoint(str(tmp_path / "missing.pth"))


def test_baseline_is_one_flag_away():
    dart = Config.fromfile(CONFIG)
    base = Config.fromfile(CONFIG.replace("_dart.py", "_baseline.py"))
    assert dart.model.warp.scorer is not None and base.model.warp.scorer is None
    dart.model.warp.scorer = None
    assert dart.model.to_dict() == base.model.to_dict()

    model = MODELS.build(Config.fromfile(CONFIG).model).eval()  # the full-size defaults
    image = torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8)
    with torch.no_grad():
        out = model.val_step(dict(inputs=[image], data_samples=[dict(img_shape=(48, 64))]))
    assert out[0]["pred_sem_seg"].shape == (48, 64) and model.warp.out_size == (512, 512)


def test_segmentor_predicts_label_maps_in_original_coordinates():
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type="DartSegmentor", num_classes=3, head="lraspp",
        backbone=dict(name="mobilenetv3_small_050", out_indices=(1, 3)),
        warp=dict(grid=(4, 4), cell_size=8, scorer=dict(backbone="mobilenetv3_small_050", stage=2, grid_size=(4, 4))),
    ))
    samples = [dict(inputs=torch.randint(0, 255, (3, *s), dtype=torch.uint8),
                    data_samples=dict(img_shape=s, gt_sem_seg=torch.randint(0, 3, s))) for s in [(30, 41), (17, 20)]]
    batch = dict(inputs=[s["inputs"] for s in samples], data_samples=[s["data_samples"] for s in samples])
    model.eval()
    out = model.val_step(batch)
    assert [tuple(o["pred_sem_seg"].shape) for o in out] == [(30, 41), (17, 20)]
    model.train()
    loss = model(**model.data_preprocessor(batch, True), mode="loss")["loss_ce"]
    loss.backward()
    assert model.warp.scorer.head.mlp.fc1.weight.grad.abs().sum() > 0  # the loss trains the scorer through the warp


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(seg_root, tmp_path):
    """Distributed training through torchrun (gloo on the CPU): both ranks train, rank 0 saves (with
    both ranks' generator states) and validates."""
    import subprocess
    work = str(tmp_path / "dist")
    torchrun = osp.join(osp.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [torchrun, "--standalone", "--nproc_per_node=2", osp.join(ROOT, "tools/train_dense.py"),
               *tiny_options(seg_root, work, 2), "--launcher", "pytorch"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "Distributed training: True" in done.stdout + done.stderr
    assert osp.isfile(osp.join(work, "iter_2.pth")) and "seg/mIoU" in done.stdout + done.stderr
    from dart_dense.checkpoint import RNG_KEY, load_local_checkpoint
    assert len(load_local_checkpoint(osp.join(work, "iter_2.pth"))[RNG_KEY]) == 2  # each rank's generators
    scalars = [json.loads(line) for path in glob.glob(osp.join(work, "*", "vis_data", "scalars.json"))
               for line in open(path)]
    # ScoreFallbackHook: each logged iteration carries the count, summed over both ranks
    assert [record["score_fallbacks"] for record in scalars if "loss" in record] == [0, 0]


@pytest.fixture
def one_rank_group(monkeypatch):
    """torchrun's variables for a world of one; afterwards, the environment is restored and a process
    group the test left behind is destroyed."""
    import socket

    import torch.distributed as dist
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0",
                           WORLD_SIZE="1").items():
        monkeypatch.setenv(key, value)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # mmengine's distributed set-up writes them when unset
        monkeypatch.setenv(key, os.environ.get(key, "1"))
    yield dist
    if dist.is_initialized():
        dist.destroy_process_group()


def test_launcher_run_leaves_the_process_group(seg_root, tmp_path, one_rank_group):
    """A torchrun run leaves the gloo group before exiting, after success and after an error: a
    group left to interpreter shutdown can abort the process ("terminate called without an active
    exception"), which failed the two-process test above in CI."""
    dist = one_rank_group
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_dense.main([*tiny_options(seg_root, str(tmp_path / "ok"), 1), "--launcher", "pytorch"])
    assert osp.isfile(osp.join(tmp_path, "ok", "iter_1.pth")) and not dist.is_initialized()
    assert not [w for w in caught if "broadcast_buffers" in str(w.message)]  # DDP's deprecated option is not used
    broken = tiny_options(seg_root, str(tmp_path / "broken"), 1, extra=["model.backbone.name=no_such_model"])
    with pytest.raises(RuntimeError, match="no_such_model"):
        train_dense.main([*broken, "--launcher", "pytorch"])
    assert not dist.is_initialized()


@pytest.mark.parametrize("backbone", [
    dict(name="swin_tiny_patch4_window7_224", out_indices=(1, 3), img_size=(32, 32), window_size=4, embed_dim=16,
         depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),  # channels-last transformer
    dict(name="mobilevit_xxs", out_indices=(1, 4)),  # CNN + transformer hybrid
])
def test_any_timm_backbone_segments_the_warped_image(backbone):
    model = MODELS.build(dict(type="DartSegmentor", num_classes=3, head="fcn", backbone=backbone,
                              warp=dict(grid=(4, 4), cell_size=8, scorer=dict(backbone="mobilenetv3_small_050",
                                                                              stage=2, grid_size=(4, 4)))))
    images = torch.randn(2, 3, 30, 41)
    logits = model(images, [dict(img_shape=(30, 41)), dict(img_shape=(25, 33))])
    assert logits.shape == (2, 3, 30, 41) and bool(torch.isfinite(logits).all())


@pytest.mark.slow
def test_trained_segmentor_finds_the_objects_on_held_out_images(seg_root, tmp_path):
    """120 CPU iterations: warped-back label maps cover the squares of unseen images (all-background: mIoU ≈ 46)."""
    options = tiny_options(seg_root, str(tmp_path / "fit"), 120, [
        "model.warp.grid=(8,8)", "model.warp.scorer.grid_size=(8,8)", "model.backbone.out_indices=(1,2)",
        "model.head=fcn", "optim_wrapper.optimizer.lr=0.003", "param_scheduler.0.end=10",
        "train_cfg.val_interval=120", "default_hooks.checkpoint.interval=120", "default_hooks.logger.interval=40",
    ])
    train_dense.main(options)
    metrics = train_dense.main(options + ["--val", "--load-from", str(tmp_path / "fit" / "iter_120.pth")])
    assert metrics["seg/mIoU"] > 75, metrics
