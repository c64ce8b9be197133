"""Measuring a model on a labelled folder: accuracy, per-class precision/recall/F1, confusion,
and the misclassified files, written as an evaluation folder a user can open and act on.

    <run>/evaluations/<date>-<data>-<split>/
        metrics.json       accuracy, per-class metrics, confusion matrix (raw and normalised)
        confusion.csv      the raw confusion matrix, rows = true class, columns = predicted
        confusion.png      the same as a labelled picture (counts and row percentages)
        misclassified.csv  path, true, predicted, confidence; most confident mistakes first
        report.html        one self-contained page with all of the above and thumbnails
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tl_cli.data.scan import scan_dataset
from tl_cli.errors import ConfigError, DataError, TLWarning
from tl_cli.inference.base import BasePredictor
from tl_cli.runtime.progress import Reporter

SPLITS = ("all", "val", "train")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows = true).

    Precision, recall and F1 of a class with no predictions (or no examples) are 0, as in
    scikit-learn's `zero_division=0`. `confusion_normalized` divides each row by its support.
    """
    n = len(classes)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    per_class = {}
    for i, c in enumerate(classes):
        tp = int(cm[i, i])
        pred_i, true_i = int(cm[:, i].sum()), int(cm[i].sum())
        p = tp / pred_i if pred_i else 0.0
        r = tp / true_i if true_i else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[c] = {"precision": p, "recall": r, "f1": f1, "support": true_i}
    total = int(cm.sum())
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    present = [m for m in per_class.values() if m["support"] > 0]
    macro = {k: float(np.mean([m[k] for m in present])) if present else 0.0 for k in ("precision", "recall", "f1")}
    return {
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "n": total,
        "per_class": per_class,
        "macro_avg": macro,
        "classes": list(classes),
        "confusion": cm.tolist(),
        "confusion_normalized": norm.tolist(),
    }


@dataclass
class Misclassified:
    path: str
    true: str
    predicted: str
    confidence: float  # probability of the predicted class


@dataclass
class Evaluation:
    metrics: dict
    root: Path  # the data folder
    split: str
    relpaths: list[str]  # readable images, relative to root
    y_true: np.ndarray  # model class indices
    probs: np.ndarray  # (N, C)
    failed: list[tuple[str, str]]  # (relpath, reason)
    trained_on: Path | None = None  # the model's training folder: its report is never written there either

    @property
    def classes(self) -> list[str]:
        return self.metrics["classes"]

    def misclassified(self) -> list[Misclassified]:
        """Wrong predictions, most confident first (those say most about what the model gets wrong)."""
        pred = self.probs.argmax(1) if len(self.probs) else np.zeros(0, dtype=np.int64)
        out = [
            Misclassified(str(self.root / rel), self.classes[t], self.classes[p], float(self.probs[i, p]))
            for i, (rel, t, p) in enumerate(zip(self.relpaths, self.y_true, pred)) if t != p
        ]
        return sorted(out, key=lambda m: -m.confidence)


def evaluate(predictor: BasePredictor, data_dir: str | os.PathLike, split: str = "all", val_fraction: float = 0.2,
             batch_size: int = 32, workers: int | None = 0, reporter: Reporter | None = None,
             grouping=None) -> Evaluation:
    """Predict every image of a labelled folder (or of its val/train split) and score it.

    Args:
        split: "all" images, or only the "val"/"train" split (same hashing, or folders, as training).
        val_fraction: the split's share, as the model was trained with (`RunMeta.val_fraction`).
        grouping: the split's grouping, as the model was trained with (`RunMeta.grouping`).

    Raises:
        DataError: the folder has classes the model does not know (named), or the split is empty.

    Example:
        >>> ev = evaluate(load_predictor(), "photos_test")
        >>> ev.metrics["accuracy"]
        0.93
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown --split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
    ds = scan_dataset(data_dir, val_fraction, min_classes=1, grouping=grouping)
    unknown = [c for c in ds.classes if c not in predictor.classes]
    if unknown:
        raise DataError(
            f"classes in {ds.root} that the model does not know: {', '.join(unknown)}",
            hint=f"the model knows: {', '.join(predictor.classes)}",
        )
    trained_on = predictor.trained.dataset.root
    if split != "all" and trained_on and Path(trained_on).resolve() != ds.root:
        # The same rule on other data gives a split, but not the run's: its score is no check of the run.
        warnings.warn(TLWarning(f"the run was trained on {trained_on}, not {ds.root}: --split {split} splits "
                                f"this folder by the run's rule, which is not the run's {split} split"), stacklevel=2)
    elif split != "all" and predictor.trained.dataset.split_digest not in (None, ds.split_digest()):
        then = predictor.trained.dataset
        warnings.warn(TLWarning(
            f"the images or groups of {ds.root} changed since the run was trained ({then.n_train} train / "
            f"{then.n_val} val then, {len(ds.split('train'))} / {len(ds.split('val'))} now): --split {split} is "
            f"not exactly the run's {split} split"), stacklevel=2)
    samples = ds.samples if split == "all" else ds.split(split)
    if not samples:
        raise DataError(f"no images in the {split!r} split of {ds.root}")
    model_index = {c: i for i, c in enumerate(predictor.classes)}
    y_all = np.array([model_index[ds.classes[s.label]] for s in samples], dtype=np.int64)
    probs, kept, bad = predictor.probabilities([ds.abspath(s) for s in samples], batch_size, workers, reporter)
    probs = np.asarray(probs, dtype=np.float64)
    y_true = y_all[kept]
    metrics = classification_metrics(y_true, probs.argmax(1) if len(probs) else y_true, predictor.classes)
    failed = list(ds.skipped) + [(samples[i].relpath, err) for i, err in bad]
    metrics.update({"data_dir": str(ds.root), "split": split, "model": predictor.source, "n_failed": len(failed)})
    return Evaluation(metrics, ds.root, split, [samples[i].relpath for i in kept], y_true, probs, failed,
                      Path(trained_on) if trained_on else None)


def default_output_dir(predictor: BasePredictor, ev: Evaluation) -> Path:
    """`<run>/evaluations/<date>-<data>-<split>` (beside an .onnx file when evaluating an export)."""
    base = Path(predictor.source)
    base = base if base.is_dir() else base.parent
    from tl_cli.runs.store import stamp_and_slug

    stamp, slug = stamp_and_slug(ev.root.name)
    path, n = base / "evaluations" / f"{stamp}-{slug}-{ev.split}", 1
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # the name is taken by creating the folder: two evaluations in the same second get two
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = path.with_name(f"{stamp}-{slug}-{ev.split}-{n}")
