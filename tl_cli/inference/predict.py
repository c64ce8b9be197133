"""Predicting classes for image files with a saved run or an exported ONNX model.

`load_predictor` picks the engine from what `--model` points at: a run folder (PyTorch) or an
`.onnx` file (onnxruntime, preprocessing read from the JSON written beside it by `tl export`).
Both engines share the batching and per-file error handling below, so they answer identically.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tl_cli.data.scan import IMAGE_SUFFIXES, _walk_files, sniff_image
from tl_cli.errors import ConfigError
from tl_cli.data.preprocess import Preprocess
from tl_cli.runtime.progress import Reporter
from tl_cli.runs.meta import RunMeta
from tl_cli.runtime import cache_dirs
from tl_cli.runs.store import WEIGHTS, Run, load_arrays, load_run
from tl_cli.runs.workspace import Workspace


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


def expand_inputs(items: list[str], stdin=None) -> tuple[list[Path], list[Prediction]]:
    """Files, folders (recursive, images by content) and globs -> image paths, plus misses.

    `-` reads one path (file, folder or glob) per line from `stdin` (default sys.stdin).
    Returns the unique image paths in input order, and a Prediction with `error` for each
    input that matched nothing.
    """
    paths: list[Path] = []
    missing: list[Prediction] = []
    queue: list[str] = []
    for item in items:
        if item == "-":
            queue.extend(line.strip() for line in (stdin or sys.stdin) if line.strip())
        else:
            queue.append(item)
    for item in queue:
        p = Path(item).expanduser()
        if p.is_dir():
            # Images by content; files named like images but unreadable are kept so they are
            # reported as failures instead of vanishing silently.
            paths.extend(f for f in _walk_files(p) if sniff_image(f) or f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            paths.append(p)  # named explicitly: tried even if it does not look like an image
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


class BasePredictor:
    """Batching, top-k and per-file errors over a `model`; subclasses set the attributes below."""

    classes: list[str]
    preprocess: Preprocess
    model: Callable[[np.ndarray], np.ndarray]  # (B, 3, S, S) float32 preprocessed -> (B, C) probabilities
    source: str  # what was loaded, for messages
    trained: RunMeta  # how the model was trained (the run's meta, or an export's copy of it)
    notes: list[str]  # lines for the user about how the model is run (e.g. a fallback taken)

    def _batches(self, paths: list[str | Path], batch_size: int, workers: int | None, reporter: Reporter | None):
        """Yield (probs or None, indices of readable files, [(index, error)]) per batch."""
        from tl_cli.data.decode import default_threads, iter_batches

        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        if workers is None:  # decoding threads pay off only beyond one batch
            workers = default_threads() if len(paths) > batch_size else 0
        reporter = reporter or Reporter()
        # Root "/" with absolute paths: the loader joins root / path, which keeps them as given.
        batches = iter_batches(Path("/"), [os.path.abspath(p) for p in paths], self.preprocess, batch_size, workers,
                               normalize=True)
        reporter.start("predicting", len(paths))
        try:
            for b in batches:
                yield (self.model(b.pixels) if b.pixels is not None else None), b.index, b.failed
                reporter.advance(len(b.index) + len(b.failed))
        finally:
            reporter.stop()

    def predict_batches(self, paths: list[str | Path], topk: int = 1, batch_size: int = 32,
                        workers: int | None = 0, reporter: Reporter | None = None) -> Iterator[Prediction]:
        """Classify files batch by batch, yielding one Prediction per file in input order.

        Unreadable files come back with `error` set; they never stop the batch.
        `workers=None` picks decoding processes automatically.
        """
        if topk < 1:
            raise ConfigError(f"--topk must be >= 1, got {topk}")
        k = min(topk, len(self.classes))
        paths = [str(p) for p in paths]
        for probs, idx, bad in self._batches(paths, batch_size, workers, reporter):
            done: dict[int, Prediction] = {i: Prediction(paths[i], error=err) for i, err in bad}
            if probs is not None:
                top = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the earlier class first
                for row, i in enumerate(idx):
                    done[i] = Prediction(paths[i], [self.classes[j] for j in top[row]],
                                         [float(probs[row, j]) for j in top[row]])
            yield from (done[i] for i in sorted(done))

    def predict(self, paths: list[str | Path], topk: int = 1, batch_size: int = 32, workers: int | None = 0,
                reporter: Reporter | None = None) -> list[Prediction]:
        """Classify files; see `predict_batches`.

        Example:
            >>> load_predictor().predict(["cat.jpg"], topk=2)[0].labels
            ['cat', 'dog']
        """
        return list(self.predict_batches(paths, topk, batch_size, workers, reporter))

    def probabilities(self, paths: list[str | Path], batch_size: int = 32, workers: int | None = 0,
                      reporter: Reporter | None = None):
        """(N, C) numpy probabilities of the readable files, their indices, and [(index, error)] of the others."""
        probs, kept, failed = [], [], []
        for p, idx, bad in self._batches(list(paths), batch_size, workers, reporter):
            failed.extend(bad)
            if p is not None:
                probs.append(p)
                kept.extend(idx)
        return (np.concatenate(probs) if probs else np.empty((0, len(self.classes)), np.float32)), kept, failed


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
            return self.net(t).float().softmax(-1).cpu().numpy()


class _HeadOnEngine:
    """A head-only run as the cached ONNX feature engine + a numpy Linear: no torch import.

    `tl predict one.jpg` is then ~1 s cold instead of paying 2-4 s for `import torch`.
    """

    def __init__(self, engine, weight: np.ndarray, bias: np.ndarray):
        self.engine, self.weight, self.bias = engine, weight, bias

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from tl_cli.head.softmax import softmax

        return softmax(self.engine(x) @ self.weight.T + self.bias)

    @classmethod
    def try_load(cls, run: Run, device: str, weights: str | None, engines_dir: Path | None,
                 notes: list[str]) -> "_HeadOnEngine | None":
        """The engine route when it applies (head run, CPU, onnxruntime, recorded weights present), else None.

        When the backbone can't be exported or run by onnxruntime, a line is added to `notes` and
        None is returned: the caller runs the whole model in eager PyTorch, as `tl extract` does.
        """
        from tl_cli.runtime.device import device_type
        from tl_cli.features.engines import onnxruntime_available

        w = run.meta.weights
        if run.meta.kind != "head" or engines_dir is None or weights is not None \
                or device_type(device) != "cpu" or not onnxruntime_available():
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
    def from_workspace(cls, model: str | None = None, workspace: Workspace | None = None, **kw) -> "Predictor":
        ws = workspace or Workspace.open()
        kw.setdefault("engines_dir", cache_dirs.engines_dir())
        return cls(load_run(model or ws.latest_run()), **kw)


def load_predictor(model: str | os.PathLike | None = None, workspace: Workspace | None = None,
                   device: str = "auto") -> BasePredictor:
    """The predictor for `--model`: a run folder (default: the workspace's latest run) or an .onnx file.

    Raises:
        RunError: no run, or an incomplete one. ExportError: an .onnx file without its JSON,
        or onnxruntime not installed.
    """
    if model is not None and Path(model).suffix.lower() == ".onnx":
        from tl_cli.inference.export import OnnxPredictor

        return OnnxPredictor(Path(model))
    return Predictor.from_workspace(model, workspace, device=device)
