"""The learning-rate schedule per optimiser step: warm-up from above 0, cosine decay that reaches 0
after the last step, so no step of a run is wasted at learning rate 0."""

from __future__ import annotations

import pytest
import torch

from tl_cli.finetune.config import FinetuneConfig
from tl_cli.finetune.schedule import lr_factor, step_lr_factor, step_progress
from tl_cli.finetune.trainer import start
from tl_cli.runs.workspace import Workspace


@pytest.mark.parametrize("warmup", [0.0, 0.5, 1.0])
def test_no_step_runs_at_zero_and_the_curve_ends_after_the_last(warmup):
    epochs, n = 3, 4
    cfg = FinetuneConfig(epochs=epochs, warmup_epochs=warmup)
    factors = [step_lr_factor(cfg, e, i, n) for e in range(epochs) for i in range(n)]
    assert min(factors) > 0
    assert factors[-1] == pytest.approx(lr_factor(epochs - 1 / n, warmup, epochs))  # one step before the end
    assert lr_factor(epochs, warmup, epochs) == 0.0  # where the curve ends: after the last step
    if warmup:
        assert factors[0] == pytest.approx(1 / (n * warmup))  # warm-up steps take their end value
    decay = factors[int(warmup * n):]
    assert decay[0] == pytest.approx(1.0) and all(a > b for a, b in zip(decay, decay[1:]))


def test_warm_up_steps_are_unchanged_and_decay_steps_run_at_their_start():
    assert step_progress(0, 0, 4, 1.0) == 0.25
    assert step_progress(0, 3, 4, 1.0) == 1.0
    assert step_progress(1, 0, 4, 1.0) == 1.0
    assert step_progress(2, 3, 4, 1.0) == 2.75
    assert step_progress(0, 0, 4, 0.0) == 0.0


def test_the_last_optimiser_step_of_a_run_has_a_positive_learning_rate(image_folder, tmp_path, monkeypatch):
    """The rates the optimiser really stepped with: the last was 0 before the fix."""
    rates: list[float] = []
    real = torch.optim.AdamW.step

    def step(self, closure=None):
        rates.append(self.param_groups[-1]["lr"])  # the head's group
        return real(self, closure)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    cfg = FinetuneConfig(backbone="lenet5", pretrained=False, freeze=2, epochs=2, batch_size=8, workers=0, seed=0,
                         head_init="random", device="cpu")
    r = start(image_folder, cfg, Workspace.open(tmp_path / "ws"))
    cfg = r.config  # the learning rates as settled (AdamW's defaults: a random head has no probe to weigh)
    assert (cfg.optimizer, cfg.head_lr) == ("adamw", 3e-3)
    n = len(rates) // cfg.epochs
    assert len(rates) == n * cfg.epochs and n > 1
    assert min(rates) > 0
    assert rates == pytest.approx([cfg.head_lr * step_lr_factor(cfg, e, i, n) for e in range(2) for i in range(n)])
    assert rates[-1] == pytest.approx(cfg.head_lr * lr_factor(cfg.epochs - 1 / n, cfg.warmup_epochs, cfg.epochs))
    assert r.history[-1]["lr"] == pytest.approx(rates[-1])
