"""--optimizer auto: SGD after a near-perfect probe, AdamW otherwise; decided once, saved, and replayed on resume."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.finetune import KillAfter
from tests.helpers.images import write_image
from tl_cli.finetune.checkpoint import load_checkpoint
from tl_cli.finetune.config import DEFAULT_LRS, SGD_AFTER_PROBE, FinetuneConfig
from tl_cli.finetune.trainer import resume, start
from tl_cli.runs.workspace import Workspace


def _cfg(**kw) -> FinetuneConfig:
    base = dict(backbone="lenet5", pretrained=False, freeze=2, epochs=2, batch_size=8, workers=0, patience=0, seed=0)
    return FinetuneConfig(**{**base, **kw})


@pytest.mark.parametrize(("probe", "expected"), [(None, "adamw"), (0.5, "adamw"), (SGD_AFTER_PROBE - 1e-9, "adamw"),
                                                 (SGD_AFTER_PROBE, "sgd"), (1.0, "sgd")])
def test_auto_picks_sgd_only_after_a_near_perfect_probe(probe, expected):
    name, lr, head_lr = _cfg().optimizer_settings(probe)
    assert name == expected and (lr, head_lr) == DEFAULT_LRS[("finetune", expected)]


def test_rates_given_are_kept_and_the_rest_follow_the_optimizer():
    assert _cfg(lr=5e-5).optimizer_settings(1.0) == ("sgd", 5e-5, 1e-2)
    assert _cfg(optimizer="adamw").optimizer_settings(1.0) == ("adamw", 3e-4, 3e-3)  # given: never switched
    assert FinetuneConfig.for_route("retrain").optimizer_settings() == ("adamw", 1e-4, 1e-3)
    assert FinetuneConfig.for_route("retrain").optimizer_settings(1.0) == ("sgd", 3e-4, 3e-3)
    assert _cfg(head_init="random").waits_for_probe is False and _cfg().waits_for_probe is True


def test_old_configs_with_numbers_load_unchanged():
    old = {**_cfg().to_dict(), "optimizer": "adamw", "lr": 3e-4, "head_lr": 3e-3}
    assert FinetuneConfig.from_dict(old).optimizer_settings(1.0) == ("adamw", 3e-4, 3e-3)


def test_near_perfect_probe_trains_with_sgd(image_folder, tmp_path):
    """The colour classes are separable: the probe scores 1.0, so SGD at its default rates trains."""
    res = start(image_folder, _cfg(), Workspace.open(tmp_path / "ws"))
    assert res.history[0]["val_accuracy"] >= SGD_AFTER_PROBE
    saved = FinetuneConfig.load(res.run_dir)
    assert (saved.optimizer, saved.lr, saved.head_lr) == ("sgd", 1e-3, 1e-2)
    state = load_checkpoint(res.run_dir)["optimizer"]
    assert "momentum_buffer" in next(iter(state["state"].values()))  # an SGD state, not AdamW's exp_avg
    assert res.config.optimizer == "sgd"


def test_weak_probe_trains_with_adamw(tmp_path):
    """Two classes of the same colour: the probe is at chance, so AdamW trains. Fixed seeds (hash() of
    a str changes with every process) and 24 images per class, so chance cannot score 0.97."""
    for k, c in enumerate(("a", "b")):
        for i in range(24):
            write_image(tmp_path / "data" / c / f"{c}{i}.png", (120, 120, 120), seed=1000 * k + i)
    res = start(tmp_path / "data", _cfg(), Workspace.open(tmp_path / "ws"))
    assert res.history[0]["val_accuracy"] < SGD_AFTER_PROBE
    saved = FinetuneConfig.load(res.run_dir)
    assert (saved.optimizer, saved.lr, saved.head_lr) == ("adamw", 3e-4, 3e-3)
    assert "exp_avg" in next(iter(load_checkpoint(res.run_dir)["optimizer"]["state"].values()))


def test_resume_after_the_probe_equals_uninterrupted(image_folder, tmp_path):
    ref = start(image_folder, _cfg(epochs=3), Workspace.open(tmp_path / "a"))
    ws = Workspace.open(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        start(image_folder, _cfg(epochs=3), ws, KillAfter(1))
    res = resume(workspace=ws)
    assert res.config.optimizer == "sgd"
    for a, b in zip(torch.load(ref.run_dir / "checkpoint.pt", weights_only=True)["model"].values(),
                    torch.load(res.run_dir / "checkpoint.pt", weights_only=True)["model"].values(), strict=True):
        assert torch.equal(a, b)
