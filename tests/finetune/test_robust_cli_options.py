"""Out-of-range fine-tuning settings: one clear line (exit 2), never an internal error mid-run; and a
damaged config.json or a changed setting on --resume named as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tl_cli.cli import app
from tl_cli.errors import ConfigError, RunError
from tl_cli.finetune.config import MAX_IMAGE_SIZE, MAX_SEED, FinetuneConfig

runner = CliRunner()
LENET = ["--backbone", "lenet5", "--no-pretrained", "--workers", "0", "--freeze", "2"]


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("args, message", [
    (["--time-budget", "inf"], "--time-budget must be a finite number of seconds > 0, got inf"),
    (["--seed", "99999999999999999999"], f"--seed must be in [0, {MAX_SEED}], got 99999999999999999999"),
    (["--seed", "-1"], f"--seed must be in [0, {MAX_SEED}]"),
    (["--image-size", "100000"], f"--image-size must be in [32, {MAX_IMAGE_SIZE}] pixels, got 100000"),
    (["--image-size", "64"], "--image-size 64 does not fit lenet5 (trained at 32 px)"),  # a fixed-size network
    (["--lr", "inf"], "learning rates must be positive finite numbers (lr inf"),
    (["--lr", "0"], "learning rates must be positive finite numbers (lr 0.0"),
    (["--head-lr", "inf"], "learning rates must be positive finite numbers (lr None, head lr inf)"),
    (["--head-lr", "nan"], "learning rates must be positive finite numbers (lr None, head lr nan)"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0, got inf"),
    (["--ema", "inf"], "--ema must be a finite number >= 0 epochs"),
])
def test_out_of_range_settings_are_one_line_errors(image_folder, args, message):
    r = tl("finetune", image_folder, *LENET, *args)
    assert r.exit_code == 2, r.output
    assert f"error: {message}" in " ".join(r.output.split()), r.output
    assert "internal error" not in r.output
    assert not (Path("ws") / "runs").exists()  # refused before a run folder was made


def test_limits_are_inclusive():
    assert FinetuneConfig(seed=MAX_SEED, image_size=MAX_IMAGE_SIZE).seed == MAX_SEED
    with pytest.raises(ConfigError):
        FinetuneConfig(seed=MAX_SEED + 1)


def saved_run(tmp_path: Path, **settings) -> Path:
    """A run folder holding only config.json: all --resume reads before the checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    FinetuneConfig(backbone="lenet5", pretrained=False, freeze=2, **settings).save(run)
    return run


def test_resume_with_other_epochs_names_the_change_not_the_warmup(tmp_path):
    run = saved_run(tmp_path, epochs=40)
    for epochs in ("1", "3"):  # --epochs 1 used to fail the warm-up check (1.0 in [0, 1)) first
        r = tl("finetune", "--resume", "--run", run, "--epochs", epochs)
        assert r.exit_code == 2, r.output
        assert f"cannot change epochs (saved 40, given {epochs}) when resuming" in r.output


def test_resume_still_takes_resource_settings_and_checks_them(tmp_path):
    cfg = FinetuneConfig.load(saved_run(tmp_path, epochs=4))
    assert cfg.with_resume_overrides({"time_budget": 60.0, "epochs": 4}).time_budget == 60.0
    with pytest.raises(ConfigError, match="--time-budget must be a finite"):
        cfg.with_resume_overrides({"time_budget": float("inf")})


@pytest.mark.parametrize("text, why", [
    ("[]", "not a JSON object (got list)"),
    ("{}", "missing settings: route, backbone, freeze, epochs"),
    ('{"route": "finetune", "backbone": "lenet5", "freeze": 2, "epochs": "ten"}', "FinetuneConfig.epochs must be int, got 'ten'"),
    ('{"route": "finetune", "backbone": "lenet5", "freeze": 2, "epochs": 0}', "--epochs must be >= 1"),
])
def test_damaged_config_json_is_one_line(tmp_path, text, why):
    run = saved_run(tmp_path)
    (run / "config.json").write_text(text)
    with pytest.raises(RunError, match="damaged run config"):
        FinetuneConfig.load(run)
    r = tl("finetune", "--resume", "--run", run)
    assert r.exit_code == 2, r.output
    assert f"error: damaged run config {run / 'config.json'}: {why}" in " ".join(r.output.split())
    assert "internal error" not in r.output


def test_non_finite_numbers_are_written_as_null(tmp_path):
    from tl_cli.runs.store import write_run_json

    write_run_json(tmp_path / "x.json", {"val_loss": float("nan"), "a": [float("inf"), 1.5], "b": (-float("inf"),)})
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"val_loss": None, "a": [None, 1.5], "b": [None]}
