"""Out of memory halves the batch and goes on (simulated on CPU); extraction is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_cli.errors import OutOfMemory
from tl_cli.features.extract import ExtractConfig, extract_features
from tl_cli.runs.workspace import Workspace
from tl_cli.runtime.oom import HalvingForward, is_oom

LENET = ExtractConfig(backbone="lenet5", pretrained=False, workers=0, batch_size=8)


def torch_engine(cfg: ExtractConfig) -> ExtractConfig:
    """Run the PyTorch module (where the simulated OOM lives), where engines are selectable."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, engine="torch") if "engine" in fields else cfg


class FakeGPU:
    """Stands in for a device with room for `room` images: bigger batches raise CUDA's OOM."""

    def __init__(self, fn, room: int, error=lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        self.fn, self.room, self.error = fn, room, error
        self.calls: list[int] = []

    def __call__(self, x):
        self.calls.append(x.shape[0])
        if x.shape[0] > self.room:
            raise self.error()
        return self.fn(x)


def test_halving_keeps_finished_rows_and_the_smaller_size():
    fake = FakeGPU(lambda x: x * 2, room=3)
    sizes = []
    fwd = HalvingForward(fake, on_halve=sizes.append)
    x = torch.arange(10.0).view(10, 1)
    torch.testing.assert_close(fwd(x), x * 2)
    assert sizes == [5, 2] and fwd.limit == 2
    assert fake.calls == [10, 5, 2, 2, 2, 2, 2]  # never retries rows already done
    fake.calls.clear()
    torch.testing.assert_close(fwd(x[:4]), x[:4] * 2)
    assert fake.calls == [2, 2]  # the OOM is paid once


@pytest.mark.parametrize("error", [
    lambda: torch.OutOfMemoryError("CUDA out of memory"),
    lambda: RuntimeError("CUDA error: out of memory"),
    lambda: RuntimeError("MPS backend out of memory"),
])
def test_oom_kinds_are_recognised(error):
    assert is_oom(error())
    fwd = HalvingForward(FakeGPU(lambda x: x.numpy(), room=1, error=error))
    np.testing.assert_array_equal(fwd(torch.ones(4, 2)), np.ones((4, 2)))


def test_other_errors_are_not_swallowed_and_one_row_oom_is_a_clear_error():
    assert not is_oom(RuntimeError("size mismatch"))
    with pytest.raises(RuntimeError, match="size mismatch"):
        HalvingForward(FakeGPU(lambda x: x, room=0, error=lambda: RuntimeError("size mismatch")))(torch.ones(4, 1))
    with pytest.raises(OutOfMemory, match="batch of one image"):
        HalvingForward(FakeGPU(lambda x: x, room=0))(torch.ones(4, 1))


def test_extract_with_simulated_oom_gives_the_normal_features(image_folder, tmp_path, monkeypatch):
    from tl_cli.backbones.wrapper import Backbone

    normal = extract_features(image_folder, LENET, Workspace.open(tmp_path / "ws_normal"))
    real_forward = Backbone.forward_features
    calls = []

    def forward_on_a_small_gpu(self, x):  # the network itself runs out of memory above 3 images
        calls.append(x.shape[0])
        if x.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, x)

    monkeypatch.setattr(Backbone, "forward_features", forward_on_a_small_gpu)
    big = ExtractConfig(**{**LENET.to_dict(), "batch_size": 16})
    r = extract_features(image_folder, torch_engine(big))
    np.testing.assert_allclose(r.features, normal.features, rtol=1e-5, atol=1e-6)
    assert r.relpaths == normal.relpaths and r.n_extracted == 36
    assert any("out of memory" in n and "continued with 2" in n for n in r.notes), r.notes
    # 16 -> 8 -> 4 -> 2 once; every later slice goes straight to 2 (batches of 16, 16, 4 images)
    assert calls[:3] == [16, 8, 4] and set(calls[3:]) == {2} and sum(calls[3:]) == 36


def test_two_extract_runs_give_identical_features(image_folder, tmp_path):
    a = extract_features(image_folder, LENET, Workspace.open(tmp_path / "ws_a"))
    b = extract_features(image_folder, LENET, Workspace.open(tmp_path / "ws_b"))
    assert a.n_extracted == b.n_extracted == 36 and a.relpaths == b.relpaths
    np.testing.assert_array_equal(a.features, b.features)  # bit for bit, not just close
    assert a.fingerprint == b.fingerprint


def test_features_do_not_depend_on_batch_size_or_workers(image_folder, tmp_path):
    a = extract_features(image_folder, LENET, Workspace.open(tmp_path / "ws_a"))
    b = extract_features(image_folder, ExtractConfig(**{**LENET.to_dict(), "batch_size": 5, "workers": 2}),
                         Workspace.open(tmp_path / "ws_b"))
    assert a.relpaths == b.relpaths
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)


def test_separate_tl_extract_processes_give_identical_features(image_folder, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TL_WORKSPACE": str(tmp_path / "ws_proc")}
    p = subprocess.run([sys.executable, "-m", "tl_cli", "extract", str(image_folder), "--backbone", "lenet5",
                        "--no-pretrained", "--workers", "0", "--no-train"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    in_proc = extract_features(image_folder, LENET, Workspace.open(tmp_path / "ws_here"))
    from_proc = extract_features(image_folder, LENET, Workspace.open(tmp_path / "ws_proc"))
    assert from_proc.n_extracted == 0 and from_proc.relpaths == in_proc.relpaths
    np.testing.assert_array_equal(from_proc.features, in_proc.features)


# -- training --------------------------------------------------------------------------------
def _ft_cfg(**kw):
    from tl_cli.finetune.config import FinetuneConfig

    # freeze=2 keeps LeNet's batch-norm layers in eval mode, so micro-batches change nothing.
    base = dict(backbone="lenet5", pretrained=False, freeze=2, epochs=2, batch_size=8, workers=0, dropout=0.0,
                patience=0, seed=0, device="cpu")
    return FinetuneConfig(**{**base, **kw})


def test_train_step_in_micro_batches_equals_the_whole_batch():
    from tl_cli.backbones import create_backbone
    from tl_cli.finetune.model import FinetuneModel
    from tl_cli.finetune.schedule import build_optimizer
    from tl_cli.finetune.step import train_step

    cfg = _ft_cfg()
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    results = []
    for micro in (None, 3):
        torch.manual_seed(1)  # the new head's initialisation
        model = FinetuneModel(create_backbone("lenet5", pretrained=False)[0], 3, cfg.freeze, 32, 0.0).train()
        opt = build_optimizer(model, cfg)
        loss, ok = train_step(model, opt, x, y, torch.nn.CrossEntropyLoss(label_smoothing=0.1), torch.device("cpu"),
                              micro)
        results.append((loss, ok, {k: v.clone() for k, v in model.state_dict().items()}))
    (l0, c0, w0), (l1, c1, w1) = results
    assert c0 == c1 and l0 == pytest.approx(l1, rel=1e-6)
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=1e-5, atol=1e-6)


def test_finetune_with_simulated_oom_goes_on_in_micro_batches(image_folder, tmp_path, monkeypatch):
    from tl_cli.finetune.model import FinetuneModel
    from tl_cli.finetune.trainer import start
    from tl_cli.runtime.progress import Reporter

    normal = start(image_folder, _ft_cfg(), Workspace.open(tmp_path / "a"))
    real_forward = FinetuneModel.forward
    sizes = []

    def forward_on_a_small_gpu(self, x):
        if self.training:
            sizes.append(x.shape[0])
            if x.shape[0] > 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_forward(self, x)

    class Log(Reporter):
        lines: list[str] = []

        def log(self, message: str) -> None:
            self.lines.append(message)

    monkeypatch.setattr(FinetuneModel, "forward", forward_on_a_small_gpu)
    log = Log()
    oom = start(image_folder, _ft_cfg(), Workspace.open(tmp_path / "b"), log)
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) == 2  # halved once, then kept
    assert any("out of memory: training goes on in micro-batches of 2" in m for m in log.lines)
    assert [h["epoch"] for h in oom.history] == [0, 1, 2]  # 0: the linear probe
    from tl_cli.runs.store import load_run

    a, b = load_run(normal.run_dir).tensors(), load_run(oom.run_dir).tensors()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
