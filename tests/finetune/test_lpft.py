"""LP-FT: `tl finetune --head-init probe` starts from the head `tl extract` would fit, scored as epoch 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.finetune import KillAfter, Notes, assert_same, last_weights, weights
from tl_cli.backbones import create_backbone, get_spec
from tl_cli.data.preprocess import load_tensor
from tl_cli.data.scan import scan_dataset
from tl_cli.finetune.checkpoint import load_checkpoint
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.finetune.trainer import resume, start
from tl_cli.head.softmax import train_head
from tl_cli.runs.store import load_run
from tl_cli.runs.workspace import Workspace


def cfg(**kw) -> FinetuneConfig:
    base = dict(backbone="lenet5", pretrained=False, freeze=2, epochs=3, batch_size=8, workers=0, lr=5e-3,
                head_lr=1e-2, patience=0, seed=0, dropout=0.3)
    return FinetuneConfig(**{**base, **kw})


@pytest.fixture
def hard_folder(tmp_path) -> Path:
    """Colours close enough (and noisy enough) that a probe on random LeNet features is not perfect."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "hard"
    for c, base in {"a": (120, 110, 100), "b": (110, 120, 100), "c": (100, 110, 120)}.items():
        (root / c).mkdir(parents=True)
        for i in range(14):
            px = np.clip(rng.normal(base, 40, size=(40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / c / f"{c}{i:02d}.png")
    return root


def reference_probe(data: Path):
    """The probe computed independently: the frozen backbone's features, one image at a time, and head.py."""
    spec = get_spec("lenet5")
    net, _ = create_backbone("lenet5", pretrained=False)
    net.eval()
    ds = scan_dataset(data, 0.2)

    def feats(split):
        samples = ds.split(split)
        with torch.no_grad():
            x = np.stack([net.forward_features(load_tensor(data / s.relpath, spec.preprocess)[None])[0].numpy()
                          for s in samples])
        return x, np.array([s.label for s in samples])

    (xt, yt), (xv, yv) = feats("train"), feats("val")
    head = train_head(xt, yt, xv, yv, len(ds.classes))
    logits = head.logits(xv).astype(np.float64)
    z = logits - logits.max(1, keepdims=True)
    val_loss = float((np.log(np.exp(z).sum(1)) - z[np.arange(len(yv)), yv]).mean())
    return head, val_loss


def test_epoch_0_is_the_probe_head(hard_folder):
    head, val_loss = reference_probe(hard_folder)
    assert 0.3 < head.val_accuracy < 1.0  # a real probe, neither chance nor trivially perfect
    notes = Notes()
    res = start(hard_folder, cfg(), Workspace.open(), notes)
    first = res.history[0]
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    assert first["val_accuracy"] == head.val_accuracy
    assert first["val_loss"] == pytest.approx(val_loss, rel=1e-4, abs=1e-6)
    assert first["lr"] == 0.0 and any("linear probe" in m for m in notes.lines)
    assert res.best["val_accuracy"] >= first["val_accuracy"]  # epoch 0 is a candidate for the best
    assert load_run(res.run_dir).meta.config["finetune"]["head_init"] == "probe"


def test_destructive_fine_tuning_keeps_the_probe(hard_folder):
    """A learning rate that wrecks the network: the saved model is the probe itself (epoch 0)."""
    head, _ = reference_probe(hard_folder)
    res = start(hard_folder, cfg(lr=3.0, head_lr=3.0, optimizer="sgd", warmup_epochs=0, epochs=3), Workspace.open())
    assert res.best_epoch == 0 and all(h["val_accuracy"] <= res.history[0]["val_accuracy"] for h in res.history)
    saved = weights(res.run_dir)
    w = [k for k in saved if k.endswith("classifier.1.weight")]
    assert len(w) == 1
    np.testing.assert_allclose(saved[w[0]].numpy(), head.weight, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(saved[w[0].replace("weight", "bias")].numpy(), head.bias, rtol=1e-3, atol=1e-4)
    assert load_run(res.run_dir).meta.best_epoch == 0


def test_random_head_has_no_epoch_0(hard_folder):
    res = start(hard_folder, cfg(head_init="random"), Workspace.open())
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    head, _ = reference_probe(hard_folder)
    assert res.history[0]["val_accuracy"] != head.val_accuracy or res.history[0]["val_loss"] > 0.1


@pytest.mark.parametrize("kill_after", [0, 2])
def test_resume_with_probe_equals_uninterrupted(hard_folder, tmp_path, kill_after):
    ref = start(hard_folder, cfg(), Workspace.open(tmp_path / "a"))
    ws = Workspace.open(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        start(hard_folder, cfg(), ws, KillAfter(kill_after))
    run_dir = Path(ws.state()["training_run"])
    assert load_checkpoint(run_dir)["epoch"] == kill_after
    notes = Notes()
    res = resume(workspace=ws, reporter=notes)
    assert not any("linear probe" in m for m in notes.lines)  # the probe is in the checkpoint, not redone
    assert_same(last_weights(run_dir), last_weights(ref.run_dir))
    assert_same(weights(run_dir), weights(ref.run_dir))
    assert [h["val_loss"] for h in res.history] == [h["val_loss"] for h in ref.history]


def test_probe_reuses_the_extract_cache(hard_folder, tmp_path):
    from tl_cli.features.extract import ExtractConfig, extract_features

    ws = Workspace.open(tmp_path / "ws")
    extract_features(hard_folder, ExtractConfig(backbone="lenet5", pretrained=False, engine="torch", workers=0), ws)
    notes = Notes()
    res = start(hard_folder, cfg(epochs=1), ws, notes)
    assert any("from the tl extract cache" in m for m in notes.lines)
    head, val_loss = reference_probe(hard_folder)
    assert res.history[0]["val_accuracy"] == head.val_accuracy
    assert res.history[0]["val_loss"] == pytest.approx(val_loss, rel=1e-4, abs=1e-6)


def test_head_init_is_a_saved_setting(hard_folder):
    from tl_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="head-init"):
        FinetuneConfig(head_init="zeros")
    assert FinetuneConfig.for_route("retrain").head_init == "probe"
    ws = Workspace.open()
    with pytest.raises(KeyboardInterrupt):
        start(hard_folder, cfg(), ws, KillAfter(1))
    with pytest.raises(ConfigError, match="head_init"):
        resume(overrides={"head_init": "random"}, workspace=ws)
