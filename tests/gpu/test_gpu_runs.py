"""Runs trained on CUDA: scored as served, resumed and predicted on the CPU, exported with parity."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.gpu import GPU
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.runs.workspace import Workspace

pytestmark = GPU


def _cfg(**kw) -> FinetuneConfig:
    base = dict(backbone="lenet5", pretrained=False, freeze=0, epochs=3, batch_size=8, workers=2, patience=0,
                seed=0, device="cuda")
    return FinetuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    from tests.helpers.images import make_folder
    from tl_cli.finetune.trainer import start

    root = tmp_path_factory.mktemp("cudarun")
    data = make_folder(root / "d", n_per_class=20)
    r = start(data, _cfg(), Workspace.open(root / "ws"))
    return data, r


def test_validation_accuracy_is_what_evaluate_reproduces_on_the_gpu_and_the_cpu(cuda_run):
    """Defect 4: the best epoch was chosen on float32 validation, as prediction runs."""
    from tl_cli.inference.evaluate import evaluate
    from tl_cli.inference.predict import Predictor
    from tl_cli.runs.store import load_run

    data, r = cuda_run
    run = load_run(r.run_dir)
    assert run.meta.precision["validation"] == "float32"
    assert run.meta.precision["train"] in ("bf16", "fp16")
    for device in ("cuda", "cpu"):
        ev = evaluate(Predictor(run, device=device), data, split="val")
        assert ev.metrics["accuracy"] == pytest.approx(run.meta.metrics["val_accuracy"], abs=1e-9), device


def test_a_cuda_run_resumes_and_predicts_on_the_cpu(tmp_path):
    from tests.helpers.images import make_folder
    from tl_cli.finetune.trainer import resume, start
    from tl_cli.inference.predict import Predictor
    from tl_cli.runs.store import load_run
    from tl_cli.runtime.progress import Reporter

    class KillAfter(Reporter):
        def log(self, message: str) -> None:
            if message.startswith("epoch   1 "):
                raise KeyboardInterrupt

    data = make_folder(tmp_path / "d", n_per_class=12)
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(KeyboardInterrupt):
        start(data, _cfg(), ws, KillAfter())
    r = resume(overrides={"device": "cpu"}, workspace=ws)  # checkpoint tensors saved on CUDA, loaded on the CPU
    assert r.resumed_from == 1 and [h["epoch"] for h in r.history] == [0, 1, 2, 3]
    p = Predictor(load_run(r.run_dir), device="cpu")
    preds = p.predict(sorted(data.rglob("*.jpg"))[:6])
    assert all(x.error is None and x.labels for x in preds)


def test_export_of_a_cuda_trained_run_matches_it(cuda_run, tmp_path):
    from tl_cli.inference.export import ExportConfig, OnnxPredictor, export_run
    from tl_cli.inference.predict import Predictor
    from tl_cli.runs.store import load_run

    data, r = cuda_run
    run = load_run(r.run_dir)
    res = export_run(run, ExportConfig(format="onnx"), tmp_path / "m.onnx")
    assert res.max_abs_diff <= 1e-4 + 1e-4  # the export's own check against eager PyTorch (float32)
    files = sorted(data.rglob("*.jpg"))
    onnx_probs, _, _ = OnnxPredictor(res.path).probabilities(files)
    cuda_probs, _, _ = Predictor(run, device="cuda").probabilities(files)
    assert (onnx_probs.argmax(1) == cuda_probs.argmax(1)).all()
    np.testing.assert_allclose(onnx_probs, cuda_probs, atol=2e-3)  # the GPU's float32 may use TF32
