"""The default backbone reproduces ImageNet predictions on real photos, with its exact preprocessing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tl_cli.backbones import create_backbone, get_spec
from tl_cli.backbones.efficientnet_lite import Conv2dSame
from tl_cli.data.preprocess import resize_crop, to_tensor

ESPRESSO = 967
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def lite0():
    net, choice = create_backbone("efficientnet_lite0")
    assert choice.pretrained
    return net


def _probs(net, arr, pre):
    from PIL import Image

    x = to_tensor(resize_crop(Image.fromarray(arr), pre), pre)[None]
    with torch.no_grad():
        return net(x).softmax(-1)[0]


def test_coffee_is_espresso_and_chelsea_is_a_cat(lite0):
    pre = get_spec("efficientnet_lite0").preprocess
    p = _probs(lite0, skimage_data.coffee(), pre)
    assert p.argmax().item() == ESPRESSO and p[ESPRESSO] > 0.8
    p = _probs(lite0, skimage_data.chelsea(), pre)
    assert p.argmax().item() in CAT_CLASSES
    assert p[list(CAT_CLASSES)].sum() > 0.8


def test_imagenet_mean_std_is_measurably_worse(lite0):
    """Inputs must be in [-1, 1]; torchvision's ImageNet mean/std still 'works' but is worse."""
    right = get_spec("efficientnet_lite0").preprocess
    wrong = dataclasses.replace(right, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    img = skimage_data.coffee()
    assert _probs(lite0, img, right)[ESPRESSO] > _probs(lite0, img, wrong)[ESPRESSO] + 0.02


def test_same_padding_matters(lite0, monkeypatch):
    """With PyTorch's symmetric padding the espresso probability drops."""
    pre = get_spec("efficientnet_lite0").preprocess
    img = skimage_data.coffee()
    good = _probs(lite0, img, pre)[ESPRESSO].item()

    def symmetric(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.kernel_size[0] // 2, self.dilation, self.groups)

    monkeypatch.setattr(Conv2dSame, "forward", symmetric)
    bad = _probs(lite0, img, pre)[ESPRESSO].item()
    assert good > bad + 0.01


def test_same_padding_is_asymmetric_like_tensorflow():
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # TF SAME for 4x4, k3, s2: total pad 1, all of it at the bottom/right.
    ref = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.equal(conv(x), ref)
