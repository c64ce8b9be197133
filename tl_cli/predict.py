"""Predicting classes for image files with a saved run."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import _walk_files, sniff_image
from .errors import ConfigError, DataError
from .preprocess import Preprocess
from .runs import Run, load_run
from .workspace import Workspace


@dataclass
class Prediction:
    """Top-k result for one file; `error` is set (and labels empty) when it could not be read."""

    path: str
    labels: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        d = {"path": self.path, "labels": self.labels, "probs": [round(p, 6) for p in self.probs]}
        if self.error:
            d["error"] = self.error
        return d


def expand_inputs(items: list[str]) -> tuple[list[Path], list[Prediction]]:
    """Files, folders (recursive, images by content) and globs -> image paths, plus misses.

    `-` reads one path per line from standard input.
    """
    import sys

    paths: list[Path] = []
    missing: list[Prediction] = []
    queue = list(items)
    if "-" in queue:
        queue.remove("-")
        queue.extend(line.strip() for line in sys.stdin if line.strip())
    for item in queue:
        p = Path(item).expanduser()
        if p.is_dir():
            paths.extend(f for f in _walk_files(p) if sniff_image(f))
        elif p.exists():
            paths.append(p)
        elif glob.has_magic(item):
            hits = sorted(Path(h) for h in glob.glob(os.path.expanduser(item), recursive=True))
            files = [h for h in hits if h.is_file()]
            if not files:
                missing.append(Prediction(item, error="no files match this pattern"))
            paths.extend(files)
        else:
            missing.append(Prediction(item, error="no such file"))
    seen: set[Path] = set()
    unique = [p for p in paths if not (p in seen or seen.add(p))]
    return unique, missing


class _TorchModel:
    """The whole classifier in eager PyTorch (fine-tuned runs, CUDA, or no onnxruntime)."""

    def __init__(self, run: Run, device, weights: str | None):
        import torch

        from .model import build_from_run

        self.device = device
        self.net = build_from_run(run, weights).to(device).to(memory_format=torch.channels_last)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
            return self.net(t).float().softmax(-1).cpu().numpy()


class _HeadOnEngine:
    """A head-only run as the cached ONNX feature engine + a numpy Linear: no torch import.

    `tl predict one.jpg` is then ~1 s cold instead of paying 2-4 s for `import torch`.
    """

    def __init__(self, engine, weight: np.ndarray, bias: np.ndarray):
        self.engine, self.weight, self.bias = engine, weight, bias

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = self.engine(x) @ self.weight.T + self.bias
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    @classmethod
    def try_load(cls, run: Run, device: str, weights: str | None, engines_dir: Path | None) -> "_HeadOnEngine | None":
        """The engine route when it applies (head run, CPU, onnxruntime, recorded weights present), else None."""
        from .device import device_type
        from .engines import onnxruntime_available

        w = run.meta.get("weights", {})
        if run.meta.get("kind") != "head" or engines_dir is None or weights is not None \
                or device_type(device) != "cpu" or not onnxruntime_available():
            return None
        from safetensors.numpy import load_file

        from .backbones import create_backbone, get_spec, resolve_weights
        from .engines import make_engine

        spec = get_spec(run.meta["backbone"])
        try:
            choice = resolve_weights(spec, w.get("file"), w.get("pretrained", True))
        except Exception:  # noqa: BLE001 - the torch route reports missing weights clearly
            return None
        if choice.identity != w.get("id"):
            return None  # the torch route raises the clear "weights differ" error
        engine, _ = make_engine("onnx", spec, choice, "cpu", engines_dir,
                                lambda: create_backbone(spec.name, w.get("file"), w.get("pretrained", True))[0])
        t = load_file(str(run.dir / "model.safetensors"))
        return cls(engine, t["head.weight"].astype(np.float32), t["head.bias"].astype(np.float32))


class Predictor:
    """A trained run, ready to classify images.

    Head-only runs on CPU use the workspace's ONNX feature engine (exported once, shared with
    `tl extract`) and a numpy head; everything else runs in eager PyTorch.

    Example:
        >>> p = Predictor.from_workspace()
        >>> p.predict(["cat.jpg"], topk=2)[0].labels
        ['cat', 'dog']
    """

    def __init__(self, run: Run, device: str = "auto", weights: str | None = None, engines_dir: Path | None = None):
        self.run = run
        self.classes = run.classes
        self.preprocess = Preprocess.from_dict(run.meta["preprocess"])  # never current defaults
        self.model = _HeadOnEngine.try_load(run, device, weights, engines_dir)
        if self.model is None:
            from .device import resolve_device

            self.model = _TorchModel(run, resolve_device(device), weights)

    @classmethod
    def from_workspace(cls, model: str | None = None, workspace: Workspace | None = None, **kw) -> "Predictor":
        ws = workspace or Workspace.open()
        kw.setdefault("engines_dir", ws.root / "engines")
        return cls(load_run(model or ws.latest_run()), **kw)

    def _batches(self, paths: list[str], batch_size: int, workers: int):
        from .loader import iter_batches

        for b in iter_batches(Path("/"), [os.path.abspath(p) for p in paths], self.preprocess, batch_size, workers,
                              normalize=True):
            yield (None if b.pixels is None else self.model(b.pixels)), b.index, b.failed

    def predict(self, paths: list[str | Path], topk: int = 1, batch_size: int = 32, workers: int = 0) -> list[Prediction]:
        """Classify files; unreadable ones come back with `error` set, never stop the batch."""
        if topk < 1:
            raise ConfigError(f"--topk must be >= 1, got {topk}")
        k = min(topk, len(self.classes))
        paths = [str(p) for p in paths]
        out: list[Prediction | None] = [None] * len(paths)
        for probs, idx, bad in self._batches(paths, batch_size, workers or (2 if len(paths) > batch_size else 0)):
            for i, err in bad:
                out[i] = Prediction(paths[i], error=err)
            if probs is None:
                continue
            top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            for row, i in enumerate(idx):
                out[i] = Prediction(paths[i], [self.classes[j] for j in top[row]], [float(probs[row, j]) for j in top[row]])
        return out  # type: ignore[return-value]

    def probabilities(self, paths: list[str | Path], batch_size: int = 32):
        """(N, C) numpy probabilities, the indices of readable files, and (index, reason) failures."""
        probs, kept, failed = [], [], []
        for p, idx, bad in self._batches([str(x) for x in paths], batch_size, 2):
            failed.extend(bad)
            if p is not None:
                probs.append(p)
                kept.extend(idx)
        return (np.concatenate(probs) if probs else np.empty((0, len(self.classes)), np.float32)), kept, failed
