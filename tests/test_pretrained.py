"""Real ImageNet weights shipped in a pip package, mapped in order onto timm's EfficientNet-Lite0."""

import pytest
import timm
import torch
import torch.nn.functional as F
from dart_core import build_scorer
from dart_core.checkpoint import CheckpointMismatchError
from dart_core.pretrained import efficientnet_lite0, load_ordered_state_dict, timm_model_from_file
from dart_core.training import CheckpointError
from skimage import data

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    return efficientnet_lite0().eval()


def test_packaged_lite0_recognises_a_real_cat(lite0):
    """The oracle is ImageNet itself: scikit-image's photo of Chelsea the cat must come out a cat."""
    cfg = lite0.pretrained_cfg
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    x = (image - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = lite0(x).topk(5).indices[0].tolist()
    assert top5[0] in CAT_CLASSES and len(CAT_CLASSES & set(top5)) >= 3


def test_packaged_scorer_backbone_holds_the_real_weights(lite0):
    scorer = build_scorer("tf_efficientnet_lite0", "v1", grid_size=(8, 8), weights="packaged", stage=2)
    full = lite0.state_dict()
    own = scorer.backbone.state_dict()
    assert own and all(torch.equal(value, full[key]) for key, value in own.items())
    assert scorer(torch.randn(2, 3, 64, 64)).shape == (2, 8, 8)
    with pytest.raises(ValueError, match="packaged weights exist only for tf_efficientnet_lite0"):
        build_scorer("timm:resnet18", weights="packaged")


def test_ordered_loading_checks_every_shape():
    model = timm.create_model("resnet10t")
    state = {f"k{i}": v.clone() for i, v in enumerate(model.state_dict().values())}
    load_ordered_state_dict(model, state, "ordered")
    first = next(iter(state))
    state[first] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_ordered_state_dict(model, state, "broken")
    with pytest.raises(CheckpointMismatchError):
        load_ordered_state_dict(model, dict(list(state.items())[1:]), "short")


# Two kinds of timm feature extractor: EfficientNet/MobileNetV3's own feature class (built
# features-only, loaded non-strictly by timm) and FeatureListNet around a ResNet.
SMALL_TIMM = {"mobilenetv3_small_050": {}, "resnet10t": {}}


@pytest.fixture
def classifier_file(tmp_path):
    """A classifier checkpoint of a timm model as people save it ({"model": state dict})."""
    def save(name: str, transform=lambda state: state) -> tuple:
        torch.manual_seed(1)
        state = timm.create_model(name).state_dict()
        path = tmp_path / f"{name}.pth"
        torch.save({"model": transform(dict(state))}, path)
        return path, state
    return save


@pytest.mark.parametrize("name", sorted(SMALL_TIMM))
def test_a_timm_weights_file_fills_every_tensor_of_the_features_model(name, classifier_file):
    path, state = classifier_file(name)
    torch.manual_seed(2)  # the model's own initialisation differs from the file's
    features = timm_model_from_file(name, path, features_only=True, out_indices=(1,))
    own = features.state_dict()
    # FeatureListNet names flattened modules with "_" where the classifier model has "."
    by_shape_and_value = [value for value in state.values()]
    assert own and all(any(v.shape == w.shape and torch.equal(v, w) for w in by_shape_and_value) for v in own.values())
    scorer = build_scorer(f"timm:{name}", grid_size=(4, 4), weights=path, stage=1)
    assert all(torch.equal(value, own[key]) for key, value in scorer.backbone.state_dict().items())


@pytest.mark.parametrize(
    "name, transform, missing",
    [
        ("mobilenetv3_small_050", lambda state: {f"backbone.{key}": value for key, value in state.items()},
         "conv_stem.weight"),
        ("mobilenetv3_small_050",
         lambda state: {key: value for key, value in state.items() if not key.startswith("blocks.1.")},
         "blocks.1.0.conv_pw.weight"),
        ("resnet10t", lambda state: {key: value for key, value in state.items() if not key.startswith("layer1.")},
         "layer1.0.conv1.weight"),
    ],
    ids=["prefixed keys", "a stage left out", "a stage left out, FeatureListNet"],
)
def test_a_timm_weights_file_without_the_backbone_weights_is_refused(name, transform, missing, classifier_file):
    """timm alone would load these non-strictly and leave the frozen scorer random without a word."""
    path, _ = classifier_file(name, transform)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(\d+\): .*" + missing):
        build_scorer(f"timm:{name}", grid_size=(4, 4), weights=path, stage=1)


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_a_timm_weights_file_that_would_run_code_is_refused_by_dart(tmp_path, monkeypatch):
    """Read by DART's weights-only loader, not timm's (which unpickles freely before timm 1.0.26)."""
    path = tmp_path / "evil.pth"
    torch.save({"model": timm.create_model("mobilenetv3_small_050").state_dict(), "payload": Payload()}, path)
    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            pytest.fail("the file was unpickled without weights_only=True")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", weights_only_load)
    with pytest.raises(CheckpointError, match="Payload|builtins.print"):
        timm_model_from_file("mobilenetv3_small_050", path, features_only=True)
