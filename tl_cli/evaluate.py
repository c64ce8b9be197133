"""Measuring a run on a labelled folder: accuracy, per-class precision/recall/F1, confusion."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .data import scan_dataset
from .errors import DataError
from .predict import Predictor


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows = true)."""
    n = len(classes)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class = {}
    for i, c in enumerate(classes):
        tp = int(cm[i, i])
        pred_i, true_i = int(cm[:, i].sum()), int(cm[i].sum())
        p = tp / pred_i if pred_i else 0.0
        r = tp / true_i if true_i else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[c] = {"precision": p, "recall": r, "f1": f1, "support": true_i}
    total = int(cm.sum())
    return {
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "n": total,
        "per_class": per_class,
        "confusion": cm.tolist(),
        "classes": list(classes),
    }


@dataclass
class Evaluation:
    metrics: dict
    relpaths: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    failed: list[tuple[str, str]]


def evaluate(predictor: Predictor, data_dir: str | os.PathLike, split: str = "all", val_fraction: float = 0.2) -> Evaluation:
    """Predict every image of a labelled folder and score it.

    Args:
        split: "all" images, or only the "val"/"train" split (same hashing as training).

    Raises:
        DataError: the folder has classes the model does not know (named in the message).
    """
    ds = scan_dataset(data_dir, val_fraction, min_classes=1)
    unknown = [c for c in ds.classes if c not in predictor.classes]
    if unknown:
        raise DataError(
            f"classes in {ds.root} that the model does not know: {', '.join(unknown)}",
            hint=f"the model knows: {', '.join(predictor.classes)}",
        )
    samples = ds.samples if split == "all" else ds.split(split)
    if not samples:
        raise DataError(f"no images in the {split!r} split of {ds.root}")
    model_index = {c: i for i, c in enumerate(predictor.classes)}
    y_all = np.array([model_index[ds.classes[s.label]] for s in samples])
    probs, kept, bad = predictor.probabilities([ds.abspath(s) for s in samples])
    probs = np.asarray(probs)
    y_true = y_all[kept]
    metrics = classification_metrics(y_true, probs.argmax(1), predictor.classes)
    failed = list(ds.skipped) + [(samples[i].relpath, err) for i, err in bad]
    return Evaluation(metrics, [samples[i].relpath for i in kept], y_true, probs, failed)
