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
import json
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from tl_cli.backbones import create_backbone, get_spec
from tl_cli.backbones.registry import describe_mismatch
from tl_cli.data.groups import make_grouping
from tl_cli.data.image_size import at_side
from tl_cli.data.scan import Dataset, scan_dataset
from tl_cli.errors import ConfigError, DataError, InterruptedBeforeCheckpoint, RunError, TLWarning
from tl_cli.finetune import budget, ddp
from tl_cli.finetune.checkpoint import (
    BEST,
    load_checkpoint,
    random_state_kept,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from tl_cli.finetune.config import CONFIG_FILE, FinetuneConfig
from tl_cli.finetune.data import make_loaders, with_image_size
from tl_cli.finetune.ema import weight_average
from tl_cli.finetune.epoch import kept_weights, run_epoch, validate_run
from tl_cli.finetune.history import format_row, write_history
from tl_cli.finetune.model import FinetuneModel
from tl_cli.finetune.run_folder import SOURCE, discard_unstarted, saved_device
from tl_cli.finetune.schedule import build_optimizer, settle_optimizer
from tl_cli.finetune.state import Training, TrainState, best_numbers
from tl_cli.finetune.step import Amp
from tl_cli.runs.lock import run_lock
from tl_cli.runs.meta import DatasetRef, RunMeta, WeightsRef
from tl_cli.runs.store import META, load_tensors, new_run_dir, save_run, save_tensors, write_run_json
from tl_cli.runs.workspace import Workspace, WorkspaceLike
from tl_cli.runtime import distributed
from tl_cli.runtime.memory import keep_freed_memory
from tl_cli.runtime.oom import HalvingStep
from tl_cli.runtime.progress import Reporter


@dataclass
class FinetuneResult:
    """What a run did. `already_finished` is True when --resume found nothing left to do."""

    run_dir: Path
    config: FinetuneConfig
    history: list[dict]
    best_epoch: int | None
    best: dict
    stop_reason: str  # "epochs", "early_stopping", "time_budget", "diverged"
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


# ----------------------------------------------------------------------------- runs


def start(data_dir: str | os.PathLike, cfg: FinetuneConfig, workspace: WorkspaceLike = None,
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
    ws = Workspace.open(workspace)
    ddp.check_sync_bn(cfg.sync_bn, distributed.rank_device(cfg.device))
    ddp.local_batch_size(cfg.batch_size)  # a global batch that does not split fails before a run folder exists
    info = distributed.init(cfg.device)
    prepared, previous = None, None
    with contextlib.ExitStack() as held:
        if info.is_main:  # under torchrun rank 0 alone makes the run folder and sends it to the others
            ds = scan_dataset(data_dir, cfg.val_fraction, grouping=make_grouping(cfg.group_pattern, cfg.groups))
            ws.ensure(outside=ds.root)
            _check_freeze(cfg)  # an unknown backbone or a too-large --freeze fails before a run folder exists
            cfg = with_image_size(cfg, ds, get_spec(cfg.backbone).preprocess.input_size)  # saved: --resume replays it
            cfg = cfg if cfg.waits_for_probe else cfg.settled()
            run_dir = new_run_dir(ws.runs, cfg.route, ds.root.name)
            held.enter_context(run_lock(run_dir))
            cfg.save(run_dir)
            write_run_json(run_dir / SOURCE, {"data_dir": str(ds.root), "classes": ds.classes, "layout": ds.layout,
                                              "n_train": len(ds.split("train")), "n_val": len(ds.split("val")),
                                              "split_digest": ds.split_digest()})
            previous = ws.state().get("training_run")
            ws.remember(last_dataset=ds.root, training_run=run_dir)
            prepared = (run_dir, ds, cfg)
        run_dir, ds, cfg = distributed.broadcast_object(prepared)
        try:
            with random_state_kept():
                return _train(run_dir, cfg, ds, ws, reporter or Reporter(), None, t0)
        except BaseException as exc:  # stopped before the first checkpoint: nothing to resume, nothing to keep
            if info.is_main and discard_unstarted(run_dir, ws, previous) and isinstance(exc, KeyboardInterrupt):
                raise InterruptedBeforeCheckpoint() from exc
            raise


def _check_freeze(cfg: FinetuneConfig) -> None:
    from tl_cli.backbones.describe import check_input_side, layer_count
    from tl_cli.backbones.layers import check_freeze

    check_freeze(cfg.freeze, layer_count(cfg.backbone))
    if cfg.image_size:  # else decided from the images, never above the backbone's own size
        check_input_side(cfg.backbone, cfg.image_size)


def resume(run_dir: str | os.PathLike | None = None, overrides: dict | None = None, data_dir: str | os.PathLike | None = None,
           workspace: WorkspaceLike = None, reporter: Reporter | None = None) -> FinetuneResult:
    """Continue an interrupted run from its last checkpoint (default: the workspace's last one).

    Ends with the weights an uninterrupted run would have (CPU, same settings). `overrides` may
    change only resource settings (batch size, device, workers, time budget).

    Raises:
        RunError: no run to resume, or a damaged checkpoint. UnsafeFile: a checkpoint with code.
        ConfigError: a non-resource setting differs (named), or another dataset was given.
    """
    t0 = time.perf_counter()
    ws = Workspace.open(workspace)
    info = distributed.init((overrides or {}).get("device") or saved_device(ws, run_dir))
    prepared = None
    with contextlib.ExitStack() as held:
        if info.is_main:  # under torchrun rank 0 alone reads the run and sends it (checkpoint included)
            prepared = _prepare_resume(ws, run_dir, overrides, data_dir, held)
        prepared = distributed.broadcast_object(prepared)
        if isinstance(prepared, FinetuneResult):
            distributed.shutdown()
            return prepared
        run_dir, cfg, ds, ckpt = prepared
        with random_state_kept():
            return _train(run_dir, cfg, ds, ws, reporter or Reporter(), ckpt, t0)


def _prepare_resume(ws: Workspace, run_dir, overrides: dict | None, data_dir, held: contextlib.ExitStack):
    """(run_dir, config, dataset, checkpoint) to continue from, or the result of a finished run.
    The run folder's lock is entered into `held` (a second resume of the same run fails at once)."""
    if run_dir is None:
        last = ws.state().get("training_run")
        if not last:
            raise RunError("no fine-tuning run to resume in this workspace", hint="start one with `tl finetune DATA_DIR`")
        run_dir = last
    run_dir = Path(run_dir)
    if (run_dir / CONFIG_FILE).is_file():  # else FinetuneConfig.load says what this folder is not
        held.enter_context(run_lock(run_dir))
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
    ds = scan_dataset(source["data_dir"], cfg.val_fraction, grouping=make_grouping(cfg.group_pattern, cfg.groups))
    if ds.classes != source["classes"]:
        raise DataError(f"the classes in {ds.root} changed since the run started "
                        f"({', '.join(source['classes'])} -> {', '.join(ds.classes)})", hint="start a new run")
    digest = ds.split_digest()
    if source.get("split_digest", digest) != digest:  # runs saved before the digest: not known
        warnings.warn(TLWarning(
            f"the images in {ds.root} changed since the run started ({source.get('n_train')} train / "
            f"{source.get('n_val')} val then, {len(ds.split('train'))} / {len(ds.split('val'))} now): the resumed "
            "run goes on with them, and is not what an uninterrupted run would have made"), stacklevel=2)
    cfg.save(run_dir)
    ws.remember(training_run=run_dir)
    return run_dir, cfg, ds, ckpt


def _finished_result(run_dir: Path, cfg: FinetuneConfig, ckpt: dict) -> FinetuneResult:
    return FinetuneResult(run_dir, cfg, list(ckpt["history"]), ckpt["best"].get("epoch"), best_numbers(ckpt["best"]),
                          ckpt.get("stop_reason", "epochs"), resumed_from=int(ckpt["epoch"]), already_finished=True)


def _train(run_dir: Path, cfg: FinetuneConfig, ds: Dataset, ws: Workspace, reporter: Reporter,
           ckpt: dict | None, t0: float) -> FinetuneResult:
    tr = _setup(run_dir, cfg, ds, reporter)
    state = _restore(tr, ckpt)
    if ckpt is None and cfg.head_init == "probe":
        _start_from_probe(tr, ws, state)
    # From the starting weights (the probe's), or the checkpoint's average when it holds one.
    tr.ema = weight_average(tr.model.net, cfg.ema, len(tr.loaders.train), ckpt and ckpt.get("ema"))
    tr.net = ddp.wrap(tr.model, tr.device)  # after loading: DDP starts every rank from rank 0's weights
    resumed_from = state.epoch
    trainable, frozen = tr.model.count_parameters()
    tr.reporter.log(f"{cfg.route}: {cfg.backbone}, {len(tr.model.layers)} layers, {cfg.freeze} frozen; "
                    f"{trainable:,} trainable / {frozen:,} frozen parameters; {tr.loaders.n_train} train / "
                    f"{tr.loaders.n_val} val images at {tr.spec.preprocess.input_size} px; {tr.device.type}"
                    + (f" x {tr.info.world_size} processes" if tr.info.enabled else "")
                    + (f"; resuming after epoch {resumed_from}" if ckpt else ""))
    _epochs(tr, state, t0 + cfg.time_budget if cfg.time_budget else None)
    if not state.best:
        raise RunError(f"the time budget ({cfg.time_budget:g} s) ended before the first epoch did",
                       hint="start again with a larger --time-budget (no epoch was finished, so there is nothing to keep)")
    skipped = set().union(*distributed.all_gather_object(sorted(tr.skipped)))
    if tr.info.is_main:
        _save_final(tr, state)
        ws.remember(latest_run=run_dir)
    distributed.shutdown()
    return FinetuneResult(run_dir, tr.cfg, state.history, state.best["epoch"], best_numbers(state.best), state.stop_reason,
                          classes=ds.classes, resumed_from=resumed_from, trainable_params=trainable,
                          frozen_params=frozen, n_layers=len(tr.model.layers), n_train=tr.loaders.n_train,
                          n_val=tr.loaders.n_val, seconds=time.perf_counter() - t0, skipped=sorted(skipped))


def _setup(run_dir: Path, cfg: FinetuneConfig, ds: Dataset, reporter: Reporter) -> Training:
    """The model (seeded), optimizer, loaders and step machinery of this process."""
    from tl_cli.finetune.data import default_workers

    info = distributed.env_info()
    device = distributed.rank_device(cfg.device)  # cuda:LOCAL_RANK under torchrun
    ddp.check_sync_bn(cfg.sync_bn, device)
    if device.type == "cpu":
        keep_freed_memory()  # page faults were a fifth of the CPU time (runtime/memory.py)
    if not info.is_main:
        reporter = Reporter()  # one progress bar and one log: rank 0's
    spec = get_spec(cfg.backbone)
    spec = replace(spec, preprocess=at_side(spec.preprocess, cfg.image_size or spec.preprocess.input_size))
    seed_everything(cfg.seed)
    backbone, choice = create_backbone(cfg.backbone, cfg.weights, cfg.pretrained)
    model = FinetuneModel(backbone, len(ds.classes), cfg.freeze, spec.preprocess.input_size, cfg.dropout, cfg.bn)
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
    # Not under torchrun: a rank retrying a step alone would leave the others waiting in the
    # gradient all-reduce of the step it abandoned; there an OOM stops the run (lower --batch-size).
    halving = None if info.enabled else HalvingStep(lambda m: reporter.log(
        f"out of memory: training goes on in micro-batches of {m}, gradients accumulated over {cfg.batch_size}"))
    return Training(run_dir, cfg, ds, spec, choice, info, device, model, opt, loaders, amp, workers, reporter,
                    nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), halving=halving,
                    skipped={f"{rel}: {why}" for rel, why in ds.skipped})  # found by the scan: named, not silent


def _restore(tr: Training, ckpt: dict | None) -> TrainState:
    """Weights, optimizer, progress and random streams from the checkpoint; a fresh state without one."""
    if ckpt is None:
        if tr.info.enabled:
            seed_everything(tr.cfg.seed + 7919 * tr.info.rank)  # same initial weights, different dropout per rank
        return TrainState()
    try:
        tr.model.net.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # config.json edited to another network than the checkpoint's
        raise RunError(f"damaged run config {tr.run_dir / CONFIG_FILE}: the checkpoint's weights do not fit "
                       f"its network ({describe_mismatch(exc)})", hint="the file was edited; start a new run") from exc
    tr.opt.load_state_dict(ckpt["optimizer"])
    per_rank = ckpt.get("rng_ranks")  # under torchrun: every rank's streams, restored rank by rank
    mine = per_rank[tr.info.rank] if per_rank and len(per_rank) == tr.info.world_size else ckpt["rng"]
    set_rng_state(mine, tr.loaders.generator)
    tr.amp.load_state_dict(ckpt.get("amp"))
    return TrainState.from_checkpoint(ckpt)


def _epochs(tr: Training, state: TrainState, deadline: float | None) -> None:
    """Train epoch after epoch until the run is finished or the next epoch would pass `deadline`."""
    longest = 0.0  # wall time of the slowest epoch so far, checkpoint and plot included
    planned = False  # this invocation planned the epochs (a resumed run keeps its plan as saved)
    while not state.finished and state.epoch < tr.cfg.epochs:
        if deadline and ddp.any_rank(time.perf_counter() + longest > deadline):
            state.stop_reason = "time_budget"  # the next epoch would not fit: stop with the best so far
            return
        t_epoch = time.perf_counter()
        row = run_epoch(tr, state.epoch, deadline)
        if row is None:
            state.stop_reason = "time_budget"  # ran out mid-epoch: that partial epoch is discarded
            return
        improved = _end_epoch(tr, state, row)
        first = longest == 0.0
        longest = max(longest, time.perf_counter() - t_epoch)
        tr.reporter.log(format_row(row, improved=improved))
        if not deadline or state.finished:
            continue
        if tr.cfg.plan_epochs:
            tr.cfg, planned = budget.plan(tr, state, longest, deadline), True
        elif planned and state.epoch < tr.cfg.epochs:
            tr.cfg = budget.replan(tr, state, longest, deadline)
        elif first:
            budget.warn_if_short(tr.reporter, tr.cfg, state.epoch, longest, deadline)


def _end_epoch(tr: Training, state: TrainState, row: dict) -> bool:
    """Record the epoch (on every rank); rank 0 writes the best weights, checkpoint and history. True: a new best."""
    improved = state.record(row, tr.cfg, tr.loaders.n_val if tr.loaders.val is not None else 0)
    main = distributed.is_main()
    if improved and main:
        # Best weights first, then the checkpoint that names them: a kill in between replays
        # this (deterministic) epoch on resume and writes the same file again.
        with kept_weights(tr):  # the weights that were validated: the average, when on
            save_tensors(tr.run_dir / BEST, tr.model.net.state_dict())
    rngs = distributed.all_gather_object(rng_state(tr.loaders.generator))  # each rank draws its own dropout, workers
    if main:
        save_checkpoint(tr.run_dir, {
            "model": tr.model.net.state_dict(),
            "optimizer": tr.opt.state_dict(),
            **({"ema": tr.ema.state_dict()} if tr.ema is not None else {}),
            "scheduler": {"kind": "warmup_cosine", "progress_epochs": float(state.epoch)},
            "rng": rngs[0],
            **({"amp": tr.amp.state_dict()} if tr.amp.scaler is not None else {}),
            **({"rng_ranks": rngs} if len(rngs) > 1 else {}),
            **state.to_dict(),
        })
        write_history(tr.run_dir, state.history)
    return improved


def _start_from_probe(tr: Training, ws: Workspace, state: TrainState) -> None:
    """LP-FT (probe.py): fit the head on the frozen features, score that model as epoch 0 and checkpoint it.

    Epoch 0 competes for the best epoch like any other, so the kept model is never worse on
    validation than the probe. Under torchrun every rank computes its share of the features (whole
    batches of the global size dealt round-robin, as extraction does, with its out-of-memory
    fallback); rank 0 fits the probe and sends it to the others.
    """
    from tl_cli.finetune.probe import fit_probe, load_into

    t = time.perf_counter()
    cfg, reporter = tr.cfg, tr.reporter
    reporter.log("fitting the head on the frozen features first (linear probe; --head-init random skips it)")
    probe = fit_probe(tr.model.net, tr.ds, tr.spec, tr.choice.identity, ws, cfg.batch_size, tr.workers, tr.device, use_cache=True,
                      on_halve=lambda b: reporter.log(f"out of memory: the probe goes on in batches of {b}"))
    load_into(tr.model.net, probe)
    val = validate_run(tr)
    if cfg.waits_for_probe:  # --optimizer auto decides here
        settle_optimizer(tr, val.accuracy)
    row = {"epoch": 0, "train_loss": probe.train_loss, "train_accuracy": probe.train_accuracy, "val_loss": val.loss,
           "val_accuracy": val.accuracy, "val_correct": val.correct, "lr": 0.0, "seconds": time.perf_counter() - t,
           "images_per_second": probe.n_train / max(probe.seconds, 1e-9)}
    _end_epoch(tr, state, row)
    reporter.log(f"probe: L2 {probe.l2:g}, features {'from the tl extract cache' if probe.source == 'cache' else 'computed'} "
                 f"for {probe.n_train} training images in {probe.seconds:.1f} s")
    reporter.log(format_row(row, improved=True))


def _save_final(tr: Training, state: TrainState) -> None:
    """model.safetensors (best epoch's full network) + meta.json, the files predict/evaluate read."""
    cfg, ds, spec, choice, loaders, best = tr.cfg, tr.ds, tr.spec, tr.choice, tr.loaders, state.best
    meta = RunMeta(
        route=cfg.route,
        kind="full",
        classes=tuple(ds.classes),
        backbone=cfg.backbone,
        weights=WeightsRef(choice.identity, cfg.weights, cfg.pretrained),
        preprocess=spec.preprocess,
        dataset=DatasetRef(root=str(ds.root), layout=ds.layout, n_train=loaders.n_train, n_val=loaders.n_val,
                           counts=ds.counts(), split_digest=ds.split_digest()),
        val_fraction=cfg.val_fraction,
        config={"finetune": cfg.to_dict()},
        metrics={k: best[k] for k in ("val_accuracy", "val_loss", "train_accuracy", "train_loss")},
        freeze=cfg.freeze,
        layers=len(tr.model.layers),
        epochs=state.epoch,
        best_epoch=best["epoch"],
        stop_reason=state.stop_reason,
        finished=state.finished,
        # val_* were measured in float32, as predict/evaluate run; only training steps used `train`.
        precision={"train": tr.amp.dtype, "validation": "float32"},
    )
    save_run(tr.run_dir, load_tensors(tr.run_dir / BEST), meta)
