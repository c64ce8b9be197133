"""`tl finetune` and `tl retrain`: train the later layers (or all) and a new head on images.

One epoch = augmented training pass + validation pass + atomic checkpoint. The weights of the
best validation epoch (accuracy, ties broken by lower loss) are the ones the run keeps, because
accuracy often peaks and then falls as training goes on. A run folder holds:

    config.json       the FinetuneConfig (what --resume rebuilds from)
    source.json       dataset folder and classes
    checkpoint.pt     last complete epoch (see checkpoint.py); best.safetensors: best weights
    history.csv       one row per epoch; curves.png: loss and accuracy curves
    model.safetensors + meta.json   the same run files as `tl extract`, for predict/evaluate
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tl_cli.finetune import ddp
from tl_cli.runtime import distributed
from tl_cli.runtime.atomic import write_json, write_text
from tl_cli.backbones import create_backbone, get_spec
from tl_cli.finetune.checkpoint import BEST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from tl_cli.data.scan import Dataset, scan_dataset
from tl_cli.errors import ConfigError, DataError, RunError
from tl_cli.finetune.config import CONFIG_FILE, FinetuneConfig
from tl_cli.finetune.model import FinetuneModel
from tl_cli.runtime.oom import HalvingStep, apply_update
from tl_cli.finetune.step import Amp, accumulate, to_device, train_step  # noqa: F401 - train_step: public here too
from tl_cli.runtime.progress import Reporter
from tl_cli.runs.meta import DatasetRef, RunMeta, WeightsRef
from tl_cli.runs.store import META, load_tensors, new_run_dir, save_run, save_tensors
from tl_cli.finetune.data import make_loaders
from tl_cli.runs.workspace import Workspace

SOURCE = "source.json"
HISTORY = "history.csv"
CURVES = "curves.png"
HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second")


@dataclass
class FinetuneResult:
    """What a run did. `already_finished` is True when --resume found nothing left to do."""

    run_dir: Path
    config: FinetuneConfig
    history: list[dict]
    best_epoch: int | None
    best: dict
    stop_reason: str  # "epochs", "early_stopping", "time_budget"
    classes: list[str] = field(default_factory=list)
    resumed_from: int = 0
    already_finished: bool = False
    trainable_params: int = 0
    frozen_params: int = 0
    n_layers: int = 0
    n_train: int = 0
    n_val: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- optimisation


def lr_factor(progress: float, warmup: float, total: float) -> float:
    """Learning-rate multiplier at `progress` epochs: linear warm-up to 1, then cosine to 0 at `total`.

    Defined on (fractional) epochs rather than steps, so a resumed run with another batch size
    follows the same curve.
    """
    if warmup > 0 and progress < warmup:
        return progress / warmup
    t = min(max((progress - warmup) / max(total - warmup, 1e-12), 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def build_optimizer(model: FinetuneModel, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW (default) or SGD+Nesterov over the trainable parameters.

    Two learning rates (trained backbone layers: `lr`, new head: `head_lr`); no weight decay on
    biases and norm weights (1-d tensors), where decay only fights the normalisation.
    """
    groups = []
    for params, lr in ((model.body_parameters(), cfg.lr), (model.head_parameters(), cfg.head_lr)):
        for ps, wd in (([p for p in params if p.ndim > 1], cfg.weight_decay), ([p for p in params if p.ndim <= 1], 0.0)):
            if ps:
                groups.append({"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.head_lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.head_lr)


def set_lr(opt: torch.optim.Optimizer, factor: float) -> float:
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor
    return opt.param_groups[-1]["lr"]  # the head's, for display


@torch.no_grad()
def validate(model: nn.Module, loader, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a loader (over all ranks' loaders), in eval mode; no label smoothing.

    float32 on every device (no autocast): the accuracy that chooses the best epoch is the one
    prediction and `tl evaluate` reproduce (precision policy, runtime/device.py).
    Under torchrun pass the model itself, not its DDP wrapper (see ddp.wrap). Out of memory
    (float32 needs twice the activation memory of the bf16 training steps) halves the batch.
    """
    from tl_cli.runtime.oom import HalvingForward

    was_training = model.training
    model.eval()
    forward = HalvingForward(lambda xb: model(to_device(xb, device)).float())
    loss_sum, correct, n = 0.0, 0, 0
    for x, y, _ in loader:
        if x is None:
            continue
        logits = forward(x)
        y = y.to(device)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    loss_sum, correct, n = ddp.sum_over_ranks(loss_sum, correct, n)  # each rank saw its share
    return (loss_sum / n, correct / n) if n else (float("nan"), float("nan"))


# ----------------------------------------------------------------------------- runs


def start(data_dir: str | os.PathLike, cfg: FinetuneConfig, workspace: Workspace | None = None,
          reporter: Reporter | None = None) -> FinetuneResult:
    """Fine-tune (or retrain) on a folder of class sub-folders and save a run.

    Raises:
        DataError, ConfigError (e.g. --freeze too large, naming the layer count), WeightsNotFound.

    Example:
        >>> r = start("photos", FinetuneConfig(backbone="lenet5", pretrained=False, freeze=2, epochs=3))
        >>> r.best_epoch, r.best["val_accuracy"]
        (3, 0.97)
    """
    t0 = time.perf_counter()
    ws = workspace or Workspace.open()
    ddp.check_sync_bn(cfg.sync_bn, distributed.rank_device(cfg.device))
    ddp.local_batch_size(cfg.batch_size)  # a global batch that does not split fails before a run folder exists
    info = distributed.init(cfg.device)
    prepared = None
    if info.is_main:  # under torchrun rank 0 alone makes the run folder and sends it to the others
        ds = scan_dataset(data_dir, cfg.val_fraction)
        ws.ensure(outside=ds.root)
        _check_freeze(cfg)  # an unknown backbone or a too-large --freeze fails before a run folder exists
        run_dir = new_run_dir(ws.runs, cfg.route, ds.root.name)
        cfg.save(run_dir)
        write_json(run_dir / SOURCE, {"data_dir": str(ds.root), "classes": ds.classes, "layout": ds.layout})
        ws.remember(last_dataset=ds.root, training_run=run_dir)
        prepared = (run_dir, ds)
    run_dir, ds = distributed.broadcast_object(prepared)
    return _train(run_dir, cfg, ds, ws, reporter or Reporter(), None, t0)


def _check_freeze(cfg: FinetuneConfig) -> None:
    from tl_cli.backbones.describe import meta_backbone
    from tl_cli.backbones.layers import check_freeze, count_layers

    spec = get_spec(cfg.backbone)
    check_freeze(cfg.freeze, count_layers(meta_backbone(spec), spec.preprocess.input_size))


def resume(run_dir: str | os.PathLike | None = None, overrides: dict | None = None, data_dir: str | os.PathLike | None = None,
           workspace: Workspace | None = None, reporter: Reporter | None = None) -> FinetuneResult:
    """Continue an interrupted run from its last checkpoint (default: the workspace's last one).

    Ends with the weights an uninterrupted run would have (CPU, same settings). `overrides` may
    change only resource settings (batch size, device, workers, time budget).

    Raises:
        RunError: no run to resume, or a damaged checkpoint. UnsafeFile: a checkpoint with code.
        ConfigError: a non-resource setting differs (named), or another dataset was given.
    """
    t0 = time.perf_counter()
    ws = workspace or Workspace.open()
    info = distributed.init((overrides or {}).get("device") or _saved_device(ws, run_dir))
    prepared = None
    if info.is_main:  # under torchrun rank 0 alone reads the run and sends it (checkpoint included)
        prepared = _prepare_resume(ws, run_dir, overrides, data_dir)
    prepared = distributed.broadcast_object(prepared)
    if isinstance(prepared, FinetuneResult):
        distributed.shutdown()
        return prepared
    run_dir, cfg, ds, ckpt = prepared
    return _train(run_dir, cfg, ds, ws, reporter or Reporter(), ckpt, t0)


def _saved_device(ws: Workspace, run_dir) -> str:
    """The --device the run was started with (what resume computes on unless overridden); "auto"
    where this process cannot read the run (under torchrun the workspace may be on node 0 only)."""
    try:
        run_dir = Path(run_dir) if run_dir is not None else Path(ws.state()["training_run"])
        return str(json.loads((run_dir / CONFIG_FILE).read_text()).get("device") or "auto")
    except Exception:  # noqa: BLE001 - rank 0 reports a missing or damaged run properly, right after
        return "auto"


def _prepare_resume(ws: Workspace, run_dir, overrides: dict | None, data_dir):
    """(run_dir, config, dataset, checkpoint) to continue from, or the result of a finished run."""
    if run_dir is None:
        last = ws.state().get("training_run")
        if not last:
            raise RunError("no fine-tuning run to resume in this workspace", hint="start one with `tl finetune DATA_DIR`")
        run_dir = last
    run_dir = Path(run_dir)
    cfg = FinetuneConfig.load(run_dir).with_resume_overrides(overrides or {})
    try:
        source = json.loads((run_dir / SOURCE).read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{run_dir / SOURCE} is missing or unreadable: cannot tell which dataset to resume on") from exc
    if data_dir is not None and Path(data_dir).expanduser().resolve() != Path(source["data_dir"]):
        raise ConfigError(f"cannot change the dataset when resuming (saved {source['data_dir']}, given {data_dir})",
                          hint="omit DATA_DIR with --resume, or start a new run")
    ckpt = load_checkpoint(run_dir)
    if ckpt.get("finished") and (run_dir / META).is_file():
        return _finished_result(run_dir, cfg, ckpt)
    ds = scan_dataset(source["data_dir"], cfg.val_fraction)
    if ds.classes != source["classes"]:
        raise DataError(f"the classes in {ds.root} changed since the run started "
                        f"({', '.join(source['classes'])} -> {', '.join(ds.classes)})", hint="start a new run")
    cfg.save(run_dir)
    ws.remember(training_run=run_dir)
    return run_dir, cfg, ds, ckpt


def _finished_result(run_dir: Path, cfg: FinetuneConfig, ckpt: dict) -> FinetuneResult:
    return FinetuneResult(run_dir, cfg, list(ckpt["history"]), ckpt["best"].get("epoch"), dict(ckpt["best"]),
                          ckpt.get("stop_reason", "epochs"), resumed_from=int(ckpt["epoch"]), already_finished=True)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _train(run_dir: Path, cfg: FinetuneConfig, ds: Dataset, ws: Workspace, reporter: Reporter,
           ckpt: dict | None, t0: float) -> FinetuneResult:
    from tl_cli.finetune.data import default_workers

    info = distributed.env_info()
    device = distributed.rank_device(cfg.device)  # cuda:LOCAL_RANK under torchrun
    ddp.check_sync_bn(cfg.sync_bn, device)
    if not info.is_main:
        reporter = Reporter()  # one progress bar and one log: rank 0's
    spec = get_spec(cfg.backbone)
    _seed_everything(cfg.seed)
    backbone, choice = create_backbone(cfg.backbone, cfg.weights, cfg.pretrained)
    model = FinetuneModel(backbone, len(ds.classes), cfg.freeze, spec.preprocess.input_size, cfg.dropout)
    if cfg.sync_bn and info.enabled:
        model.use_sync_batchnorm()
    model = model.to(device).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    workers = default_workers(device.type) if cfg.workers is None else cfg.workers
    amp = Amp(device)
    loaders = make_loaders(ds, spec.preprocess, cfg.batch_size, workers, cfg.augment, cfg.seed, device.type == "cuda",
                           dist=info)
    if loaders.n_train == 0:
        raise DataError(f"no training images in {ds.root}", hint="lower --val-fraction or add images")
    st = {"epoch": 0, "best": {}, "bad_epochs": 0, "history": [], "finished": False, "stop_reason": "epochs"}
    if ckpt is not None:
        model.net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        for k in st:
            st[k] = ckpt.get(k, st[k])
        per_rank = ckpt.get("rng_ranks")  # under torchrun: every rank's streams, restored rank by rank
        mine = per_rank[info.rank] if per_rank and len(per_rank) == info.world_size else ckpt["rng"]
        set_rng_state(mine, loaders.generator)
        amp.load_state_dict(ckpt.get("amp"))
    elif info.enabled:
        _seed_everything(cfg.seed + 7919 * info.rank)  # same initial weights, different dropout per rank
    if ckpt is None and cfg.head_init == "probe":
        _start_from_probe(run_dir, cfg, ds, ws, model, opt, loaders, st, spec, choice, device, workers, reporter, amp)
    net = ddp.wrap(model, device)  # after loading: DDP starts every rank from rank 0's weights
    resumed_from = st["epoch"]
    trainable, frozen = model.count_parameters()
    reporter.log(f"{cfg.route}: {cfg.backbone}, {len(model.layers)} layers, {cfg.freeze} frozen; "
                 f"{trainable:,} trainable / {frozen:,} frozen parameters; {loaders.n_train} train / "
                 f"{loaders.n_val} val images; {device.type}"
                 + (f" x {info.world_size} processes" if info.enabled else "") + (f"; resuming after epoch {resumed_from}" if ckpt else ""))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    deadline = t0 + cfg.time_budget if cfg.time_budget else None
    skipped: set[str] = {f"{rel}: {why}" for rel, why in ds.skipped}  # found by the scan: named, not silent
    longest = 0.0  # wall time of the slowest epoch so far, checkpoint and plot included
    # Not under torchrun: a rank retrying a step alone would leave the others waiting in the
    # gradient all-reduce of the step it abandoned; there an OOM stops the run (lower --batch-size).
    halving = None if info.enabled else HalvingStep(lambda m: reporter.log(
        f"out of memory: training goes on in micro-batches of {m}, gradients accumulated over {cfg.batch_size}"))
    while not st["finished"] and st["epoch"] < cfg.epochs:
        if deadline and ddp.any_rank(time.perf_counter() + longest > deadline):
            st["stop_reason"] = "time_budget"  # the next epoch would not fit: stop with the best so far
            break
        t_epoch = time.perf_counter()
        row = _run_epoch(model, opt, loaders, loss_fn, device, cfg, st["epoch"], reporter, deadline, skipped, halving, net,
                         amp)
        if row is None:
            st["stop_reason"] = "time_budget"  # ran out mid-epoch: that partial epoch is discarded
            break
        _end_epoch(run_dir, cfg, model, opt, loaders, st, row, amp)
        first = longest == 0.0
        longest = max(longest, time.perf_counter() - t_epoch)
        reporter.log(format_row(row, improved=st["best"].get("epoch") == row["epoch"]))
        if first and deadline and not st["finished"]:
            _warn_if_budget_short(reporter, cfg, st["epoch"], longest, deadline)
    if not st["best"]:
        raise RunError(f"the time budget ({cfg.time_budget:g} s) ended before the first epoch did",
                       hint="start again with a larger --time-budget (no epoch was finished, so there is nothing to keep)")
    skipped = set().union(*distributed.all_gather_object(sorted(skipped)))
    if info.is_main:
        _save_final(run_dir, cfg, ds, model, spec, choice, st, loaders, amp)
        ws.remember(latest_run=run_dir)
    distributed.shutdown()
    return FinetuneResult(run_dir, cfg, st["history"], st["best"]["epoch"], st["best"], st["stop_reason"],
                          classes=ds.classes, resumed_from=resumed_from, trainable_params=trainable,
                          frozen_params=frozen, n_layers=len(model.layers), n_train=loaders.n_train,
                          n_val=loaders.n_val, seconds=time.perf_counter() - t0, skipped=sorted(skipped))


def _start_from_probe(run_dir: Path, cfg: FinetuneConfig, ds: Dataset, ws: Workspace, model: FinetuneModel, opt,
                      loaders, st: dict, spec, choice, device: torch.device, workers: int, reporter: Reporter,
                      amp: Amp | None = None) -> None:
    """LP-FT (probe.py): fit the head on the frozen features, score that model as epoch 0 and checkpoint it.

    Epoch 0 competes for the best epoch like any other, so the kept model is never worse on
    validation than the probe. Under torchrun every rank computes its share of the features (whole
    batches of the global size dealt round-robin, as extraction does, with its out-of-memory
    fallback); rank 0 fits the probe and sends it to the others.
    """
    from tl_cli.finetune.probe import fit_probe, load_into

    t = time.perf_counter()
    reporter.log("fitting the head on the frozen features first (linear probe; --head-init random skips it)")
    probe = fit_probe(model.net, ds, spec, choice.identity, ws, cfg.batch_size, workers, device,
                      use_cache=True, on_halve=lambda b: reporter.log(f"out of memory: the probe goes on in batches of {b}"))
    load_into(model.net, probe)
    val_loss, val_acc = validate(model, loaders.val, device) if loaders.val is not None else (None, None)
    row = {"epoch": 0, "train_loss": probe.train_loss, "train_accuracy": probe.train_accuracy, "val_loss": val_loss,
           "val_accuracy": val_acc, "lr": 0.0, "seconds": time.perf_counter() - t,
           "images_per_second": probe.n_train / max(probe.seconds, 1e-9)}
    _end_epoch(run_dir, cfg, model, opt, loaders, st, row, amp)
    reporter.log(f"probe: L2 {probe.l2:g}, features {'from the tl extract cache' if probe.source == 'cache' else 'computed'} "
                 f"for {probe.n_train} training images in {probe.seconds:.1f} s")
    reporter.log(format_row(row, improved=True))


def _warn_if_budget_short(reporter: Reporter, cfg: FinetuneConfig, done: int, epoch_s: float, deadline: float) -> None:
    """Say early when the budget will cut the run short: the schedule would end at high learning rate."""
    fit = done + int(max(deadline - time.perf_counter(), 0.0) // epoch_s)
    if fit < cfg.epochs:
        reporter.log(f"note: at {epoch_s:.0f} s per epoch about {fit} of {cfg.epochs} epochs fit in the time budget, "
                     f"so the learning rate will not have decayed when it stops; --epochs {max(fit, 1)} plans for that")


def _run_epoch(model, opt, loaders, loss_fn, device, cfg: FinetuneConfig, epoch: int, reporter: Reporter,
               deadline: float | None, skipped: set[str], halving: HalvingStep | None = None,
               net: nn.Module | None = None, amp: Amp | None = None) -> dict | None:
    """Train one epoch (through `net`, the DDP wrapper under torchrun) and validate; None if the
    deadline passed mid-epoch. Loss, accuracy and speed are over all ranks.

    The forward/backward of a step is retried in micro-batches after out-of-memory (`halving`),
    the optimizer update runs once per step (`oom.apply_update`). images/s counts from the end
    of the first step, so that CUDA and cuDNN start-up and the loader's first batch (worker
    start-up) are not counted as training speed (with a single step, the whole epoch).
    """
    amp = amp or Amp(device, "float32")
    t = time.perf_counter()
    net = net or model
    loaders.sampler.set_epoch(epoch)  # a new order every epoch, the same on resume
    model.train()
    n_batches = len(loaders.train)
    loss_sum, correct, seen = 0.0, 0, 0
    lr = 0.0
    t_first, seen_first = None, 0  # time and images after the first step
    reporter.start(f"epoch {epoch + 1}/{cfg.epochs}", n_batches)
    try:
        for i, (x, y, errors) in enumerate(loaders.train):
            skipped.update(errors)
            if not ddp.any_rank(x is None):  # a step happens on all ranks or none (DDP syncs in backward)
                lr = set_lr(opt, lr_factor(epoch + (i + 1) / n_batches, cfg.warmup_epochs, cfg.epochs))
                forward_backward = functools.partial(accumulate, net, opt, x, y, loss_fn, device, amp=amp)
                loss, ok = halving(forward_backward, len(y)) if halving else forward_backward()
                apply_update(lambda: amp.update(opt))
                loss_sum, correct, seen = loss_sum + loss * len(y), correct + ok, seen + len(y)
                if t_first is None:
                    t_first, seen_first = time.perf_counter(), seen
            speed = _speed(seen, seen_first, t, t_first)
            reporter.advance(1, loss=f"{loss_sum / max(seen, 1):.4f}", acc=f"{correct / max(seen, 1):.3f}",
                             img_s=f"{speed:.1f}/s")
            if deadline and ddp.any_rank(time.perf_counter() > deadline):
                return None
    finally:
        reporter.stop()
    speed = _speed(seen, seen_first, t, t_first)
    loss_sum, correct, seen, speed = ddp.sum_over_ranks(loss_sum, correct, seen, speed)
    val_loss, val_acc = validate(model, loaders.val, device) if loaders.val is not None else (None, None)
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": lr,
        "seconds": time.perf_counter() - t,
        "images_per_second": speed,
    }


def _speed(seen: int, seen_first: int, t0: float, t_first: float | None) -> float:
    """Training images/s of this rank: after the first step when there were more, else overall."""
    now = time.perf_counter()
    if t_first is not None and seen > seen_first and now > t_first:
        return (seen - seen_first) / (now - t_first)
    return seen / max(now - t0, 1e-9)


def _better(row: dict, best: dict) -> bool:
    """Higher validation accuracy wins, lower validation loss breaks ties; no val: latest wins."""
    if not best or row["val_accuracy"] is None:
        return True
    return (row["val_accuracy"], -row["val_loss"]) > (best["val_accuracy"], -best["val_loss"])


def _end_epoch(run_dir: Path, cfg: FinetuneConfig, model: FinetuneModel, opt, loaders, st: dict, row: dict,
               amp: Amp | None = None) -> None:
    """Update the run state (on every rank: metrics are global, so all ranks decide alike); rank 0 writes."""
    main = distributed.is_main()
    st["epoch"] = row["epoch"]
    st["history"].append(row)
    if _better(row, st["best"]):
        # Best weights first, then the checkpoint that names them: a kill in between replays
        # this (deterministic) epoch on resume and writes the same file again.
        if main:
            save_tensors(run_dir / BEST, model.net.state_dict())
        st["best"] = {k: row[k] for k in ("epoch", "val_loss", "val_accuracy", "train_loss", "train_accuracy")}
        st["bad_epochs"] = 0
    else:
        st["bad_epochs"] += 1
    if cfg.patience and loaders.val is not None and st["bad_epochs"] >= cfg.patience:
        st["finished"], st["stop_reason"] = True, "early_stopping"
    elif st["epoch"] >= cfg.epochs:
        st["finished"], st["stop_reason"] = True, "epochs"
    rngs = distributed.all_gather_object(rng_state(loaders.generator))  # each rank draws its own dropout, workers
    if not main:
        return
    save_checkpoint(run_dir, {
        "model": model.net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": {"kind": "warmup_cosine", "progress_epochs": float(st["epoch"])},
        "rng": rngs[0],
        **({"amp": amp.state_dict()} if amp is not None and amp.scaler is not None else {}),
        **({"rng_ranks": rngs} if len(rngs) > 1 else {}),
        **st,
    })
    write_history(run_dir, st["history"])


def write_history(run_dir: Path, history: list[dict]) -> None:
    from tl_cli.finetune.plots import save_curves

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    w.writeheader()
    for h in history:
        w.writerow({k: ("" if h[k] is None else (f"{h[k]:.6g}" if isinstance(h[k], float) else h[k])) for k in HISTORY_FIELDS})
    write_text(run_dir / HISTORY, buf.getvalue())
    save_curves(history, run_dir / CURVES, title=run_dir.name)


def format_row(row: dict, improved: bool = False) -> str:
    """One aligned line per epoch (the per-epoch table the CLI prints)."""
    val = (f"val loss {row['val_loss']:.4f}  val acc {row['val_accuracy']:.4f}" if row["val_accuracy"] is not None
           else "no validation images")
    return (f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  train acc {row['train_accuracy']:.4f}  "
            f"{val}  lr {row['lr']:.2e}  {row['images_per_second']:.1f} img/s  {row['seconds']:.1f} s"
            + ("  *best" if improved else ""))


def _save_final(run_dir: Path, cfg: FinetuneConfig, ds: Dataset, model: FinetuneModel, spec, choice, st: dict,
                loaders, amp: Amp | None = None) -> None:
    """model.safetensors (best epoch's full network) + meta.json, the files predict/evaluate read."""
    best = st["best"]
    meta = RunMeta(
        route=cfg.route,
        kind="full",
        classes=tuple(ds.classes),
        backbone=cfg.backbone,
        weights=WeightsRef(choice.identity, cfg.weights, cfg.pretrained),
        preprocess=spec.preprocess,
        dataset=DatasetRef(root=str(ds.root), layout=ds.layout, n_train=loaders.n_train, n_val=loaders.n_val,
                           counts=ds.counts()),
        val_fraction=cfg.val_fraction,
        config={"finetune": cfg.to_dict()},
        metrics={k: best[k] for k in ("val_accuracy", "val_loss", "train_accuracy", "train_loss")},
        freeze=cfg.freeze,
        layers=len(model.layers),
        epochs=st["epoch"],
        best_epoch=best["epoch"],
        stop_reason=st["stop_reason"],
        finished=st["finished"],
        # val_* were measured in float32, as predict/evaluate run; only training steps used `train`.
        precision={"train": amp.dtype if amp is not None else "float32", "validation": "float32"},
    )
    save_run(run_dir, load_tensors(run_dir / BEST), meta)
