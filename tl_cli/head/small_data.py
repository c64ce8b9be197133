"""The small-data route end to end: cached features -> softmax head -> a saved run."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tl_cli.data.scan import training_split_problem
from tl_cli.features.extract import ExtractConfig, ExtractResult, extract_features
from tl_cli.head.softmax import HeadConfig, HeadResult, train_head
from tl_cli.runs.meta import DatasetRef, RunMeta, WeightsRef
from tl_cli.runs.store import new_run_dir, save_run
from tl_cli.runs.workspace import Workspace, WorkspaceLike
from tl_cli.runtime import distributed
from tl_cli.runtime.progress import Reporter


@dataclass
class SmallDataResult:
    extract: ExtractResult | None  # None on ranks other than 0 under torchrun
    head: HeadResult | None
    run_dir: Path | None


def readable_counts(ex: ExtractResult) -> dict[str, int]:
    """Images per class that have features (the model's data): unreadable files are not counted."""
    n = np.bincount(ex.labels, minlength=len(ex.dataset.classes)) if len(ex.labels) else [0] * len(ex.dataset.classes)
    return {c: int(k) for c, k in zip(ex.dataset.classes, n, strict=True)}


def train_small_data(
    data_dir: str | os.PathLike,
    cfg: ExtractConfig = ExtractConfig(),
    head_cfg: HeadConfig = HeadConfig(),
    workspace: WorkspaceLike = None,
    reporter: Reporter | None = None,
    train: bool = True,
    end_group: bool = True,
) -> SmallDataResult:
    """`tl extract`: cache features, fit the head, save the run and make it the latest.

    Returns the extraction summary, the head's metrics and the run folder (None with train=False).
    Under torchrun the ranks share the extraction; rank 0 alone trains the head and saves the run
    (a softmax layer on cached features is seconds of work: not worth distributing) while the
    others wait, and gets this result; the other ranks get SmallDataResult(None, None, None).
    `end_group=False` keeps the process group for another call (the leaderboard): gloo cannot
    be set up twice in one torchrun launch reliably.
    """
    ws = Workspace.open(workspace)
    ex = extract_features(data_dir, cfg, ws, reporter, require_train=train)
    if ex is None:
        if end_group:
            distributed.shutdown()
        return SmallDataResult(None, None, None)
    if not train:
        if end_group:
            distributed.shutdown()
        return SmallDataResult(ex, None, None)
    # The scan found training images in every class; unreadable ones may have taken them all.
    problem = training_split_problem(ex.dataset.only(ex.relpaths))
    if problem is not None:
        raise problem
    tr, va = ex.splits == "train", ex.splits == "val"
    n_classes = len(ex.dataset.classes)
    head = train_head(ex.features[tr], ex.labels[tr], ex.features[va] if va.any() else None,
                      ex.labels[va] if va.any() else None, n_classes, head_cfg)
    run_dir = new_run_dir(ws.runs, "extract", ex.dataset.root.name)
    meta = RunMeta(
        route="extract",
        kind="head",
        classes=tuple(ex.dataset.classes),
        backbone=cfg.backbone,
        weights=WeightsRef(ex.weights_id, cfg.weights, cfg.pretrained),
        preprocess=ex.preprocess,
        dataset=DatasetRef(root=str(ex.dataset.root), layout=ex.dataset.layout, n_train=int(tr.sum()),
                           n_val=int(va.sum()), counts=readable_counts(ex), fingerprint=ex.fingerprint,
                           cache_key=ex.cache_key, split_digest=ex.dataset.split_digest()),
        val_fraction=cfg.val_fraction,
        config={"extract": cfg.to_dict(), "head": head_cfg.to_dict()},
        metrics={
            "val_accuracy": head.val_accuracy,
            "val_loss": head.val_loss,
            "train_accuracy": head.train_accuracy,
            "l2": head.l2,
            "l2_search": head.grid,
        },
    )
    try:
        save_run(run_dir, {"head.weight": head.weight, "head.bias": head.bias}, meta)
    except BaseException:
        # Disk full, read-only, Ctrl-C: no half-written run folder is left to be mistaken for one.
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    ws.remember(latest_run=run_dir)
    if end_group:
        distributed.shutdown()
    return SmallDataResult(ex, head, run_dir)
