"""--freeze k: after real optimisation steps, layers 1..k (weights and batch-norm buffers) are
bit-identical to the starting weights and the later layers have moved."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tl_cli.backbones import create_backbone
from tl_cli.errors import ConfigError
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.finetune.model import FinetuneModel
from tl_cli.finetune.schedule import build_optimizer, lr_factor
from tl_cli.finetune.step import train_step

# (backbone, k, input side): small inputs keep the steps fast; the layer numbering does not
# depend on the input size for these networks.
CASES = [("resnet18", 9, 64), ("vgg16_bn", 10, 32), ("efficientnet_lite0", 36, 64), ("lenet5", 2, 32)]


def _tensors_of(model: FinetuneModel, names: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        mod = model.net.get_submodule(name)
        for k, v in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            out[f"{name}.{k}"] = v.detach().clone()
    return out


@pytest.mark.parametrize("name,k,side", CASES)
def test_frozen_layers_bit_identical_after_training(name, k, side):
    torch.manual_seed(0)
    net, _ = create_backbone(name, pretrained=False)  # random weights stand in for pretrained ones
    # bn="train": the trained layers' running statistics move too (the default "frozen" keeps them, test_ftstudy_rules)
    model = FinetuneModel(net, n_classes=3, freeze=k, input_size=side, dropout=0.1, bn="train")
    cfg = FinetuneConfig(backbone=name, freeze=k, lr=1e-3, head_lr=1e-2, epochs=2)
    frozen_names = [n for layer in model.layers[:k] for n in (layer.name, *layer.norms)]
    later_names = [n for layer in model.layers[k:] for n in (layer.name, *layer.norms)]
    before_frozen = _tensors_of(model, frozen_names)
    before_later = _tensors_of(model, later_names)
    opt = build_optimizer(model, cfg)
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    for step in range(3):
        x = torch.randn(4, 3, side, side)
        y = torch.tensor([0, 1, 2, step % 3])
        train_step(model, opt, x, y, loss_fn, torch.device("cpu"))

    after_frozen = _tensors_of(model, frozen_names)
    for key, v in before_frozen.items():
        assert torch.equal(v, after_frozen[key]), f"{name}: frozen {key} changed"
    # Batch-norm buffers are among the checked tensors (running stats of frozen layers fixed).
    assert any(key.endswith("running_mean") for key in before_frozen) == any(layer.norms for layer in model.layers[:k])
    after_later = _tensors_of(model, later_names)
    for layer in model.layers[k:]:
        w = f"{layer.name}.weight"
        assert not torch.equal(before_later[w], after_later[w]), f"{name}: trained layer {layer.index} ({w}) did not change"
    for norm in (n for layer in model.layers[k:] for n in layer.norms):
        key = f"{norm}.running_mean"
        if key in before_later:
            assert not torch.equal(before_later[key], after_later[key]), f"{name}: {key} did not update"
    # Frozen layers did no backward work: none of their parameters received a gradient.
    for n in frozen_names:
        assert all(p.grad is None for p in model.net.get_submodule(n).parameters(recurse=False))


def test_frozen_norms_stay_in_eval_mode_while_training():
    net, _ = create_backbone("lenet5", pretrained=False)
    model = FinetuneModel(net, 3, freeze=1, input_size=32, bn="train")  # "frozen" (default): both eval, test_ftstudy_rules
    model.train()
    bn1, bn2 = model.net.get_submodule("net.features.1"), model.net.get_submodule("net.features.5")
    assert not bn1.training and bn2.training
    model.eval()
    assert not bn2.training


def test_freeze_count_matches_layers_and_too_large_names_the_count():
    net, _ = create_backbone("lenet5", pretrained=False)
    with pytest.raises(ConfigError, match="has 5 layers"):
        FinetuneModel(net, 3, freeze=5, input_size=32)
    net, _ = create_backbone("lenet5", pretrained=False)
    m = FinetuneModel(net, 3, freeze=4, input_size=32)
    trainable, frozen = m.count_parameters()
    assert trainable == sum(p.numel() for p in m.head_parameters())  # --freeze 4 of 5 trains the head only
    assert m.layers[-1].name == "classifier.1"


def test_schedule_warmup_then_cosine():
    assert lr_factor(0.5, 1, 10) == pytest.approx(0.5)
    assert lr_factor(1.0, 1, 10) == pytest.approx(1.0)
    assert lr_factor(5.5, 1, 10) == pytest.approx(0.5)
    assert lr_factor(10, 1, 10) == pytest.approx(0.0)
    assert lr_factor(3, 0, 10) < lr_factor(2, 0, 10)


def test_retrain_defaults_and_validation():
    r = FinetuneConfig.for_route("retrain")
    _, lr, head_lr = r.optimizer_settings()
    assert r.freeze == 0 and lr < head_lr
    assert lr < FinetuneConfig.for_route("finetune").optimizer_settings()[1]  # every layer moves: a lower rate
    with pytest.raises(ConfigError, match="retrain"):
        FinetuneConfig(route="retrain", freeze=3)
    with pytest.raises(ConfigError, match="optimizer"):
        FinetuneConfig(optimizer="adam")
    assert FinetuneConfig(epochs=1).warmup_epochs == pytest.approx(0.2)  # a 1-epoch run is valid
    assert FinetuneConfig(epochs=10).warmup_epochs == 1.0
    with pytest.raises(ConfigError, match="warmup"):
        FinetuneConfig(epochs=2, warmup_epochs=2)


def test_resume_overrides_only_resource_settings():
    cfg = FinetuneConfig(freeze=3, batch_size=8)
    assert cfg.with_resume_overrides({"batch_size": 16, "workers": 2}).batch_size == 16
    assert cfg.with_resume_overrides({"freeze": 3}).freeze == 3  # same value: fine
    with pytest.raises(ConfigError, match="lr"):
        cfg.with_resume_overrides({"lr": 1.0})


def test_resume_accepts_the_same_relative_weights_path(tmp_path, monkeypatch):
    """A relative --weights is saved absolute; giving the same relative path on --resume is no change."""
    monkeypatch.chdir(tmp_path)
    cfg = FinetuneConfig(freeze=1, weights="w.pth")
    assert cfg.weights == str(tmp_path / "w.pth")
    assert cfg.with_resume_overrides({"weights": "w.pth"}) == cfg
    with pytest.raises(ConfigError, match="weights"):
        cfg.with_resume_overrides({"weights": "other.pth"})


@pytest.mark.parametrize("name", ["lenet5", "resnet18", "efficientnet_lite0"])
def test_finetune_numbers_layers_like_tl_layers(name):
    from tl_cli.backbones import get_spec
    from tl_cli.backbones.describe import meta_backbone
    from tl_cli.backbones.layers import enumerate_layers

    spec = get_spec(name)
    shown = enumerate_layers(meta_backbone(spec), spec.preprocess.input_size)  # what `tl layers` prints
    net, _ = create_backbone(name, pretrained=False)
    model = FinetuneModel(net, 3, 1, spec.preprocess.input_size)
    assert len(model.layers) == len(shown)
    assert [(x.index, x.name, x.kind, x.params) for x in model.layers[:-1]] == \
        [(x.index, x.name, x.kind, x.params) for x in shown[:-1]]
    assert model.layers[-1].kind == "Linear" and model.layers[-1].output_shape == (3,)  # the new head
