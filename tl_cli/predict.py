"""Predicting classes for image files with a saved run."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

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


class Predictor:
    """A trained run, ready to classify images.

    Example:
        >>> p = Predictor.from_workspace()
        >>> p.predict(["cat.jpg"], topk=2)[0].labels
        ['cat', 'dog']
    """

    def __init__(self, run: Run, device: str = "auto", weights: str | None = None):
        import torch

        from .device import resolve_device
        from .model import build_from_run

        self.run = run
        self.classes = run.classes
        self.preprocess = Preprocess.from_dict(run.meta["preprocess"])  # never current defaults
        self.device = resolve_device(device)
        self.net = build_from_run(run, weights).to(self.device).to(memory_format=torch.channels_last)

    @classmethod
    def from_workspace(cls, model: str | None = None, workspace: Workspace | None = None, **kw) -> "Predictor":
        ws = workspace or Workspace.open()
        return cls(load_run(model or ws.latest_run()), **kw)

    def predict(self, paths: list[str | Path], topk: int = 1, batch_size: int = 32, workers: int = 0) -> list[Prediction]:
        """Classify files; unreadable ones come back with `error` set, never stop the batch."""
        import torch

        from .extract import make_loader

        if topk < 1:
            raise ConfigError(f"--topk must be >= 1, got {topk}")
        k = min(topk, len(self.classes))
        paths = [str(p) for p in paths]
        out: list[Prediction | None] = [None] * len(paths)
        loader = make_loader(Path("/"), [os.path.abspath(p) for p in paths], self.preprocess, batch_size, workers,
                             self.device.type == "cuda")
        with torch.inference_mode():
            for x, idx, bad in loader:
                for i, err in bad:
                    out[i] = Prediction(paths[i], error=err)
                if x is None:
                    continue
                x = x.to(self.device).contiguous(memory_format=torch.channels_last)
                probs = self.net(x).float().softmax(-1).cpu()
                top = probs.topk(k, dim=1)
                for row, i in enumerate(idx):
                    out[i] = Prediction(paths[i], [self.classes[j] for j in top.indices[row].tolist()],
                                        top.values[row].tolist())
        return out  # type: ignore[return-value]

    def probabilities(self, paths: list[str | Path], batch_size: int = 32):
        """(N, C) probabilities and the indices of readable files (for evaluation)."""
        import torch

        from .extract import make_loader

        loader = make_loader(Path("/"), [os.path.abspath(p) for p in paths], self.preprocess, batch_size, 0, False)
        probs, kept, failed = [], [], []
        with torch.inference_mode():
            for x, idx, bad in loader:
                failed.extend(bad)
                if x is not None:
                    x = x.to(self.device).contiguous(memory_format=torch.channels_last)
                    probs.append(self.net(x).float().softmax(-1).cpu())
                    kept.extend(idx)
        return (torch.cat(probs) if probs else torch.empty(0, len(self.classes))), kept, failed
