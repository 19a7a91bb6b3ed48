"""Scorer inputs that used to fail silently or obscurely (dart_core.scorers): a frozen backbone left
random, a non-finite image under batch statistics, and bad build_scorer arguments."""

import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from dart_core import partition, scorers
from dart_core.scorers import build_scorer, standardise

RANDOM_BACKBONE = "backbone is frozen but randomly initialised"


@pytest.fixture
def fresh_warnings(monkeypatch):
    """A process that has not warned yet, every warning recorded."""
    monkeypatch.setattr(scorers, "_WARNED", set(), raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def random_backbone_warnings(caught):
    return [w for w in caught if issubclass(w.category, UserWarning) and RANDOM_BACKBONE in str(w.message)]


def tiny_scorer(**kwargs):
    return build_scorer("mobilenet_v3_small", grid_size=(4, 4), stage=4, **kwargs)


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_a_random_frozen_backbone_warns_once_per_process_saying_how_to_fix_it(fresh_warnings):
    scorer = tiny_scorer()
    assert not random_backbone_warnings(fresh_warnings)  # building alone does not warn: weights may follow
    scorer(X)
    scorer(X)
    tiny_scorer()(X)
    (warning,) = random_backbone_warnings(fresh_warnings)
    message = str(warning.message)
    assert "scorer_weights=<file>" in message and "freeze_backbone=False" in message


def test_a_deferred_warning_stays_due_for_the_first_pass_after_the_block(fresh_warnings):
    """A command's shape probe runs before the checkpoint loads: it must not warn, nor use up the
    once-per-process warning that a backbone still random afterwards deserves."""
    scorer = tiny_scorer()
    with scorers.random_backbone_warning_deferred():
        scorer(X)
        scorer.train()
    assert not random_backbone_warnings(fresh_warnings)
    scorer(X)
    assert len(random_backbone_warnings(fresh_warnings)) == 1
    weighted = tiny_scorer()
    with scorers.random_backbone_warning_deferred():
        weighted(X)
    weighted.load_state_dict(tiny_scorer().state_dict())
    scorers._WARNED.clear()
    weighted(X)
    assert len(random_backbone_warnings(fresh_warnings)) == 1  # weights came after the probe: no warning


def test_entering_training_warns_too_for_runs_that_only_call_a_compiled_model(fresh_warnings):
    """Under torch.compile the forward traces the backbone and cannot warn; .train() does."""
    scorer = tiny_scorer()
    torch.compile(scorer, backend="eager", fullgraph=True)(X)
    assert not random_backbone_warnings(fresh_warnings)
    scorer.eval()
    assert not random_backbone_warnings(fresh_warnings)  # evaluation: nothing is being trained on noise
    nn.ModuleDict({"scorer": scorer}).train()  # through a parent, as model.train() does
    (warning,) = random_backbone_warnings(fresh_warnings)
    assert warning.filename == __file__  # attributed to the caller, not to torch's module code
    loaded = tiny_scorer()
    loaded.load_state_dict(tiny_scorer().state_dict())
    scorers._WARNED.clear()
    loaded.train()
    assert len(random_backbone_warnings(fresh_warnings)) == 1  # no new warning: it has weights


def test_no_warning_once_the_backbone_has_weights(fresh_warnings, tmp_path):
    weights = tmp_path / "mnv3s.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    tiny_scorer(weights=weights)(X)
    tiny_scorer(freeze_backbone=False)(X)  # trained with the head: random is its starting point
    loaded = tiny_scorer()
    loaded.load_state_dict(tiny_scorer().state_dict())  # e.g. a checkpoint holding the scorer
    loaded(X)
    parent = nn.ModuleDict({"scorer": tiny_scorer()})  # loaded through a parent module
    parent.load_state_dict(nn.ModuleDict({"scorer": tiny_scorer()}).state_dict())
    parent["scorer"](X)
    assert not random_backbone_warnings(fresh_warnings)
    head_only = tiny_scorer()  # a state dict without the backbone's tensors leaves it random
    head_only.head.load_state_dict(tiny_scorer().head.state_dict())
    head_only(X)
    assert len(random_backbone_warnings(fresh_warnings)) == 1


def test_a_timm_model_without_scorer_weights_warns_and_a_loaded_one_does_not(fresh_warnings, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 448, 448)
    model = timm.create_model("deit_tiny_dart_patch16_448", depth=1, num_tokens=16).eval()
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    with torch.no_grad():
        timm.create_model(
            "deit_tiny_dart_patch16_448",
            depth=1,
            num_tokens=16,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(checkpoint)),
        ).eval()(x)
        assert not random_backbone_warnings(fresh_warnings)
        model(x)
    assert len(random_backbone_warnings(fresh_warnings)) == 1


@pytest.mark.filterwarnings(f"ignore:.*{RANDOM_BACKBONE}")
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_image_leaves_the_others_batch_statistics_alone(bad):
    """Under batch statistics, a batch with a broken image 0 gives the other images the scores
    (and partitions) of the batch without it. (Scores cannot equal those of the batch with a
    clean image 0: that image legitimately enters the batch statistics.)"""
    torch.manual_seed(0)
    scorer = tiny_scorer(batch_stats=True).eval()
    images = torch.randn(3, 3, 32, 32)
    broken = images.clone()
    broken[0, 0, 5, 5] = bad
    with torch.no_grad():
        scores = scorer(broken)
        without = scorer(images[1:])
    assert not scores[0].isfinite().all()
    assert scores[1:].isfinite().all()
    torch.testing.assert_close(scores[1:], without, rtol=1e-6, atol=1e-6)
    mixed, alone = partition(scores, num_tokens=8), partition(without, num_tokens=8)
    torch.testing.assert_close(mixed.token_edges[1:], alone.token_edges, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed.row_edges[1:], alone.row_edges, rtol=1e-5, atol=1e-5)


def test_batch_standardisation_uses_the_finite_samples_only():
    """Oracle: NumPy mean and unbiased std over the samples whose scores are all finite."""
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(4, 3, 3))
    raw[1, 2, 0] = np.nan
    raw[3, 0, 1] = -np.inf
    kept = raw[[0, 2]]
    expected = (raw - kept.mean()) / (kept.std(ddof=1) + 1e-8)
    got = standardise(torch.from_numpy(raw), batch_stats=True).numpy()
    np.testing.assert_allclose(got[[0, 2]], expected[[0, 2]], rtol=1e-12)
    assert np.isnan(got[1, 2, 0]) and np.isneginf(got[3, 0, 1])
    np.testing.assert_allclose(got[1][np.isfinite(raw[1])], expected[1][np.isfinite(raw[1])], rtol=1e-12)
    clean = rng.normal(size=(2, 3, 3))  # all finite: the plain batch statistics
    np.testing.assert_allclose(
        standardise(torch.from_numpy(clean), batch_stats=True).numpy(),
        (clean - clean.mean()) / (clean.std(ddof=1) + 1e-8),
        rtol=1e-12,
    )
    assert torch.autograd.gradcheck(
        lambda s: standardise(s, batch_stats=True), torch.from_numpy(clean).requires_grad_()
    )


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(version="v3"), ValueError, ["'v3'", "'v1'", "'v2'"]),
        (dict(backbone="resnet18", stage=9), ValueError, ["stage 9", "resnet18", "0..4"]),
        (dict(backbone="mobilenet_v3_small", stage=0), ValueError, ["stage 0", "1..13"]),
        (dict(backbone="mobilenet_v3_small", stage=14), ValueError, ["stage 14", "1..13"]),
        (dict(backbone="resnet18", stage=1.5), ValueError, ["stage must be an int", "1.5"]),
        (dict(backbone="resnet18", weights="nope.pth"), FileNotFoundError, ["nope.pth", "'packaged'"]),
        (dict(backbone="mobilenet_v3_small", weights="nope.pth"), FileNotFoundError, ["nope.pth"]),
        (dict(backbone="mobilenet_v3_small", weights="packaged"), ValueError, ["tf_efficientnet_lite0"]),
    ],
)
def test_bad_build_scorer_arguments_are_named(kwargs, error, words):
    with pytest.raises(error) as info:
        build_scorer(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_a_timm_file_for_a_torchvision_scorer_is_refused_with_the_keys_named(tmp_path):
    """The same network under timm's names (conv_stem.*, blocks.*) is not a torchvision state dict."""
    from dart_core.checkpoint import CheckpointMismatchError

    path = tmp_path / "timm_mnv3s.pth"
    torch.save(timm.create_model("mobilenetv3_small_100").state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"torchvision mobilenet_v3_small weights\) does not fit") as info:
        build_scorer("mobilenet_v3_small", weights=path)
    assert "features.0.0.weight" in info.value.missing and "conv_stem.weight" in info.value.unexpected
