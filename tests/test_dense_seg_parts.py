"""dart_dense segmentation parts one by one: the loss against F.cross_entropy, mAcc against sklearn, and the
dataset's horizontal flip. (End-to-end training and mIoU / aAcc: test_dense_seg.py.)"""

import dart_dense  # noqa: F401  (registers the mmengine modules)
import numpy as np
import pytest
import test_dense_seg
import torch
import torch.nn.functional as F
from dart_dense.seg_data import SegFolderDataset
from dart_dense.seg_metric import MeanIoU
from mmengine.registry import MODELS
from sklearn.metrics import balanced_accuracy_score
from test_dense_support import single_thread  # noqa: F401  (autouse fixture)

seg_root = test_dense_seg.seg_root  # the module-scoped ADE20K-style folder fixture


def test_segmentation_loss_ignores_the_padding():
    """Two images of different sizes in one padded batch: ``loss_ce`` is the cross-entropy of the
    "tensor"-mode logits over each image's own pixels only, none of the padding."""
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type="DartSegmentor", num_classes=3, head="lraspp",
        backbone=dict(name="mobilenetv3_small_050", out_indices=(1, 3)),
        warp=dict(grid=(4, 4), cell_size=8, scorer=None),  # the padding is there with or without a scorer
    )).eval()
    sizes = [(30, 41), (17, 20)]
    labels = [torch.randint(0, 3, s) for s in sizes]
    batch = dict(inputs=[torch.randint(0, 255, (3, *s), dtype=torch.uint8) for s in sizes],
                 data_samples=[dict(img_shape=s, gt_sem_seg=y) for s, y in zip(sizes, labels, strict=True)])
    inputs = model.data_preprocessor(batch, False)
    with torch.no_grad():
        logits = model(**inputs, mode="tensor")
        got = model(**inputs, mode="loss")["loss_ce"]
    pixels = torch.cat([logits[b, :, :h, :w].reshape(3, -1).T for b, (h, w) in enumerate(sizes)])
    torch.testing.assert_close(got, F.cross_entropy(pixels, torch.cat([y.flatten() for y in labels])))


def test_mean_accuracy_matches_sklearn_balanced_accuracy():
    """mAcc is the mean per-class recall over the classes present in the truth: sklearn's balanced accuracy."""
    g = torch.Generator().manual_seed(0)
    metric, truths, preds = MeanIoU(num_classes=4), [], []
    for size in [(5, 7), (8, 3)]:
        gt, pred = torch.randint(0, 4, size, generator=g), torch.randint(0, 3, size, generator=g)
        gt[0, 0] = 255  # ignored
        metric.process(None, [dict(gt_sem_seg=gt, pred_sem_seg=pred)])
        truths.append(gt[gt != 255].numpy())
        preds.append(pred[gt != 255].numpy())
    got = metric.compute_metrics(metric.results)["mAcc"]
    assert got == pytest.approx(100 * balanced_accuracy_score(np.concatenate(truths), np.concatenate(preds)))


def test_segmentation_flip_moves_labels_with_pixels(seg_root):
    plain = SegFolderDataset(seg_root, classes=["stuff", "thing"], split="validation")[1]
    flipped = SegFolderDataset(seg_root, classes=["stuff", "thing"], split="validation", flip_prob=1.0)[1]
    assert torch.equal(flipped["inputs"], plain["inputs"].flip(-1))
    assert torch.equal(flipped["data_samples"]["gt_sem_seg"], plain["data_samples"]["gt_sem_seg"].flip(-1))
