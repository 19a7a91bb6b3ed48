"""Real ImageNet weights shipped in a pip package, mapped in order onto timm's EfficientNet-Lite0."""

import pytest
import timm
import torch
import torch.nn.functional as F
from dart_core import build_scorer
from dart_core.checkpoint import CheckpointMismatchError
from dart_core.pretrained import efficientnet_lite0, load_ordered_state_dict
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
