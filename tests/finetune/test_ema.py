"""The weight average (finetune/ema.py): its arithmetic, and that it is what a run validates, keeps and resumes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from tests.helpers.finetune import KillAfter, assert_same, last_weights, weights
from tl_cli.finetune.checkpoint import load_checkpoint
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.finetune.ema import WeightAverage, decay_per_step
from tl_cli.finetune.trainer import resume, start
from tl_cli.runs.store import load_run
from tl_cli.runs.workspace import Workspace


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    net[0].requires_grad_(False)  # frozen: never averaged
    return net


def test_average_matches_the_recurrence_computed_by_hand():
    net = _net()
    ema = WeightAverage(net, half_life_epochs=0.5, steps_per_epoch=4)
    d = 0.5 ** (1 / 2)
    expected = net[1].weight.detach().clone()
    for step in range(5):
        with torch.no_grad():
            net[1].weight.add_(float(step + 1))
        ema.update()
        expected = d * expected + (1 - d) * net[1].weight.detach()
    assert ema.names == ["1.weight", "1.bias"]
    torch.testing.assert_close(ema.state_dict()["1.weight"], expected, rtol=1e-6, atol=1e-6)


def test_half_life_counts_in_epochs_whatever_the_steps_per_epoch():
    for steps in (3, 40, 1000):
        d = decay_per_step(0.5, steps)
        assert d ** (steps / 2) == pytest.approx(0.5)  # an old weight's share halves in half an epoch


def test_applied_swaps_in_the_average_and_restores_the_training_weights():
    net = _net()
    ema = WeightAverage(net, 1.0, 10)
    start_w = net[1].weight.detach().clone()
    with torch.no_grad():
        net[1].weight.add_(1.0)
    trained = net[1].weight.detach().clone()
    ema.update()
    with ema.applied():
        torch.testing.assert_close(net[1].weight, ema.state_dict()["1.weight"])
        assert not torch.equal(net[1].weight, trained)
    assert torch.equal(net[1].weight, trained) and not torch.equal(ema.state_dict()["1.weight"], start_w)


def _cfg(**kw) -> FinetuneConfig:
    base = dict(backbone="lenet5", pretrained=False, freeze=2, epochs=3, batch_size=8, workers=0, lr=5e-3,
                head_lr=1e-2, patience=0, seed=0, ema=0.5)
    return FinetuneConfig(**{**base, **kw})


def test_the_kept_model_is_the_average_and_scores_what_validation_said(image_folder, tmp_path):
    from tl_cli.inference.evaluate import evaluate
    from tl_cli.inference.predict import Predictor

    # A random head and one epoch: that epoch is the kept one, so its weights must be the average.
    res = start(image_folder, _cfg(head_init="random", epochs=1), Workspace.open(tmp_path / "ws"))
    assert res.best_epoch == 1
    ckpt = load_checkpoint(res.run_dir)
    kept = weights(res.run_dir)
    for name, avg in ckpt["ema"].items():
        assert torch.equal(kept[name], avg), name
    assert any(not torch.equal(kept[n], ckpt["model"][n]) for n in ckpt["ema"])  # not the last step's weights
    ev = evaluate(Predictor(load_run(res.run_dir), device="cpu"), image_folder, split="val")
    assert ev.metrics["accuracy"] == pytest.approx(res.best["val_accuracy"])


def test_ema_off_keeps_the_last_steps_weights(image_folder, tmp_path):
    res = start(image_folder, _cfg(ema=0.0, head_init="random", epochs=1), Workspace.open(tmp_path / "ws"))
    ckpt = load_checkpoint(res.run_dir)
    assert "ema" not in ckpt and res.best_epoch == 1
    assert_same(weights(res.run_dir), {k: ckpt["model"][k] for k in weights(res.run_dir)})


def test_resume_continues_the_average_bit_for_bit(image_folder, tmp_path):
    ref = start(image_folder, _cfg(), Workspace.open(tmp_path / "a"))
    ws = Workspace.open(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        start(image_folder, _cfg(), ws, KillAfter(2))
    res = resume(None, {}, None, ws)
    assert_same(last_weights(res.run_dir), last_weights(ref.run_dir))
    assert_same(load_checkpoint(res.run_dir)["ema"], load_checkpoint(ref.run_dir)["ema"])
    assert_same(weights(res.run_dir), weights(ref.run_dir))


def test_runs_saved_before_the_average_existed_resume_without_it():
    old = dataclasses.asdict(_cfg())
    del old["ema"]
    assert FinetuneConfig.from_dict(old).ema == 0.0
    assert FinetuneConfig.from_dict({**old, "ema": 0.5}).ema == 0.5
