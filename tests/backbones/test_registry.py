"""The backbone registry: names, errors, weights loading, preprocessing metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tl_cli.backbones import create_backbone, get_spec, list_backbones, register_backbone, resolve_weights
from tl_cli.backbones.builtin import TORCHVISION_FILES, torchvision_weights_file
from tl_cli.backbones.describe import describe, meta_backbone
from tl_cli.errors import UnknownBackbone, UnsafeFile, WeightsNotFound

CLASSIC = ["lenet5", "alexnet", "vgg16", "vgg16_bn", "googlenet", "inception_v3", "resnet18", "resnet34",
           "resnet50", "resnet101", "resnet152", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_lite0"]


def test_all_classic_networks_registered():
    assert set(CLASSIC) <= set(list_backbones())
    assert list_backbones()[1] == "efficientnet_lite0"


def test_duplicate_name_refused():
    spec = get_spec("lenet5")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(spec)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UnknownBackbone) as e:
        get_spec("resnet5O")
    assert "resnet50" in e.value.hint


def test_path_like_name_is_not_a_backbone(tmp_path):
    with pytest.raises(UnknownBackbone, match="looks like a file path"):
        get_spec(str(tmp_path / "model.pth"))


@pytest.mark.parametrize("name", ["lenet5", "resnet18", "efficientnet_lite0"])
def test_features_have_declared_width(name):
    net, _ = create_backbone(name, pretrained=False)
    size = get_spec(name).preprocess.input_size
    with torch.no_grad():
        f = net.forward_features(torch.randn(2, 3, size, size))
    assert f.shape == (2, get_spec(name).feature_dim)


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_has_its_declared_width_and_layers(name):
    """Shapes on the meta device (no weights, no arithmetic), so every registered network is cheap."""
    spec = get_spec(name)
    net = meta_backbone(spec)
    size = spec.preprocess.input_size
    f = net.forward_features(torch.empty(2, 3, size, size, device="meta"))
    assert f.shape == (2, spec.feature_dim)
    assert describe(name).layers >= 2  # at least one body layer and the head


@pytest.mark.parametrize("name", [n for n in list_backbones() if get_spec(n).family == "torchvision"])
def test_preprocessing_matches_torchvision_weights(name):
    """The table in builtin.py must agree with each DEFAULT weights' own transforms()."""
    import torchvision

    t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    pre = get_spec(name).preprocess
    assert pre.input_size == t.crop_size[0]
    assert pre.resize_size == t.resize_size[0]
    assert pre.mean == pytest.approx(tuple(t.mean))
    assert pre.std == pytest.approx(tuple(t.std))
    assert pre.interpolation == t.interpolation.value


def test_layer_counts_follow_one_definition():
    assert describe("vgg16").layers == 16
    assert describe("alexnet").layers == 8
    assert describe("resnet50").layers == 54  # 50 + 4 shortcut projections
    assert describe("efficientnet_lite0").layers == 50
    assert describe("lenet5").layers == 5


def test_missing_torchvision_weights_offline_fail_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    monkeypatch.setenv("TL_OFFLINE", "1")
    with pytest.raises(WeightsNotFound) as e:
        create_backbone("resnet18")
    dest = tmp_path / "empty_hub" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"{dest} is missing" in str(e.value) and "TL_OFFLINE=1" in str(e.value)
    assert "--no-pretrained" in e.value.hint
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in e.value.hint and str(dest) in e.value.hint


def test_torchvision_weights_urls_are_torchvisions_default(monkeypatch, tmp_path):
    """The URLs written in builtin.py, and the file paths, are torchvision's and torch.hub's."""
    import torch.hub
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    names = [n for n in list_backbones() if get_spec(n).family == "torchvision"]
    assert sorted(names) == sorted(TORCHVISION_FILES)
    for name in names:
        url = get_spec(name).weights_url
        assert url == torchvision.models.get_model_weights(name).DEFAULT.url
        assert torchvision_weights_file(name) == Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]


def test_torch_hub_cache_weights_are_found_and_loaded(monkeypatch, tmp_path):
    """Weights placed where torchvision downloads them are used (here: a state dict we write)."""
    import torchvision

    from tl_cli.backbones.builtin import torchvision_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub_home"))
    ref = torchvision.models.resnet18(weights=None)
    path = torchvision_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    net, choice = create_backbone("resnet18")
    assert choice.pretrained and choice.path == path
    x = torch.randn(1, 3, 64, 64)
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)


def test_weights_file_option_and_mismatch(tmp_path):
    import torchvision

    good = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), good)
    _, choice = create_backbone("resnet18", weights=good)
    assert choice.path == good.resolve()
    bad = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), bad)
    with pytest.raises(WeightsNotFound, match="does not match"):
        create_backbone("resnet18", weights=bad)
    with pytest.raises(WeightsNotFound, match="not found"):
        create_backbone("resnet18", weights=tmp_path / "nope.pth")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch EVIL_RAN",))


def test_pickled_code_in_weights_is_refused(tmp_path):
    import pickle

    f = tmp_path / "evil.pth"
    f.write_bytes(pickle.dumps({"x": _Evil()}, protocol=2))
    with pytest.raises(UnsafeFile):
        create_backbone("resnet18", weights=f)
    assert not (tmp_path / "EVIL_RAN").exists()


def test_no_pretrained_is_explicit_and_seeded():
    a, ca = create_backbone("resnet18", pretrained=False)
    b, _ = create_backbone("resnet18", pretrained=False)
    assert not ca.pretrained and ca.identity == "random-seed0"
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    assert resolve_weights(get_spec("lenet5")).path is None
