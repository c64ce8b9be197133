"""--mix auto: blend batches only where the features must adapt and the run is long enough to repay it."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.finetune import Notes
from tests.helpers.images import write_image
from tl_cli.finetune import config as config_module
from tl_cli.finetune.config import MIX_AUTO, MIX_MIN_EPOCHS, SGD_AFTER_PROBE, FinetuneConfig
from tl_cli.finetune.trainer import start
from tl_cli.runs.workspace import Workspace


def _cfg(**kw) -> FinetuneConfig:
    base = dict(backbone="lenet5", pretrained=False, freeze=2, epochs=2, batch_size=8, workers=0, patience=0, seed=0)
    return FinetuneConfig(**{**base, **kw})


@pytest.mark.parametrize(("probe", "epochs", "expected"), [
    (0.5, MIX_MIN_EPOCHS, MIX_AUTO), (None, 30, MIX_AUTO), (SGD_AFTER_PROBE - 1e-9, 30, MIX_AUTO),
    (SGD_AFTER_PROBE, 30, 0.0), (1.0, 30, 0.0), (0.5, MIX_MIN_EPOCHS - 1, 0.0), (0.5, 2, 0.0)])
def test_rule(probe, epochs, expected):
    assert _cfg(epochs=epochs).auto_mix(probe) == expected
    assert _cfg(epochs=epochs).settled(probe).mix == expected


def test_given_share_is_kept_and_a_planned_run_waits():
    assert _cfg(epochs=30, mix=0.3).settled(0.5).mix == 0.3
    assert _cfg(epochs=30, mix=0.0).settled(0.5).mix == 0.0
    planned = _cfg(epochs=30, time_budget=600.0, plan_epochs=True, warmup_epochs=1.0)
    assert planned.settled(0.5).mix is None  # decided when the epochs are known (trainer._plan)
    assert _cfg(mix=0.0, optimizer="adamw").waits_for_probe is False and _cfg(optimizer="adamw").waits_for_probe is True
    with pytest.raises(Exception, match="--mix"):
        _cfg(mix=1.5)


def test_old_runs_without_the_setting_stay_unmixed():
    old = {k: v for k, v in _cfg().to_dict().items() if k != "mix"}
    assert FinetuneConfig.from_dict(old).mix == 0.0


def _same_colour_data(root):
    """Two classes of one colour: the probe is near chance, so the features must adapt."""
    for k, c in enumerate(("a", "b")):
        for i in range(24):
            write_image(root / c / f"{c}{i}.png", (120, 120, 120), seed=1000 * k + i)
    return root


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_weak_probe_long_run_trains_exactly_as_mix_1(tmp_path, monkeypatch):
    data = _same_colour_data(tmp_path / "data")
    monkeypatch.setattr(config_module, "MIX_MIN_EPOCHS", 2)  # "long" for a two-epoch test
    notes = Notes()
    auto = start(data, _cfg(), Workspace.open(tmp_path / "a"), notes)
    assert auto.history[0]["val_accuracy"] < SGD_AFTER_PROBE
    assert json.loads((auto.run_dir / "config.json").read_text())["mix"] == MIX_AUTO
    assert any(line.startswith(f"mix: {MIX_AUTO:g} ") and "(--mix auto)" in line for line in notes.lines), notes.lines
    given = start(data, _cfg(mix=MIX_AUTO), Workspace.open(tmp_path / "b"))
    off = start(data, _cfg(mix=0.0), Workspace.open(tmp_path / "c"))
    a, g, o = _weights(auto.run_dir), _weights(given.run_dir), _weights(off.run_dir)
    assert all(torch.equal(a[k], g[k]) for k in a)
    assert any(not torch.equal(a[k], o[k]) for k in a)


def test_near_perfect_probe_is_not_mixed(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "MIX_MIN_EPOCHS", 2)
    notes = Notes()
    res = start(image_folder, _cfg(), Workspace.open(tmp_path / "ws"), notes)
    assert res.history[0]["val_accuracy"] >= SGD_AFTER_PROBE
    assert json.loads((res.run_dir / "config.json").read_text())["mix"] == 0.0
    assert any(line.startswith("mix: off: the probe scores") for line in notes.lines), notes.lines


@pytest.mark.parametrize(("min_epochs", "expected"), [(3, MIX_AUTO), (4, 0.0)])
def test_planned_run_decides_at_the_plan(tmp_path, monkeypatch, min_epochs, expected):
    data = _same_colour_data(tmp_path / "data")
    monkeypatch.setattr(config_module, "MIX_MIN_EPOCHS", min_epochs)
    cfg = _cfg(epochs=3, time_budget=600.0, plan_epochs=True, warmup_epochs=1.0)  # cap 3: plans 3 epochs
    notes = Notes()
    res = start(data, cfg, Workspace.open(tmp_path / "ws"), notes)
    saved = json.loads((res.run_dir / "config.json").read_text())
    assert saved["epochs"] == 3 and saved["plan_epochs"] is False and saved["mix"] == expected
    planned = next(i for i, line in enumerate(notes.lines) if line.startswith("planned 3 epochs"))
    mix_lines = [i for i, line in enumerate(notes.lines) if line.startswith("mix: ")]
    assert mix_lines == [planned + 1], notes.lines  # said once, right after the plan
    assert ("too few" in notes.lines[planned + 1]) == (expected == 0.0)


@pytest.mark.parametrize(("mix", "planned"), [(None, 3), (0.0, 2)])
def test_only_a_blended_plan_may_pass_the_unmixed_cap(tmp_path, monkeypatch, mix, planned):
    # PLAN_CAP 2 and a cap of 3 stand in for 30 and PLAN_CAP_MIXED: the same weak-probe data, a budget
    # with room for both; the auto run blends, so it may plan past PLAN_CAP, the unmixed one may not.
    data = _same_colour_data(tmp_path / "data")
    monkeypatch.setattr(config_module, "MIX_MIN_EPOCHS", 3)
    monkeypatch.setattr(config_module, "PLAN_CAP", 2)
    cfg = _cfg(epochs=3, time_budget=600.0, plan_epochs=True, warmup_epochs=1.0, mix=mix)
    notes = Notes()
    res = start(data, cfg, Workspace.open(tmp_path / "ws"), notes)
    saved = json.loads((res.run_dir / "config.json").read_text())
    assert saved["epochs"] == planned and saved["mix"] == (MIX_AUTO if mix is None else 0.0)
    assert any(line.startswith(f"planned {planned} epochs") and line.endswith("(the most planned)")
               for line in notes.lines), notes.lines
    assert len(res.history) == planned + 1
