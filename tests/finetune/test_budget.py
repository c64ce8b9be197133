"""--time-budget plans: a plan that no longer fits (slower epochs) is shortened, so the schedule still ends at zero."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from tests.helpers.finetune import Notes
from tl_cli.finetune import budget
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.finetune.schedule import lr_factor
from tl_cli.finetune.state import TrainState
from tl_cli.finetune.trainer import start
from tl_cli.runs.workspace import Workspace


def _cfg(**kw) -> FinetuneConfig:
    base = dict(backbone="lenet5", pretrained=False, freeze=2, batch_size=8, workers=0, patience=0, seed=0)
    return FinetuneConfig(**{**base, **kw})


def _replan(tmp_path, epochs: int, done: int, epoch_s: float, left: float):
    notes, state = Notes(), TrainState()
    state.epoch = done
    tr = SimpleNamespace(cfg=_cfg(epochs=epochs, time_budget=3000.0), reporter=notes, run_dir=tmp_path)
    return budget.replan(tr, state, epoch_s, time.perf_counter() + left), notes.lines


def test_replan_shortens_a_plan_that_no_longer_fits(tmp_path):
    # The flowers run of the study: 58 epochs planned at 44 s, then 65 s epochs from epoch 9 on.
    cfg, lines = _replan(tmp_path, epochs=58, done=13, epoch_s=65.0, left=2000.0)
    assert cfg.epochs == 13 + int(2000.0 // (65.0 * 1.05)) < 58
    assert len(lines) == 1 and lines[0].startswith(f"re-planned {cfg.epochs} epochs (was 58): the slowest epoch took 65 s")
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == cfg.epochs  # --resume follows the new plan


def test_replan_keeps_a_plan_that_fits_and_never_lengthens_one(tmp_path):
    for epoch_s in (30.0, 1.0):  # fits with room, and fits many times over
        cfg, lines = _replan(tmp_path, epochs=58, done=13, epoch_s=epoch_s, left=2000.0)
        assert cfg.epochs == 58 and lines == []
    assert not (tmp_path / "config.json").exists()


def test_a_slowed_run_is_replanned_and_its_schedule_ends_at_zero(image_folder, tmp_path, monkeypatch):
    # The clock is scripted (rank 0's seconds left, slowest epoch): after epoch 1, 1000 s left at
    # 100 s an epoch (the cap, 5, is planned); after epoch 2, 150 s left: only one more fits.
    clock = iter([(1000.0, 100.0), (150.0, 100.0)])
    monkeypatch.setattr(budget, "_clock", lambda epoch_s, deadline: next(clock))
    cfg = _cfg(epochs=5, time_budget=600.0, plan_epochs=True, warmup_epochs=1.0, mix=0.0)
    notes = Notes()
    res = start(image_folder, cfg, Workspace.open(tmp_path / "ws"), notes)
    assert [line.split(":")[0] for line in notes.lines if line.startswith(("planned", "re-planned"))] == [
        "planned 5 epochs", "re-planned 3 epochs (was 5)"], notes.lines
    assert json.loads((res.run_dir / "config.json").read_text())["epochs"] == 3
    assert res.stop_reason == "epochs" and len(res.history) == 4  # the probe and 3 epochs: not cut by the budget
    assert res.history[-1]["lr"] < 0.05 * res.config.head_lr  # the last epoch ran down to zero ...
    assert lr_factor(3, 1.0, 3) == 0.0  # ... where the new plan ends


def test_a_budget_with_no_room_for_another_epoch_says_so_instead_of_a_plan(tmp_path):
    """After the first epoch with less than an epoch's time left the loop stops: the line says that,
    not 'planned 2 epochs ... decays to zero at epoch 2' (a plan the run would not keep)."""
    notes, state = Notes(), TrainState()
    state.epoch, state.history = 1, [{"val_accuracy": 0.5}]
    tr = SimpleNamespace(cfg=_cfg(epochs=30, time_budget=6.0, plan_epochs=True, warmup_epochs=1.0, mix=0.0),
                         reporter=notes, run_dir=tmp_path)
    budget.plan(tr, state, 1.2, time.perf_counter() + 1.0)
    assert len(notes.lines) == 1 and "no further epoch fits, so the run ends here" in notes.lines[0], notes.lines
    cfg, lines = _replan(tmp_path, epochs=5, done=2, epoch_s=10.0, left=3.0)  # nor is such a plan "re-planned"
    assert cfg.epochs == 5 and lines == []
