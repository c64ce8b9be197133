"""`tl finetune` and `tl retrain`: more data, fewer frozen layers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from tl_cli.cli.app import command, err, out, workspace
from tl_cli.cli.options import (
    AugmentOpt,
    BackboneOpt,
    BatchSizeOpt,
    BnOpt,
    DataDirArg,
    DeviceOpt,
    DropoutOpt,
    EmaOpt,
    EpochsOpt,
    FreezeOpt,
    GroupPatternOpt,
    GroupsOpt,
    HeadInitOpt,
    HeadLrOpt,
    ImageSizeOpt,
    LrOpt,
    MixOpt,
    MomentumOpt,
    OptimizerOpt,
    PatienceOpt,
    PretrainedOpt,
    ResumeOpt,
    RunDirOpt,
    SeedOpt,
    SmoothingOpt,
    SyncBnOpt,
    TimeBudgetOpt,
    ValFractionOpt,
    WarmupOpt,
    WeightDecayOpt,
    WeightsOpt,
    WorkersOpt,
    WorkspaceOpt,
)

FINETUNE_EXAMPLES = """Examples:

  tl layers --freeze 36                          (which layers --freeze 36 keeps fixed)

  tl finetune ./photos --freeze 36

  tl finetune ./photos --freeze 36 --time-budget 900 --epochs 10

  tl finetune --resume                           (after Ctrl-C or a crash)

  torchrun --nproc-per-node 4 -m tl_cli finetune ./photos --freeze 36 --batch-size 128   (4 GPUs, 32 each)

  tl predict new.jpg"""

RETRAIN_EXAMPLES = """Examples:

  tl retrain ./photos

  tl retrain ./photos --backbone resnet50 --lr 1e-4 --head-lr 1e-3 --epochs 20

  tl retrain --resume --batch-size 16"""


# Both commands take every option as None = "not given" (see cli/options.py) and hand the given ones
# to `_train` through ctx.params, the values Click parsed, keyed by parameter name.
@command("finetune", epilog=FINETUNE_EXAMPLES)
def finetune_cmd(
    ctx: typer.Context, data_dir: DataDirArg = None, freeze: FreezeOpt = None,
    backbone: BackboneOpt = None, weights: WeightsOpt = None, pretrained: PretrainedOpt = None, epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None, lr: LrOpt = None, head_lr: HeadLrOpt = None, optimizer: OptimizerOpt = None,
    momentum: MomentumOpt = None, weight_decay: WeightDecayOpt = None, warmup_epochs: WarmupOpt = None,
    label_smoothing: SmoothingOpt = None, dropout: DropoutOpt = None, ema: EmaOpt = None, patience: PatienceOpt = None,
    augment: AugmentOpt = None, image_size: ImageSizeOpt = None, mix: MixOpt = None,
    seed: SeedOpt = None, device: DeviceOpt = None, workers: WorkersOpt = None, time_budget: TimeBudgetOpt = None,
    val_fraction: ValFractionOpt = None, sync_bn: SyncBnOpt = None, head_init: HeadInitOpt = None, bn: BnOpt = None,
    group_pattern: GroupPatternOpt = None, groups: GroupsOpt = None, resume: ResumeOpt = False,
    run: RunDirOpt = None, ws_path: WorkspaceOpt = None,
) -> None:
    """More data: layers 1..N keep their pretrained weights; the later layers and a new head are trained.

    Each epoch is checkpointed; the best validation epoch is the model kept. The run folder gets
    history.csv, curves.png and the files `tl predict` and `tl evaluate` use.
    """
    _train("finetune", ctx.params)


@command("retrain", epilog=RETRAIN_EXAMPLES)
def retrain_cmd(
    ctx: typer.Context, data_dir: DataDirArg = None,
    backbone: BackboneOpt = None, weights: WeightsOpt = None, pretrained: PretrainedOpt = None, epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None, lr: LrOpt = None, head_lr: HeadLrOpt = None, optimizer: OptimizerOpt = None,
    momentum: MomentumOpt = None, weight_decay: WeightDecayOpt = None, warmup_epochs: WarmupOpt = None,
    label_smoothing: SmoothingOpt = None, dropout: DropoutOpt = None, ema: EmaOpt = None, patience: PatienceOpt = None,
    augment: AugmentOpt = None, image_size: ImageSizeOpt = None, mix: MixOpt = None,
    seed: SeedOpt = None, device: DeviceOpt = None, workers: WorkersOpt = None, time_budget: TimeBudgetOpt = None,
    val_fraction: ValFractionOpt = None, sync_bn: SyncBnOpt = None, head_init: HeadInitOpt = None, bn: BnOpt = None,
    group_pattern: GroupPatternOpt = None, groups: GroupsOpt = None, resume: ResumeOpt = False,
    run: RunDirOpt = None, ws_path: WorkspaceOpt = None,
) -> None:
    """A lot of data: train the whole network from its pretrained weights (backbone at a lower learning rate than the head)."""
    _train("retrain", ctx.params)


def _train(route: str, params: dict) -> None:
    """Start or resume a run with the options given on the command line (None = not given)."""
    from tl_cli.errors import ConfigError, InterruptedBeforeCheckpoint
    from tl_cli.finetune import trainer as ft
    from tl_cli.finetune.config import FinetuneConfig
    from tl_cli.runtime.distributed import is_main
    from tl_cli.runtime.progress import RichReporter

    params = dict(params)
    data_dir, resume, run, ws = params.pop("data_dir"), params.pop("resume"), params.pop("run"), workspace(params.pop("ws_path"))
    given = {k: (str(v.expanduser().absolute()) if k == "groups" else str(v) if isinstance(v, Path) else v)
             for k, v in params.items() if v is not None}
    reporter = RichReporter(err)
    try:
        if resume:
            res = ft.resume(run, given, data_dir, ws, reporter)
        else:
            if run is not None:
                raise ConfigError("--run only goes with --resume")
            if route == "finetune" and "freeze" not in given:
                raise ConfigError("tl finetune needs --freeze N", hint="`tl layers` shows the layers; `tl suggest` recommends N")
            cfg = FinetuneConfig.for_route(route, **given)
            res = ft.start(data_dir if data_dir is not None else ws.last_dataset(), cfg, ws, reporter)
    except KeyboardInterrupt as exc:
        reporter.stop()
        if isinstance(exc, InterruptedBeforeCheckpoint):  # its run folder is gone: --resume would find nothing
            err.print("[yellow]interrupted[/] before the first epoch finished; nothing to resume "
                      f"(start the run again with `tl {route} ...`)")
        else:
            err.print(f"[yellow]interrupted[/]: every finished epoch is checkpointed; `tl {route} --resume` continues")
        raise typer.Exit(130) from None
    if is_main():  # under torchrun every rank has the result; one prints it
        render(res)
        if not res.already_finished:
            from tl_cli.check.quick import run_leak_note

            note = run_leak_note(ws, res.run_dir)
            if note:
                err.print(f"check: {note}", markup=False, style="yellow")


def render(res) -> None:
    from rich.table import Table

    if res.already_finished:
        b = res.best
        err.print(f"[green]{escape(res.run_dir.name)} already finished[/] ({len(res.history)} epochs, stopped by "
                  f"{res.stop_reason.replace('_', ' ')}; best epoch {res.best_epoch}, val accuracy "
                  f"{_fmt(b.get('val_accuracy'))}): nothing to resume")
        out.print(str(res.run_dir), markup=False)
        return
    cfg = res.config
    t = Table(title=f"tl {cfg.route}: {cfg.backbone}, --freeze {cfg.freeze} of {res.n_layers} layers",
              title_justify="left")
    for col in ("epoch", "train loss", "train acc", "val loss", "val acc", "lr", "img/s", "s"):
        t.add_column(col, justify="right")
    for h in res.history:
        best = h["epoch"] == res.best_epoch
        t.add_row(f"{h['epoch']}{' *' if best else ''}", f"{h['train_loss']:.4f}", f"{h['train_accuracy']:.4f}",
                  _fmt(h["val_loss"]), _fmt(h["val_accuracy"]), f"{h['lr']:.2e}", f"{h['images_per_second']:.1f}",
                  f"{h['seconds']:.1f}", style="bold" if best else None)
    out.print(t)
    reasons = {"epochs": "all epochs done", "early_stopping": "early stopping (--patience)",
               "time_budget": "time budget reached (tl finetune --resume --time-budget S continues)",
               "diverged": "training diverged (the loss became NaN or infinite); the best epoch before it is "
                           "kept: try a lower --lr and --head-lr, or a larger --batch-size"}
    s = Table(show_header=False, title_justify="left")
    s.add_column(style="bold")
    s.add_column()
    s.add_row("best epoch", f"{res.best_epoch}: val accuracy {_fmt(res.best.get('val_accuracy'))}, "
                            f"val loss {_fmt(res.best.get('val_loss'))}")
    s.add_row("stopped", reasons.get(res.stop_reason, res.stop_reason))
    s.add_row("parameters", f"{res.trainable_params:,} trained, {res.frozen_params:,} frozen")
    s.add_row("images", f"{res.n_train} train / {res.n_val} val")
    s.add_row("run", escape(str(res.run_dir)))
    s.add_row("time", f"{res.seconds:.1f} s")
    out.print(s)
    for line in res.skipped[:20]:
        err.print(f"[yellow]skipped[/] {escape(line)}")  # file names may contain [brackets]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
