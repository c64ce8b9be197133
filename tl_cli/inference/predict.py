"""Predicting classes for image files with a saved run or an exported ONNX model.

`load_predictor` picks the engine from what `--model` points at: a run folder (PyTorch) or an
`.onnx` file (onnxruntime, preprocessing read from the JSON written beside it by `tl export`).
Both share the batching and per-file error handling of `base.BasePredictor`, so they answer identically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tl_cli.errors import ConfigError, RunError
from tl_cli.head.softmax import softmax
from tl_cli.inference.base import BasePredictor
from tl_cli.runs.store import WEIGHTS, Run, load_arrays, load_run
from tl_cli.runs.workspace import Workspace, WorkspaceLike
from tl_cli.runtime import cache_dirs


class TorchModel:
    """The whole classifier of a run in eager PyTorch: numpy inputs -> numpy probabilities."""

    def __init__(self, run: Run, device, weights: str | None = None):
        import torch

        from tl_cli.inference.load import build_from_run

        self.device = device
        self.net = build_from_run(run, weights).to(device).to(memory_format=torch.channels_last)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
            logits = self.net(t).float().cpu().numpy()
        return softmax(logits)


class _HeadOnEngine:
    """A head-only run as the cached ONNX feature engine + a numpy Linear: no torch import.

    `tl predict one.jpg` in a cold process then skips `import torch`, most of its start-up (benchmarks/README.md).
    """

    def __init__(self, engine, weight: np.ndarray, bias: np.ndarray):
        self.engine, self.weight, self.bias = engine, weight, bias

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.engine(x) @ self.weight.T + self.bias)

    @classmethod
    def try_load(cls, run: Run, device: str, weights: str | None, engines_dir: Path | None,
                 notes: list[str]) -> _HeadOnEngine | None:
        """The engine route when it applies (head run, CPU, onnxruntime, recorded weights present), else None.

        When the backbone can't be exported or run by onnxruntime, a line is added to `notes` and
        None is returned: the caller runs the whole model in eager PyTorch, as `tl extract` does.
        """
        from tl_cli.features.engines import choose_engine
        from tl_cli.runtime.device import device_type

        w = run.meta.weights
        if run.meta.kind != "head" or engines_dir is None or weights is not None \
                or choose_engine("auto", device_type(device)) != "onnx":
            return None
        from tl_cli.backbones import create_backbone, get_spec, resolve_weights
        from tl_cli.features.engines import make_engine

        spec = get_spec(run.meta.backbone)
        try:
            choice = resolve_weights(spec, w.file, w.pretrained)
        except Exception:  # noqa: BLE001 - the torch route reports missing weights clearly
            return None
        if choice.identity != w.id:
            return None  # the torch route raises the clear "weights differ" error
        try:
            engine, _ = make_engine("onnx", spec, choice, "cpu", engines_dir,
                                    lambda: create_backbone(spec.name, w.file, w.pretrained)[0])
        except ConfigError as exc:  # export or onnxruntime failed: eager PyTorch, as `tl extract` falls back
            notes.append(" ".join(f"{exc.message}; used eager PyTorch".split()))  # one line, whatever the exporter said
            return None
        t = load_arrays(run.dir / WEIGHTS)
        return cls(engine, t["head.weight"].astype(np.float32), t["head.bias"].astype(np.float32))


class Predictor(BasePredictor):
    """A trained run, ready to classify images.

    Head-only runs on CPU use the per-user ONNX feature engine (exported once, shared with
    `tl extract`) and a numpy head; everything else runs in eager PyTorch.

    Example:
        >>> p = Predictor.from_workspace()
        >>> p.predict(["cat.jpg"], topk=2)[0].labels
        ['cat', 'dog']
    """

    def __init__(self, run: Run, device: str = "auto", weights: str | None = None, engines_dir: Path | None = None):
        self.run = run
        self.source = str(run.dir)
        self.trained = run.meta
        self.classes = run.classes
        self.preprocess = run.preprocess  # never current defaults
        self.notes = []
        self.model = _HeadOnEngine.try_load(run, device, weights, engines_dir, self.notes)
        if self.model is None:
            from tl_cli.runtime.device import resolve_device

            self.model = TorchModel(run, resolve_device(device), weights)

    @classmethod
    def from_workspace(cls, model: str | None = None, workspace: WorkspaceLike = None, **kw) -> Predictor:
        ws = Workspace.open(workspace)
        kw.setdefault("engines_dir", cache_dirs.engines_dir())
        return cls(load_run(model or ws.latest_run()), **kw)


def load_predictor(model: str | os.PathLike | None = None, workspace: WorkspaceLike = None,
                   device: str = "auto") -> BasePredictor:
    """The predictor for `--model`: a run folder (default: the workspace's latest run) or an .onnx file.

    Raises:
        RunError: no run, or an incomplete one. ExportError: an .onnx file without its JSON,
        or onnxruntime not installed.
    """
    if model is not None and Path(model).suffix.lower() == ".onnx":
        from tl_cli.inference.onnx_model import OnnxPredictor

        return OnnxPredictor(Path(model))
    if model is not None and Path(model).is_file():
        # A TorchScript export (or a weights file) would run code or lack the classes and preprocessing.
        raise RunError(f"--model {model} is a file: tl predicts with a run folder or an .onnx export",
                       hint="pass the run folder (`tl runs` lists them), or its model.onnx from `tl export`; "
                            "TorchScript exports are for running outside tl")
    return Predictor.from_workspace(model, workspace, device=device)
