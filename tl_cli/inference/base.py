"""What every predictor shares: batching, top-k and per-file errors over a model that maps a batch
of preprocessed images to class probabilities. `predict.Predictor` (a run) and
`onnx_model.OnnxPredictor` (an exported .onnx file) build on it, so they answer identically."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tl_cli.data.preprocess import Preprocess
from tl_cli.errors import ConfigError
from tl_cli.runs.meta import RunMeta
from tl_cli.runtime.progress import Reporter


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


def _as_list(paths) -> list:
    """One path (str or PathLike) is a list of one: iterating a string would classify its characters."""
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


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
        if workers is not None and workers < 0:
            raise ConfigError(f"--workers must be >= 0 (0: decode in the calling thread), got {workers}")
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

    def predict_batches(self, paths: list[str | Path] | str | Path, topk: int = 1, batch_size: int = 32,
                        workers: int | None = 0, reporter: Reporter | None = None) -> Iterator[Prediction]:
        """Classify files batch by batch, yielding one Prediction per file in input order.

        Unreadable files come back with `error` set; they never stop the batch.
        `workers=None` picks the number of decoding threads automatically.
        """
        if topk < 1:
            raise ConfigError(f"--topk must be >= 1, got {topk}")
        k = min(topk, len(self.classes))
        paths = [str(p) for p in _as_list(paths)]
        for probs, idx, bad in self._batches(paths, batch_size, workers, reporter):
            done: dict[int, Prediction] = {i: Prediction(paths[i], error=err) for i, err in bad}
            if probs is not None:
                top = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the earlier class first
                for row, i in enumerate(idx):
                    done[i] = Prediction(paths[i], [self.classes[j] for j in top[row]],
                                         [float(probs[row, j]) for j in top[row]])
            yield from (done[i] for i in sorted(done))

    def predict(self, paths: list[str | Path] | str | Path, topk: int = 1, batch_size: int = 32, workers: int | None = 0,
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
        for p, idx, bad in self._batches(_as_list(paths), batch_size, workers, reporter):
            failed.extend(bad)
            if p is not None:
                probs.append(p)
                kept.extend(idx)
        return (np.concatenate(probs) if probs else np.empty((0, len(self.classes)), np.float32)), kept, failed
