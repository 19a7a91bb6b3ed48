"""BatchNorm folding of frozen scorer backbones (dart_core.fold, Scorer.features).

Oracle: the unfolded backbone itself (``scorer.backbone``, never modified by the fold), run in
float64 after every BatchNorm got random statistics and affine parameters, so a fold that
dropped or mis-applied a BatchNorm (or an identity "fold") cannot match.
"""

import copy
import pickle

import pytest
import torch
import torch.nn as nn
from dart_core.fold import FoldedCopy, fold_batchnorm, tensor_state_key
from dart_core.scorers import build_scorer

X_SIZE = 32
# These tests use randomly initialised frozen scorer backbones on purpose (dart_core.scorers warns).
pytestmark = pytest.mark.filterwarnings("ignore:the DART scorer's backbone is frozen but randomly initialised")

BACKBONES = {
    # torchvision slices (Conv2dNormActivation Sequentials, MnasNet's bare Sequentials)
    "torchvision mobilenet_v3_small[:11]": lambda: build_scorer("mobilenet_v3_small", grid_size=(4, 4)),
    "torchvision mnasnet1_0[:6]": lambda: build_scorer("mnasnet1_0", grid_size=(4, 4), stage=6),
    # timm features_only models (BatchNormAct2d inside ConvBnAct / DepthwiseSeparable / InvertedResidual)
    "timm mobilenetv3_small_100": lambda: build_scorer(
        "timm:mobilenetv3_small_100", grid_size=(4, 4), stage=2
    ),
    "timm efficientnet_b0": lambda: build_scorer("timm:efficientnet_b0", grid_size=(4, 4), stage=2),
    # the demos' scorer: EfficientNet-Lite0, packaged ImageNet weights (its stride-2 convolutions are Conv2dSame)
    "tf_efficientnet_lite0 packaged": lambda: build_scorer(
        "tf_efficientnet_lite0", grid_size=(4, 4), weights="packaged", stage=2
    ),
}


@pytest.fixture(autouse=True, scope="module")
def fast_float64():
    """Randomly initialised torchvision slices produce float64 denormals (100x slower on x86, so
    flush them), and these tiny convolutions run fastest, and steadiest on a shared machine, on
    one thread."""
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def randomise_batchnorms(module: nn.Module, seed: int) -> None:
    """Random running statistics and affine parameters for every BatchNorm (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                bn.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                bn.weight.copy_(torch.randn(n, generator=gen) * 0.5 + 1.0)
                bn.bias.copy_(torch.randn(n, generator=gen) * 0.5)


def reference_features(scorer, x):
    """The unfolded frozen backbone's (last) output."""
    with torch.no_grad():
        out = scorer.backbone(x.contiguous(memory_format=torch.channels_last))
    return out[-1] if isinstance(out, (list, tuple)) else out


def assert_close_rel(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11 * expected.abs().max().item())


def count_batchnorms(module):
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def scorer(request):
    torch.manual_seed(0)
    scorer = BACKBONES[request.param]().double()
    randomise_batchnorms(scorer.backbone, seed=1)
    return scorer


def test_folded_features_match_the_unfolded_backbone(scorer):
    x = torch.randn(3, 3, X_SIZE, X_SIZE, dtype=torch.float64)
    expected = reference_features(scorer, x)
    assert_close_rel(scorer.features(x), expected)
    folded = scorer._folded_backbone.get(scorer.backbone)
    assert count_batchnorms(scorer.backbone) > 0
    assert count_batchnorms(folded) == 0, "every BatchNorm of these backbones follows a convolution"


def test_fold_leaves_the_state_dict_and_the_model_alone(scorer):
    before = {k: v.clone() for k, v in scorer.state_dict().items()}
    modules_before = [type(m) for m in scorer.modules()]
    scorer.features(torch.randn(2, 3, X_SIZE, X_SIZE, dtype=torch.float64))
    after = scorer.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert [type(m) for m in scorer.modules()] == modules_before


def test_fold_follows_new_weights_after_load_state_dict(scorer):
    x = torch.randn(2, 3, X_SIZE, X_SIZE, dtype=torch.float64)
    old = scorer.features(x)
    other = copy.deepcopy(scorer)
    randomise_batchnorms(other.backbone, seed=2)
    with torch.no_grad():
        for p in other.backbone.parameters():
            p.mul_(1.5)
    scorer_state = copy.deepcopy(scorer.state_dict())
    try:
        scorer.load_state_dict(other.state_dict())
        new = scorer.features(x)
        assert_close_rel(new, reference_features(other, x))
        assert not torch.allclose(new, old)
    finally:
        scorer.load_state_dict(scorer_state)
    assert_close_rel(scorer.features(x), old)


def test_fold_follows_dtype_changes_and_in_place_writes():
    torch.manual_seed(0)
    scorer = build_scorer("mobilenet_v3_small", grid_size=(4, 4), stage=4)
    randomise_batchnorms(scorer.backbone, seed=3)
    x = torch.randn(2, 3, X_SIZE, X_SIZE)
    scorer.features(x)  # builds the float32 fold
    scorer.double()
    out = scorer.features(x.double())
    assert out.dtype == torch.float64
    assert_close_rel(out, reference_features(scorer, x.double()))
    bn = next(m for m in scorer.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_mean.add_(3.0)
    assert_close_rel(scorer.features(x.double()), reference_features(scorer, x.double()))


def test_the_fold_follows_writes_through_data_and_refold_forces_a_new_one():
    """``p.data.mul_`` bumps no version counter: the CPU checksum still sees it. A write that keeps
    every tensor's sum (a permutation through ``.data``) is what ``Scorer.refold()`` is for."""
    torch.manual_seed(0)
    scorer = build_scorer("mobilenet_v3_small", grid_size=(4, 4), stage=4).double()
    randomise_batchnorms(scorer.backbone, seed=8)
    x = torch.randn(2, 3, X_SIZE, X_SIZE, dtype=torch.float64)
    old = scorer.features(x)
    conv = next(m for m in scorer.backbone.modules() if isinstance(m, nn.Conv2d))
    conv.weight.data.mul_(0.5)
    new = scorer.features(x)
    assert_close_rel(new, reference_features(scorer, x))
    assert not torch.allclose(new, old)
    conv.weight.data.copy_(conv.weight.data.flip(0))  # same sum, same version
    scorer.refold()
    assert_close_rel(scorer.features(x), reference_features(scorer, x))


def test_the_fold_is_cached_until_a_tensor_changes():
    backbone = build_scorer("mobilenet_v3_small", grid_size=(4, 4), stage=4).backbone
    cache = FoldedCopy()
    first = cache.get(backbone)
    assert cache.get(backbone) is first
    with torch.no_grad():
        next(backbone.parameters()).mul_(2)
    assert cache.get(backbone) is not first


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_checksum_sees_a_small_write_in_low_precision(dtype):
    """One weight of 0.5s changed through ``.data``: a sum in bfloat16 (or of many float32s) would
    round the change away and keep the stale fold."""
    conv = nn.Sequential(nn.Conv2d(3, 64, 3, bias=False), nn.BatchNorm2d(64)).eval().to(dtype)
    conv[0].weight.data.fill_(0.5)
    cache = FoldedCopy()
    first = cache.get(conv)
    conv[0].weight.data[0, 0, 0, 0] += 0.5 if dtype == torch.bfloat16 else 1e-4
    assert cache.get(conv) is not first


def test_a_nan_weight_does_not_refold_every_call():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    conv[0].weight.data[0, 0, 0, 0] = float("nan")
    cache = FoldedCopy()
    assert cache.get(conv) is cache.get(conv)


def test_copies_and_pickles_of_a_scorer_fold_their_own_weights():
    torch.manual_seed(0)
    scorer = build_scorer("mobilenet_v3_small", grid_size=(4, 4), stage=4).double()
    randomise_batchnorms(scorer.backbone, seed=4)
    x = torch.randn(2, 3, X_SIZE, X_SIZE, dtype=torch.float64)
    scorer.features(x)
    for twin in (copy.deepcopy(scorer), pickle.loads(pickle.dumps(scorer))):
        assert twin._folded_backbone._folded is None  # the cache is not carried over
        randomise_batchnorms(twin.backbone, seed=5)
        assert_close_rel(twin.features(x), reference_features(twin, x))
    assert_close_rel(scorer.features(x), reference_features(scorer, x))


def test_inference_tensors_refold_every_call():
    with torch.inference_mode():
        backbone = build_scorer("mobilenet_v3_small", grid_size=(4, 4), stage=4).backbone
    assert tensor_state_key(backbone) is None
    cache = FoldedCopy()
    assert cache.get(backbone) is not cache.get(backbone)


def test_hooked_and_training_mode_pairs_are_not_folded():
    seq = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
    )
    seq.eval()
    seen = []
    seq[0].register_forward_hook(lambda module, args, out: seen.append(out))
    folded = fold_batchnorm(seq)
    assert isinstance(folded[1], nn.BatchNorm2d)  # the hooked convolution keeps its BatchNorm
    assert count_batchnorms(folded) == 1
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        seq(x)
        folded(x)
    torch.testing.assert_close(seen[1], seen[0])  # the hook sees the unfolded convolution's output
    seq[4].train()
    assert count_batchnorms(fold_batchnorm(seq)) == 2


def test_hooks_on_a_scorer_backbone_see_its_own_modules_whenever_added_or_removed():
    torch.manual_seed(0)
    scorer = build_scorer("mobilenet_v3_small", grid_size=(4, 4), stage=4).double()
    randomise_batchnorms(scorer.backbone, seed=6)
    x = torch.randn(2, 3, X_SIZE, X_SIZE, dtype=torch.float64)
    scorer.features(x)  # folded and cached before any hook exists
    seen = []
    target = scorer.backbone[1]
    handle = target.register_forward_hook(lambda module, args, out: seen.append(module))
    features = scorer.features(x)
    assert seen and all(module is target for module in seen)  # a hook added later fires, on the real module
    assert_close_rel(features, reference_features(scorer, x))
    handle.remove()
    count = len(seen)
    scorer.features(x)
    assert len(seen) == count  # and a removed one stays removed


def test_the_fold_follows_train_and_eval_mode():
    """A frozen backbone switched to training mode by hand (BatchNorms on batch statistics) must
    not keep running the eval-mode fold."""
    torch.manual_seed(0)
    scorer = build_scorer("mobilenet_v3_small", grid_size=(4, 4), stage=4).double()
    randomise_batchnorms(scorer.backbone, seed=7)
    x = torch.randn(4, 3, X_SIZE, X_SIZE, dtype=torch.float64)
    scorer.features(x)
    scorer.frozen_cpu_chunk = 4  # one chunk: batch statistics over the same images as the reference
    scorer.backbone.train()  # only the mode changes: no tensor is touched before features() runs
    with torch.no_grad():  # a copy, so that its batch-statistics update leaves the original alone
        expected = copy.deepcopy(scorer.backbone)(x.contiguous(memory_format=torch.channels_last))
    assert_close_rel(scorer.features(x), expected)


def test_weight_transforming_convolutions_are_not_folded():
    from timm.layers import StdConv2d

    seq = nn.Sequential(StdConv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    assert count_batchnorms(fold_batchnorm(seq)) == 1  # its forward standardises the weight: no fold


def test_trainable_backbones_are_not_folded_and_get_gradients():
    torch.manual_seed(0)
    scorer = build_scorer("mobilenet_v3_small", grid_size=(4, 4), stage=4, freeze_backbone=False).double()
    scorer.train()
    x = torch.randn(2, 3, X_SIZE, X_SIZE, dtype=torch.float64)
    scorer(x).sum().backward()
    assert scorer._folded_backbone._folded is None
    assert all(m.training for m in scorer.backbone.modules())
    grads = [p.grad for p in scorer.backbone.parameters()]
    assert all(g is not None for g in grads)
    bn_grads = [m.weight.grad for m in scorer.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_grads and all(g.abs().sum() > 0 for g in bn_grads)


def test_compiled_scorer_follows_new_weights():
    torch.manual_seed(0)
    scorer = build_scorer("mobilenet_v3_small", grid_size=(4, 4), stage=2).double()
    randomise_batchnorms(scorer.backbone, seed=6)
    x = torch.randn(2, 3, X_SIZE, X_SIZE, dtype=torch.float64)
    compiled = torch.compile(scorer.features, backend="aot_eager")
    assert_close_rel(compiled(x), reference_features(scorer, x))
    randomise_batchnorms(scorer.backbone, seed=7)
    assert_close_rel(compiled(x), reference_features(scorer, x))
