"""The settings of a `tl finetune` / `tl retrain` run, saved as `config.json` beside it.

`--resume` rebuilds the run from that file, never from current defaults. Only resource settings
(`RESOURCE_FIELDS`) may differ on resume: they change how fast the run goes, not what it learns
(batch size changes the step count, so the learning-rate schedule is defined per epoch fraction,
not per step, and stays the same curve).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from tl_cli.backbones import DEFAULT_BACKBONE
from tl_cli.errors import ConfigError, RunError
from tl_cli.runs.store import write_run_json
from tl_cli.runtime.fields import check_field_types

CONFIG_FILE = "config.json"
ROUTES = ("finetune", "retrain")
OPTIMIZERS = ("auto", "adamw", "sgd")
# Learning rates (trained backbone layers, head) when not given, per route and optimizer. SGD's
# steps are the gradient times the rate, AdamW's are about the rate whatever the gradient: SGD
# needs larger rates for the same progress (finetune_study.md, section 7).
DEFAULT_LRS = {("finetune", "adamw"): (3e-4, 3e-3), ("finetune", "sgd"): (1e-3, 1e-2),
               ("retrain", "adamw"): (1e-4, 1e-3), ("retrain", "sgd"): (3e-4, 3e-3)}
# "auto" picks SGD after a probe this accurate on validation; `tl suggest` says extract is enough
# from the same level (suggest.NEAR_PERFECT is this constant): the features already fit, and AdamW's full-size steps
# on near-zero gradients cost catsdogs 2-4 of 106 validation images in the first epoch where SGD lost at most 1.
SGD_AFTER_PROBE = 0.97
HEAD_INITS = ("probe", "random")
BN_POLICIES = ("frozen", "train")
MIX_AUTO = 1.0  # --mix auto's share: every batch, as measured (study, section 15)
MIX_MIN_EPOCHS = 20  # mixing paid nothing in 15 epochs and 1.5 points in 30 (study, section 15)
# Most epochs a --time-budget plan may give (more would call for --epochs). Unmixed runs overfit well
# before 30 epochs on flowers (study, section 14); mixed ones still gained at 30 (sections 15-17).
PLAN_CAP = 30
PLAN_CAP_MIXED = 60
# What may change on --resume: where and how fast the run goes, not what it computes.
# Settings added after runs were saved, with the value that reproduces those runs when resumed.
# image_size 0 = the backbone's own input size, what every run did before the setting existed.
SETTINGS_ADDED_LATER = {"ema": 0.0, "image_size": 0, "mix": 0.0}
RESOURCE_FIELDS = frozenset({"batch_size", "device", "workers", "time_budget"})
# Seeds seed numpy's legacy generator (32 bits) and torch's (64): one range both take.
MAX_SEED = 2**32 - 1
# Largest training side: 4x the largest input of a registered backbone family (512 px). Beyond it
# one image's activations outgrow any GPU, and photos carry no more detail for a classifier.
MAX_IMAGE_SIZE = 2048
# Settings every saved config.json holds (the others may be missing from older runs' files).
REQUIRED_SETTINGS = ("route", "backbone", "freeze", "epochs")


def probe_fits(probe_accuracy: float | None) -> bool:
    """The probe already fits (scores SGD_AFTER_PROBE or more on validation): what --optimizer auto
    and --mix auto both decide on. No score (no probe, no validation images) counts as not fitting."""
    return probe_accuracy is not None and probe_accuracy >= SGD_AFTER_PROBE


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides what a fine-tuning run learns (and a few resource settings).

    Attributes:
        route: "finetune" (first `freeze` layers fixed) or "retrain" (whole network, freeze 0).
        backbone, weights, pretrained: which network to start from (see `tl backbones`).
        freeze: layers 1..freeze keep their pretrained weights (`tl layers` numbering).
        epochs: maximum number of epochs (early stopping and the time budget may end sooner).
        batch_size: images per optimisation step, over all torchrun ranks together (each takes batch/N).
        lr: learning rate of the trained backbone layers; head_lr: of the new head. None: the
            optimizer's default for the route (DEFAULT_LRS).
        optimizer: "adamw", "sgd" (with `momentum`, Nesterov) or "auto": SGD when the probe start
            scores SGD_AFTER_PROBE or more on validation, AdamW otherwise (and without a probe).
            Decided after the probe and saved, with the learning rates, as numbers (`settled`).
        weight_decay: decoupled (AdamW) or L2 (SGD); not applied to biases and norm weights.
        warmup_epochs: linear warm-up from 0, then cosine decay to 0 at `epochs` (per step);
            default one epoch, or a fifth of the epochs when there are fewer than five.
        label_smoothing: cross-entropy label smoothing. dropout: before the new head.
        mix: share of training batches blended by mixup or CutMix (finetune/mix.py); 0 = off.
            None ("auto"): MIX_AUTO when the features must adapt (no probe, or it scores below
            SGD_AFTER_PROBE) and the run has MIX_MIN_EPOCHS epochs or more, else 0: blending
            costs the first epochs and pays only in a long run. Decided once the epochs are
            known (after the probe, or at the plan of a --time-budget run) and saved as a number.
        ema: half-life, in epochs, of the exponential moving average of the trained weights
            (finetune/ema.py); the average is what is validated and kept. 0 turns it off.
        patience: stop after this many fine-tuning epochs in a row that improve neither validation
            accuracy nor loss on the earlier ones (the probe does not count; state.made_progress). 0 = never.
        augment: random resized crop + horizontal flip on training images.
        seed: random seed; a CPU run with the same seed gives bit-identical weights.
        device: "auto", "cpu", "cuda", "cuda:N". workers: decoding processes (None = automatic).
        time_budget: seconds; the run stops before an epoch that would not fit (None = none).
        val_fraction: validation share when the data has no val/ folder (same split as extract).
        sync_bn: under torchrun on GPUs, batch norms use the statistics of the global batch
            instead of each rank's share (SyncBatchNorm; CUDA only). No effect in one process.
        head_init: "probe" (LP-FT: before epoch 1 the head is fitted on the frozen features as
            `tl extract` fits it, and that model is scored as epoch 0) or "random".
        plan_epochs: without --epochs but with --time-budget: `epochs` is only a cap until the
            first epoch has been timed, then the run sets it to the epochs that fit the budget, so
            the cosine schedule ends at zero inside it, and saves the config with plan_epochs off
            (budget.plan), and shortens it if later epochs run slower (budget.replan): a resumed
            run keeps the plan as saved.
        bn: batch norms of the trained layers: "frozen" (eval mode: pretrained running statistics,
            scale and shift still trained) or "train" (batch statistics, running ones updated).
        group_pattern, groups: keep groups of images on one side of the split (data/groups.py).
        image_size: side of the square crops trained on, and then predicted on. None (the default)
            is decided when the run starts, from the images (data/image_size.py: their own size
            when smaller than the backbone's, not below 128), and saved as a number; 0 means the
            backbone's input size.
    """

    route: str = "finetune"
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    pretrained: bool = True
    freeze: int = 0
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    head_lr: float | None = None
    optimizer: str = "auto"
    momentum: float = 0.9
    weight_decay: float = 0.01
    warmup_epochs: float | None = None  # None: min(1, epochs / 5), so short runs still decay
    label_smoothing: float = 0.0  # the probe head is fitted without it: smoothing would pull it away (study)
    dropout: float = 0.2
    mix: float | None = None
    ema: float = 2.0  # epochs in a row above the probe on catsdogs and flowers instead of dips (study, section 13)
    patience: int = 4
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    time_budget: float | None = None
    val_fraction: float = 0.2
    sync_bn: bool = False
    head_init: str = "probe"
    bn: str = "frozen"
    plan_epochs: bool = False
    group_pattern: str | None = None
    groups: str | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        from tl_cli.backbones.registry import absolute_weights_path

        check_field_types(self)
        object.__setattr__(self, "weights", absolute_weights_path(self.weights))
        if self.warmup_epochs is None:
            object.__setattr__(self, "warmup_epochs", min(1.0, self.epochs / 5))
        checks = [
            (self.route in ROUTES, f"route must be one of {ROUTES}, got {self.route!r}"),
            (self.head_init in HEAD_INITS, f"--head-init must be probe or random, got {self.head_init!r}"),
            (self.bn in BN_POLICIES, f"--bn must be frozen or train, got {self.bn!r}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be auto, adamw or sgd, got {self.optimizer!r}"),
            (self.freeze >= 0, f"--freeze must be >= 0, got {self.freeze}"),
            (self.route != "retrain" or self.freeze == 0, "tl retrain trains every layer: use tl finetune --freeze N"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (_positive(self.lr) and _positive(self.head_lr),
             f"learning rates must be positive finite numbers (lr {self.lr}, head lr {self.head_lr})"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (0 <= self.weight_decay < math.inf, f"--weight-decay must be a finite number >= 0, got {self.weight_decay}"),
            (0 <= self.warmup_epochs < self.epochs, f"--warmup-epochs must be in [0, epochs), got {self.warmup_epochs}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.mix is None or 0 <= self.mix <= 1, f"--mix must be in [0, 1], got {self.mix}"),
            (0 <= self.ema < math.inf, f"--ema must be a finite number >= 0 epochs (0 = off), got {self.ema}"),
            (self.patience >= 0, f"--patience must be >= 0, got {self.patience}"),
            (self.workers is None or self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.time_budget is None or 0 < self.time_budget < math.inf,
             f"--time-budget must be a finite number of seconds > 0, got {self.time_budget}"),
            (0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
            (self.image_size in (None, 0) or 32 <= self.image_size <= MAX_IMAGE_SIZE,
             f"--image-size must be in [32, {MAX_IMAGE_SIZE}] pixels, got {self.image_size}"),
            (0 <= self.seed <= MAX_SEED, f"--seed must be in [0, {MAX_SEED}], got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def for_route(cls, route: str, **overrides: Any) -> FinetuneConfig:
        """Defaults suited to the route, with `overrides` on top.

        With a time budget and no epochs, the epochs are planned (see `plan_epochs`).
        Retraining moves every pretrained layer, so its backbone learning rate is lower (a tenth
        of the head's) to keep the pretrained features from being wrecked in the first epochs.
        """
        base = dict(route=route)
        if route == "retrain":
            base.update(freeze=0, epochs=15, patience=5)  # lower learning rates too: DEFAULT_LRS
        if overrides.get("epochs") is None and overrides.get("time_budget") is not None:
            base.update(plan_epochs=True, epochs=PLAN_CAP_MIXED, warmup_epochs=1.0)  # the cap until planned
        base.update({k: v for k, v in overrides.items() if v is not None})  # None = the default
        return cls(**base)

    @property
    def waits_for_probe(self) -> bool:
        """True while "auto" still needs the probe's validation accuracy to pick the optimizer."""
        return (self.optimizer == "auto" or self.mix is None) and self.head_init == "probe"

    def optimizer_settings(self, probe_accuracy: float | None = None) -> tuple[str, float, float]:
        """(optimizer, lr, head_lr) to train with, given the probe's validation accuracy (None: no probe yet)."""
        name = self.optimizer
        if name == "auto":
            name = "sgd" if probe_fits(probe_accuracy) else "adamw"
        lr, head_lr = DEFAULT_LRS[(self.route, name)]
        return name, (lr if self.lr is None else self.lr), (head_lr if self.head_lr is None else self.head_lr)

    def settled(self, probe_accuracy: float | None = None) -> FinetuneConfig:
        """This config with the optimizer and learning rates decided (`optimizer_settings`), and the
        mix share too unless the epochs are still to be planned, as it is saved."""
        name, lr, head_lr = self.optimizer_settings(probe_accuracy)
        mix = self.mix if self.mix is not None or self.plan_epochs else self.auto_mix(probe_accuracy)
        return replace(self, optimizer=name, lr=lr, head_lr=head_lr, mix=mix)

    def plan_cap(self, probe_accuracy: float | None) -> int:
        """Most epochs a --time-budget plan may give this run: `epochs` (PLAN_CAP_MIXED unless given
        lower) when it blends batches at that length, else at most PLAN_CAP (longer unmixed schedules only overfit)."""
        mix = self.auto_mix(probe_accuracy) if self.mix is None else self.mix
        return self.epochs if mix > 0 else min(self.epochs, PLAN_CAP)

    def auto_mix(self, probe_accuracy: float | None) -> float:
        """--mix auto for a run of `epochs` epochs whose probe scored `probe_accuracy` (None: no probe)."""
        return MIX_AUTO if not probe_fits(probe_accuracy) and self.epochs >= MIX_MIN_EPOCHS else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """The config saved as `d`. Raises RunError saying what is wrong when `d` is not one (`load` names the file)."""
        if not isinstance(d, dict):
            raise RunError(f"not a JSON object (got {type(d).__name__})")
        # Without these, the defaults would build another network than the checkpoint's.
        missing = [k for k in REQUIRED_SETTINGS if k not in d]
        if missing:
            raise RunError(f"missing settings: {', '.join(missing)}")
        d = {**SETTINGS_ADDED_LATER, **d}  # a run saved before a setting existed resumes as it trained
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise RunError(f"unknown settings: {', '.join(unknown)}",
                           hint="it was written by another version of tl")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:  # a value of the wrong type, e.g. "epochs": "ten"
            raise RunError(f"a value of the wrong type ({exc})") from exc
        except ConfigError as exc:  # a value out of range
            raise RunError(exc.message) from exc

    def save(self, run_dir: Path) -> None:
        write_run_json(run_dir / CONFIG_FILE, self.to_dict())

    @classmethod
    def load(cls, run_dir: Path) -> FinetuneConfig:
        """The config of the run in `run_dir`.

        Raises:
            RunError: no config.json (not a fine-tuning run), or a damaged one (the message says what is wrong).
        """
        path = run_dir / CONFIG_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            if not Path(run_dir).exists():
                raise RunError(f"run folder not found: {run_dir}", hint="`tl runs` lists this workspace's runs") from exc
            raise RunError(f"{run_dir} has no {CONFIG_FILE}: not a fine-tuning run") from exc
        except ValueError as exc:
            raise RunError(f"{path}: not valid JSON ({exc})") from exc
        except RunError as exc:
            raise RunError(f"damaged run config {path}: {exc.message}",
                           hint=exc.hint or "the file was edited or damaged; start a new run") from exc

    def with_resume_overrides(self, overrides: dict[str, Any]) -> FinetuneConfig:
        """The saved config with the settings given on `--resume` applied.

        Raises:
            ConfigError: a setting other than a resource one differs from the saved run (named).
        """
        # Compared before anything is validated: a value that only fails against the saved ones
        # (--epochs 1 with the saved warm-up of 1 epoch) is still a change, and named as one.
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"unknown setting(s) to resume with: {', '.join(unknown)}",
                              hint=f"only {', '.join(sorted(RESOURCE_FIELDS))} may change on --resume")
        given = {k: _as_saved(k, v) for k, v in overrides.items()}
        changed = {k: v for k, v in given.items() if v != getattr(self, k)}
        bad = sorted(k for k in changed if k not in RESOURCE_FIELDS)
        if bad:
            detail = ", ".join(f"{k} (saved {getattr(self, k)!r}, given {changed[k]!r})" for k in bad)
            raise ConfigError(
                f"cannot change {detail} when resuming",
                hint=f"only {', '.join(sorted(RESOURCE_FIELDS))} may change on --resume; start a new run to change the rest",
            )
        return replace(self, **changed)


def _positive(v: float | None) -> bool:
    """A learning rate: not given (None), or a finite number above 0."""
    return v is None or 0 < v < math.inf


def _as_saved(key: str, value: Any) -> Any:
    """A setting given on --resume as the config saves it (a relative --weights made absolute)."""
    from tl_cli.backbones.registry import absolute_weights_path

    return absolute_weights_path(value) if key == "weights" else value
