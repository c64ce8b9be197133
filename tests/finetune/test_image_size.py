"""Fine-tuning small photos at their own size: decided once, saved, replayed on resume, and used by prediction."""

from __future__ import annotations

import json

import pytest

from tl_cli.errors import ConfigError
from tl_cli.finetune.config import CONFIG_FILE, FinetuneConfig
from tl_cli.finetune.trainer import resume, start
from tl_cli.inference.evaluate import evaluate
from tl_cli.inference.predict import Predictor
from tl_cli.runs.store import load_run
from tl_cli.runs.workspace import Workspace


def _cfg(**kw) -> FinetuneConfig:
    # resnet18 (224 px) on the 40x32-px test images; random weights, one epoch: cheap, and the size rule shows.
    base = dict(backbone="resnet18", pretrained=False, freeze=8, epochs=1, batch_size=8, workers=0, patience=0,
                head_init="random", augment=False)
    return FinetuneConfig(**{**base, **kw})


def test_small_images_train_and_predict_at_128(image_folder, tmp_path):
    res = start(image_folder, _cfg(), Workspace.open(tmp_path / "ws"))
    assert json.loads((res.run_dir / CONFIG_FILE).read_text())["image_size"] == 128  # decided and saved
    run = load_run(res.run_dir)
    assert (run.preprocess.input_size, run.preprocess.resize_size) == (128, 146)
    ev = evaluate(Predictor(run, device="cpu"), image_folder, split="val")
    assert ev.metrics["accuracy"] == pytest.approx(res.best["val_accuracy"])  # prediction feeds what training validated


def test_the_size_given_is_kept(image_folder, tmp_path):
    res = start(image_folder, _cfg(image_size=224), Workspace.open(tmp_path / "ws"))
    assert load_run(res.run_dir).preprocess.input_size == 224


def test_resume_replays_the_decided_size_and_refuses_another(image_folder, tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    res = start(image_folder, _cfg(epochs=2), ws)
    saved = FinetuneConfig.load(res.run_dir)
    assert saved.image_size == 128
    with pytest.raises(ConfigError, match="image_size"):
        resume(res.run_dir, {"image_size": 224}, workspace=ws)


def test_runs_saved_before_the_setting_train_at_the_backbones_size():
    old = {k: v for k, v in _cfg().to_dict().items() if k != "image_size"}
    assert FinetuneConfig.from_dict(old).image_size == 0  # 0: the backbone's input size, as those runs trained
