"""Issue 13, defect 1: out of memory retries forward/backward only; the optimizer steps once."""

from __future__ import annotations

import pytest
import torch

from tl_cli.errors import OutOfMemory
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.runs.workspace import Workspace


def _cfg(**kw) -> FinetuneConfig:
    base = dict(backbone="lenet5", pretrained=False, freeze=2, epochs=1, batch_size=8, workers=0, dropout=0.0,
                patience=0, seed=0, device="cpu", head_init="random")
    return FinetuneConfig(**{**base, **kw})


def _count_steps(monkeypatch, fail_first: bool = False) -> list[int]:
    """Count AdamW updates; with fail_first the first one runs out of memory halfway, as
    AdamW's lazy state creation can (exp_avg made, exp_avg_sq not)."""
    calls: list[int] = []
    real = torch.optim.AdamW.step

    def step(self, closure=None):
        calls.append(1)
        if fail_first and len(calls) == 1:
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p)  # half-made state
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real(self, closure)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return calls


def test_oom_in_forward_is_retried_but_each_batch_steps_once(image_folder, tmp_path, monkeypatch):
    from tl_cli.finetune.model import FinetuneModel
    from tl_cli.finetune.trainer import start

    real_forward = FinetuneModel.forward
    sizes: list[int] = []

    def forward(self, x):
        if self.training:
            sizes.append(x.shape[0])
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory")
        return real_forward(self, x)

    monkeypatch.setattr(FinetuneModel, "forward", forward)
    steps = _count_steps(monkeypatch)
    r = start(image_folder, _cfg(epochs=2), Workspace.open(tmp_path / "ws"))
    per_epoch = -(-r.n_train // 8)
    assert len(steps) == 2 * per_epoch  # retried passes never stepped the optimizer
    assert sizes[:3] == [8, 4, 2]


def test_oom_in_the_optimizer_update_is_an_error_not_a_retry(image_folder, tmp_path, monkeypatch):
    from tl_cli.finetune.trainer import start

    steps = _count_steps(monkeypatch, fail_first=True)
    with pytest.raises(OutOfMemory, match="optimizer update"):
        start(image_folder, _cfg(), Workspace.open(tmp_path / "ws"))
    assert len(steps) == 1  # the old code ran the half-done step again (KeyError: 'exp_avg_sq')


def test_accumulate_never_touches_weights_or_optimizer_state():
    from tl_cli.backbones import create_backbone
    from tl_cli.finetune.model import FinetuneModel
    from tl_cli.finetune.schedule import build_optimizer
    from tl_cli.finetune.step import accumulate

    torch.manual_seed(0)
    model = FinetuneModel(create_backbone("lenet5", pretrained=False)[0], 3, 2, 32, 0.0).train()
    opt = build_optimizer(model, _cfg())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    accumulate(model, opt, x, y, torch.nn.CrossEntropyLoss(), torch.device("cpu"), micro=3)
    assert not opt.state  # no moments yet: a retry starts from exactly this state
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
