"""The rules from the fine-tuning study (benchmarks/finetune_study.md): batch-norm policy, the
best-epoch rule on small validation sets, and epochs planned to fit --time-budget."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from tests.helpers.finetune import Notes
from tl_cli.backbones import create_backbone
from tl_cli.finetune.config import PLAN_CAP, PLAN_CAP_MIXED, FinetuneConfig
from tl_cli.finetune.model import FinetuneModel
from tl_cli.finetune.schedule import lr_factor, planned_epochs
from tl_cli.finetune.state import TrainState, accuracy_noise, is_better, made_progress
from tl_cli.finetune.trainer import start
from tl_cli.runs.workspace import Workspace


def _norms(model):
    return [m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_bn_policy_modes_and_running_stats(bn):
    torch.manual_seed(0)
    model = FinetuneModel(create_backbone("lenet5", pretrained=False)[0], 3, freeze=1, input_size=32, dropout=0.0, bn=bn)
    model.train()
    first, second = _norms(model)  # lenet5: layer 1 (frozen) and layer 2 (trained) each have one
    before = second.running_mean.clone()
    x = torch.randn(8, 3, 32, 32) * 3 + 1
    out_train = model(x)
    model.eval()
    out_eval = model(x)
    assert not first.training  # frozen layers: always eval
    if bn == "frozen":
        assert not second.training and torch.equal(second.running_mean, before)
        # the model trains on exactly the function the probe head was fitted on (dropout 0)
        torch.testing.assert_close(out_train, out_eval)
    else:
        assert not torch.equal(second.running_mean, before)
        assert not torch.allclose(out_train, out_eval, atol=1e-3)
    assert second.weight.requires_grad  # scale and shift train under both policies


def test_bn_policy_is_a_checked_setting():
    assert FinetuneConfig().bn == "frozen"
    with pytest.raises(Exception, match="--bn"):
        FinetuneConfig(bn="sometimes")


def test_selection_keeps_the_probe_on_a_tiny_validation_set():
    # The sample_data case: 3 validation images, both perfect, val loss differs by 2e-6.
    probe = {"epoch": 0, "val_accuracy": 1.0, "val_loss": 3e-6}
    later = {"epoch": 2, "val_accuracy": 1.0, "val_loss": 1e-6}
    assert not is_better(later, probe, 3)
    assert is_better(probe, {}, 3)  # nothing yet: the first epoch is kept
    assert is_better({"epoch": 1, "val_accuracy": None, "val_loss": None}, probe, 0)  # no validation: latest


@pytest.mark.parametrize("acc, loss, expected", [
    (0.80, 0.70, True),    # +5 points on 859 images: far above one standard error (1.5 points)
    (0.76, 0.70, False),   # +1 point: within noise, loss no better
    (0.76, 0.50, True),    # within noise, loss lower by 17%: meaningful
    (0.76, 0.59, False),   # within noise, loss lower by 2%: not meaningful
    (0.73, 0.30, False),   # lower accuracy never wins on loss
    (0.70, 0.30, False),   # lower by more than noise
])
def test_selection_needs_more_than_noise(acc, loss, expected):
    best = {"epoch": 0, "val_accuracy": 0.75, "val_loss": 0.60}
    assert is_better({"epoch": 3, "val_accuracy": acc, "val_loss": loss}, best, 859) is expected


def test_accuracy_noise_is_a_binomial_standard_error():
    assert accuracy_noise(0.75, 0.75, 859) == pytest.approx((0.75 * 0.25 / 859) ** 0.5)
    assert accuracy_noise(1.0, 1.0, 106) == pytest.approx(0.5 / 106)  # half an image at a perfect score


def test_planned_epochs():
    assert planned_epochs(1, 600, 2000, 30) == 1 + int(2000 // 630)
    assert planned_epochs(1, 600, 100, 30) == 2  # at least one more (the budget check stops it if it won't fit)
    assert planned_epochs(1, 1, 1e6, 30) == 30


def test_for_route_plans_only_without_epochs():
    assert FinetuneConfig.for_route("finetune", freeze=2, time_budget=60).plan_epochs
    assert FinetuneConfig.for_route("finetune", freeze=2, time_budget=60).epochs == PLAN_CAP_MIXED  # the cap until planned
    assert not FinetuneConfig.for_route("finetune", freeze=2, time_budget=60, epochs=3).plan_epochs
    assert not FinetuneConfig.for_route("finetune", freeze=2).plan_epochs


@pytest.mark.parametrize(("mix", "probe", "cap"), [
    (None, 0.75, PLAN_CAP_MIXED), (None, None, PLAN_CAP_MIXED), (None, 1.0, PLAN_CAP), (1.0, 1.0, PLAN_CAP_MIXED),
    (0.3, 0.75, PLAN_CAP_MIXED), (0.0, 0.75, PLAN_CAP)])
def test_plan_cap_is_longer_only_for_runs_that_blend(mix, probe, cap):
    cfg = FinetuneConfig.for_route("finetune", freeze=2, time_budget=60, mix=mix)
    assert cfg.plan_cap(probe) == cap
    assert replace(cfg, epochs=3).plan_cap(probe) == 3  # a lower cap (tests) is kept either way


def test_planned_schedule_ends_at_zero_inside_the_budget(image_folder, tmp_path):
    # epochs=3 is the plan's cap here (PLAN_CAP for a real run), so the test is quick on a busy machine
    cfg = FinetuneConfig(backbone="lenet5", pretrained=False, freeze=2, batch_size=8, workers=0, patience=0,
                         time_budget=600.0, plan_epochs=True, epochs=3, warmup_epochs=1.0)
    notes = Notes()
    res = start(image_folder, cfg, Workspace.open(tmp_path / "ws"), notes)
    planned = [line for line in notes.lines if line.startswith("planned ")]
    assert len(planned) == 1, notes.lines
    saved = json.loads((res.run_dir / "config.json").read_text())
    n = saved["epochs"]
    assert saved["plan_epochs"] is False  # the saved config replays the plan, not the sizing
    assert n == 3 and f"planned {n} epochs" in planned[0] and "(the most planned)" in planned[0]
    assert res.stop_reason == "epochs" and len(res.history) == n + 1  # epoch 0 (the probe) and the plan, to its end ...
    assert res.history[-1]["lr"] < 0.05 * res.config.head_lr  # ... whose last step runs just above zero
    assert res.history[0]["epoch"] == 0  # the probe start (epoch 0) as usual
    assert lr_factor(n, 1.0, n) == 0.0


def _row(epoch, acc, loss):
    return {"epoch": epoch, "val_accuracy": acc, "val_loss": loss, "train_loss": 0.5, "train_accuracy": 0.8}


def test_early_stopping_follows_training_not_the_probe():
    # The first four epochs of the flowers run the study measured (--time-budget 2700, 19 epochs
    # planned): below the probe, but climbing. The old rule (no better than the kept model for
    # 4 epochs) stopped it here; training had made progress in epochs 2 and 3.
    cfg = FinetuneConfig(backbone="lenet5", pretrained=False, freeze=1, epochs=19, patience=4)
    state = TrainState()
    rows = [_row(0, 0.7544, 0.6589), _row(1, 0.7043, 0.7256), _row(2, 0.7183, 0.6973), _row(3, 0.7625, 0.6593),
            _row(4, 0.6973, 0.8465)]
    for r in rows:
        state.record(r, cfg, n_val=859)
    assert not state.finished and state.bad_epochs == 1
    assert state.best["epoch"] == 0  # the kept model is still the probe: 0.7625 is within noise of it
    for e in range(5, 7):  # two more epochs without progress (three in a row) ...
        state.record(_row(e, 0.75, 0.70), cfg, n_val=859)
    assert not state.finished
    state.record(_row(7, 0.75, 0.70), cfg, n_val=859)  # ... the fourth in a row stops the run
    assert state.finished and state.stop_reason == "early_stopping"


# Validation (accuracy, loss), epochs 0-31, of the 60-epoch flowers plan of
# benchmarks/finetune_study.md, section 20: its loss lowest at epoch 27 (0.4981), then 0.4999-0.5035.
PLATEAU_60 = [
    (0.7590, 0.6756), (0.7602, 0.6455), (0.7707, 0.6442), (0.7625, 0.6774), (0.7753, 0.6833), (0.7811, 0.6832),
    (0.7881, 0.6550), (0.8021, 0.6362), (0.8102, 0.6216), (0.8114, 0.6045), (0.8219, 0.5899), (0.8219, 0.5764),
    (0.8265, 0.5595), (0.8289, 0.5508), (0.8254, 0.5457), (0.8393, 0.5455), (0.8417, 0.5415), (0.8475, 0.5334),
    (0.8475, 0.5240), (0.8393, 0.5160), (0.8417, 0.5162), (0.8370, 0.5127), (0.8417, 0.5064), (0.8405, 0.5026),
    (0.8393, 0.4990), (0.8417, 0.4991), (0.8428, 0.4994), (0.8393, 0.4981), (0.8382, 0.4999), (0.8382, 0.5004),
    (0.8359, 0.4999), (0.8347, 0.5035)]


def test_a_plateau_stops_the_run_even_with_the_learning_rate_at_half_its_peak():
    # Measured both ways (section 20): run on to epoch 60 as the rate decayed, this plan scored
    # 0.826-0.837 and kept the same epoch 17, in 10 more minutes. Plateau epochs count.
    cfg = FinetuneConfig(backbone="lenet5", pretrained=False, freeze=1, epochs=60, patience=4)
    state = TrainState()
    for e, (acc, loss) in enumerate(PLATEAU_60):
        assert not state.finished
        state.record(_row(e, acc, loss), cfg, n_val=859)
    assert state.finished and state.stop_reason == "early_stopping" and state.epoch == 31


def test_progress_is_accuracy_or_loss_better_than_every_earlier_finetuning_epoch():
    assert made_progress(_row(1, 0.5, 1.0), {})
    best = {"val_accuracy": 0.8, "val_loss": 0.5}
    assert made_progress(_row(2, 0.81, 0.9), best) and made_progress(_row(2, 0.7, 0.49), best)
    assert not made_progress(_row(2, 0.8, 0.5), best) and not made_progress(_row(2, 0.79, 0.6), best)


def test_a_checkpoint_from_before_progress_was_tracked_resumes():
    old = {"epoch": 3, "best": {"epoch": 1}, "bad_epochs": 2, "history": [], "finished": False, "stop_reason": "epochs"}
    assert TrainState.from_checkpoint(old).progress == {}  # the next epoch then counts as progress
