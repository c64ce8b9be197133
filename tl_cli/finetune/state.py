"""What a fine-tuning run carries from epoch to epoch (`TrainState`, checkpointed) and what it trains
with (`Training`, built once per process from the config and the dataset)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from tl_cli.backbones import BackboneSpec, WeightsChoice
from tl_cli.data.scan import Dataset
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.finetune.data import Loaders
from tl_cli.finetune.ema import WeightAverage
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
        best: BEST_KEYS of the best epoch so far ({} before the first), and "val_correct": which
            validation images it got right (`pack_correct`), for comparing later epochs image by image.
        bad_epochs: fine-tuning epochs since training last made progress (early stopping counts
            these; see `made_progress`: the probe, epoch 0, is not a fine-tuning epoch).
        history: one row per epoch (history.HISTORY_FIELDS).
        finished: nothing left to train; stop_reason: "epochs", "early_stopping", "time_budget" or
            "diverged" (a non-finite training loss).
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

    @property
    def progress(self) -> dict:
        """The best validation accuracy and loss of the fine-tuning epochs so far ({} before the first)."""
        return self._progress(before=self.epoch + 1)

    def _progress(self, before: int) -> dict:
        rows = [h for h in self.history if 0 < h["epoch"] < before and h["val_accuracy"] is not None]
        if not rows:
            return {}
        return {"val_accuracy": max(h["val_accuracy"] for h in rows), "val_loss": min(_loss(h) for h in rows)}

    def record(self, row: dict, cfg: FinetuneConfig, n_val: int) -> bool:
        """Add a finished epoch's row; returns True when it is the new best epoch.

        Metrics are global under torchrun, so every rank decides alike.
        """
        improved = is_better(row, self.best, n_val)
        correct = row.get("val_correct")
        row = {k: v for k, v in row.items() if k != "val_correct"}  # the history keeps the numbers only
        self.epoch = row["epoch"]
        self.history.append(row)
        if improved:
            self.best = {k: row[k] for k in BEST_KEYS}
            if correct is not None:
                self.best["val_correct"] = pack_correct(correct)
        if row["epoch"] > 0:  # the probe is a starting point, not a step of training
            self.bad_epochs = 0 if made_progress(row, self._progress(before=row["epoch"])) else self.bad_epochs + 1
        if row["epoch"] > 0 and not math.isfinite(row["train_loss"]):
            # NaN or inf weights never come back: more epochs only spend the budget. The kept
            # model is the best epoch before it (the probe at worst).
            self.finished, self.stop_reason = True, "diverged"
        elif cfg.patience and n_val and self.bad_epochs >= cfg.patience:
            self.finished, self.stop_reason = True, "early_stopping"
        elif self.epoch >= cfg.epochs:
            self.finished, self.stop_reason = True, "epochs"
        return improved


def best_numbers(best: dict) -> dict:
    """The best epoch's BEST_KEYS, without its per-image results (what a run reports)."""
    return {k: best[k] for k in BEST_KEYS if k in best}


# A tie in accuracy goes to the later epoch only if its val loss is lower by 10% and by 0.01 nats:
# on a few images two near-perfect models differ by 1e-6, which is not evidence.
LOSS_MARGIN, LOSS_MARGIN_ABS = 0.1, 0.01


def accuracy_noise(acc_a: float, acc_b: float, n: int) -> float:
    """One binomial standard error of an accuracy measured on `n` images, at the pair's mean
    accuracy, but never under half an image (so that two perfect scores are still a tie)."""
    p = (acc_a + acc_b) / 2
    return max(math.sqrt(p * (1 - p) / max(n, 1)), 0.5 / max(n, 1))


def is_better(row: dict, best: dict, n_val: int) -> bool:
    """Does epoch `row` replace `best` as the model kept? The simpler model (earlier epoch, the
    probe first of all) stays unless the later one is better by more than validation noise.

    Better means: validation accuracy higher by more than one standard error, or, with the
    accuracies within noise and not lower, a validation loss lower by more than LOSS_MARGIN
    (relative) and LOSS_MARGIN_ABS. No best yet, or no validation images: the latest wins.

    The standard error is the paired one when both epochs' per-image results are known
    (`row["val_correct"]`, `best["val_correct"]`): the two models are scored on the same images,
    so only the images on which they disagree carry noise (McNemar): g - l > sqrt(g + l) for g
    images gained and l lost. It is smaller than the single-proportion error (`accuracy_noise`,
    the fallback): flowers' epochs 11 and 20 (benchmarks/finetune_study.md, section 12) disagree
    on 90 of 859 images, 9.5 images of paired error against 11.4; nearer epochs disagree on fewer.
    """
    if not best or row["val_accuracy"] is None:
        return True
    diff = row["val_accuracy"] - best["val_accuracy"]
    noise = accuracy_noise(row["val_accuracy"], best["val_accuracy"], n_val)
    paired = paired_counts(row.get("val_correct"), best.get("val_correct"))
    if paired is not None:
        gained, lost = paired
        diff, noise = (gained - lost) / n_val, max(math.sqrt(gained + lost), 0.5) / n_val
    if abs(diff) > noise:
        return diff > 0
    return diff >= 0 and best["val_loss"] - row["val_loss"] > max(LOSS_MARGIN * best["val_loss"], LOSS_MARGIN_ABS)


def pack_correct(correct: np.ndarray) -> str:
    """Per-image right/wrong as a compact string for the checkpoint: length, then the bits in hex."""
    return f"{len(correct)}:{np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()}"


def unpack_correct(packed: str) -> np.ndarray:
    n, bits = packed.split(":", 1)
    return np.unpackbits(np.frombuffer(bytes.fromhex(bits), dtype=np.uint8))[:int(n)].astype(bool)


def paired_counts(correct: np.ndarray | None, best_packed: str | None) -> tuple[int, int] | None:
    """(images the later model gets right and the best wrong, and the reverse); None when either
    side's per-image results are unknown or cover different images."""
    if correct is None or not best_packed:
        return None
    before = unpack_correct(best_packed)
    if len(before) != len(correct):
        return None
    return int((correct & ~before).sum()), int((~correct & before).sum())


def made_progress(row: dict, progress: dict) -> bool:
    """Is fine-tuning still improving? Validation accuracy above, or loss below, every earlier
    fine-tuning epoch's (no noise margin: this decides whether to go on, not what to keep).

    Measured against the fine-tuning epochs only, never the probe: the first epochs at the peak
    learning rate usually score below the probe and then climb (flowers, `--time-budget 2700`:
    0.70, 0.72, 0.76, ... under a probe of 0.754), and counting them as "no better than the
    probe" stopped a 19-epoch plan after epoch 4 (benchmarks/finetune_study.md, section 8).
    """
    if not progress or row["val_accuracy"] is None:
        return True
    return row["val_accuracy"] > progress["val_accuracy"] or _loss(row) < _loss(progress)


def _loss(row: dict) -> float:
    v = row.get("val_loss")
    return math.inf if v is None or math.isnan(v) else v


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
    ema: WeightAverage | None = None  # set once the starting weights are in place (trainer._train)
    skipped: set[str] = field(default_factory=set)
