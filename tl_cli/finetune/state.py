"""What a fine-tuning run carries from epoch to epoch (`TrainState`, checkpointed) and what it trains
with (`Training`, built once per process from the config and the dataset)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from tl_cli.backbones import BackboneSpec, WeightsChoice
from tl_cli.data.scan import Dataset
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.finetune.data import Loaders
from tl_cli.finetune.model import FinetuneModel
from tl_cli.finetune.step import Amp
from tl_cli.runtime.distributed import DistInfo
from tl_cli.runtime.oom import HalvingStep
from tl_cli.runtime.progress import Reporter

BEST_KEYS = ("epoch", "val_loss", "val_accuracy", "train_loss", "train_accuracy")


@dataclass
class TrainState:
    """The run's progress after its last finished epoch; saved in every checkpoint (these keys).

    Attributes:
        epoch: epochs finished (0 before the first; the LP-FT probe is epoch 0).
        best: BEST_KEYS of the best epoch so far ({} before the first).
        bad_epochs: epochs since the best one (early stopping counts these).
        history: one row per epoch (history.HISTORY_FIELDS).
        finished: nothing left to train; stop_reason: "epochs", "early_stopping" or "time_budget".
    """

    epoch: int = 0
    best: dict = field(default_factory=dict)
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    finished: bool = False
    stop_reason: str = "epochs"

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> TrainState:
        return cls(**{f.name: ckpt[f.name] for f in fields(cls) if f.name in ckpt})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self, row: dict, cfg: FinetuneConfig, has_val: bool) -> bool:
        """Add a finished epoch's row; returns True when it is the new best epoch.

        Metrics are global under torchrun, so every rank decides alike.
        """
        self.epoch = row["epoch"]
        self.history.append(row)
        improved = is_better(row, self.best)
        if improved:
            self.best = {k: row[k] for k in BEST_KEYS}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if cfg.patience and has_val and self.bad_epochs >= cfg.patience:
            self.finished, self.stop_reason = True, "early_stopping"
        elif self.epoch >= cfg.epochs:
            self.finished, self.stop_reason = True, "epochs"
        return improved


def is_better(row: dict, best: dict) -> bool:
    """Higher validation accuracy wins, lower validation loss breaks ties; no val: latest wins."""
    if not best or row["val_accuracy"] is None:
        return True
    return (row["val_accuracy"], -row["val_loss"]) > (best["val_accuracy"], -best["val_loss"])


@dataclass
class Training:
    """Everything one process trains with, built once (trainer._setup) and passed to each epoch.

    `net` is what the steps run through (the DDP wrapper under torchrun, else `model` itself);
    `halving` retries a step in micro-batches after out-of-memory (None under torchrun).
    """

    run_dir: Path
    cfg: FinetuneConfig
    ds: Dataset
    spec: BackboneSpec
    choice: WeightsChoice
    info: DistInfo
    device: torch.device
    model: FinetuneModel
    opt: torch.optim.Optimizer
    loaders: Loaders
    amp: Amp
    workers: int
    reporter: Reporter
    loss_fn: nn.Module
    net: nn.Module | None = None
    halving: HalvingStep | None = None
    skipped: set[str] = field(default_factory=set)
