"""--mix: mixup / CutMix batches whose label weights match the pixels blended, reproducible and resumable."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.finetune import KillAfter, assert_same, last_weights
from tl_cli.errors import ConfigError
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.finetune.mix import mix_batch
from tl_cli.finetune.trainer import resume, start
from tl_cli.runs.workspace import Workspace


def _batch(n=8, side=16):
    """Image i is the constant i + 1 everywhere, with class i: a pixel's value says whose it is."""
    values = torch.arange(1, n + 1, dtype=torch.float32)
    return values[:, None, None, None].expand(n, 3, side, side).clone(), torch.arange(n), values


@pytest.mark.parametrize("step", range(12))  # both kinds, several draws each
def test_label_weights_equal_the_share_of_each_image_in_the_pixels(step):
    x, y, values = _batch()
    mixed, targets = mix_batch(x, y, 8, 1.0, seed=0, epoch=0, step=step)
    assert targets.shape == (8, 8) and torch.allclose(targets.sum(1), torch.ones(8))
    assert torch.allclose(mixed.mean(dim=(1, 2, 3)), targets @ values, atol=1e-5)
    assert not torch.equal(mixed, x) or torch.equal(targets.argmax(1), y)


def test_both_kinds_are_used_and_draws_are_reproducible():
    x, y, _ = _batch()
    kinds = set()
    for step in range(20):
        a = mix_batch(x, y, 8, 1.0, seed=0, epoch=1, step=step)
        b = mix_batch(x, y, 8, 1.0, seed=0, epoch=1, step=step)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        distinct = len(torch.unique(a[0][0]))  # mixup: one blended value; CutMix: two
        kinds.add("mixup" if distinct == 1 else "cutmix")
    assert kinds == {"mixup", "cutmix"}
    assert not torch.equal(mix_batch(x, y, 8, 1.0, 0, 1, 0)[0], mix_batch(x, y, 8, 1.0, 0, 1, 1)[0])


def test_off_or_a_share_leaves_batches_untouched():
    x, y, _ = _batch()
    out_x, out_y = mix_batch(x, y, 8, 0.0, 0, 0, 0)
    assert out_x is x and out_y is y
    untouched = sum(mix_batch(x, y, 8, 0.3, 0, 0, s)[1].ndim == 1 for s in range(200))
    assert 110 < untouched < 170  # about 70% of 200
    with pytest.raises(ConfigError, match="mix"):
        FinetuneConfig(mix=1.5)


def test_runs_with_mix_resume_bit_identically(image_folder, tmp_path):
    cfg = FinetuneConfig(backbone="lenet5", pretrained=False, freeze=1, epochs=3, batch_size=8, workers=0,
                         patience=0, head_init="random", mix=1.0)
    ref = start(image_folder, cfg, Workspace.open(tmp_path / "a"))
    ws = Workspace.open(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        start(image_folder, cfg, ws, KillAfter(1))
    res = resume(workspace=ws)
    assert_same(last_weights(res.run_dir), last_weights(ref.run_dir))
    plain = start(image_folder, FinetuneConfig(**{**cfg.to_dict(), "mix": 0.0}), Workspace.open(tmp_path / "c"))
    assert ref.history[1]["train_loss"] != plain.history[1]["train_loss"]  # the blend is really trained on
