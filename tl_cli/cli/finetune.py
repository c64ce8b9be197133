"""`tl finetune` and `tl retrain`: more data, fewer frozen layers."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from tl_cli.cli.app import command, err, out, workspace
from tl_cli.cli.options import GroupPatternOpt, GroupsOpt, WorkspaceOpt

# Every training option defaults to None = "not given": a new run takes the route's default
# (FinetuneConfig.for_route), a resumed run keeps its saved value, and a given value that
# differs from the saved one is an error unless it is a resource setting.
_Int = Optional[int]
_Float = Optional[float]
DataArg = Annotated[Optional[Path], typer.Argument(help="Folder of class sub-folders (default: the workspace's last dataset).",
                                                   show_default=False)]
Backbone = Annotated[Optional[str], typer.Option("--backbone", "-b", help="Backbone name (see `tl backbones`) (default: efficientnet_lite0).", show_default=False)]
Weights = Annotated[Optional[Path], typer.Option("--weights", help="State-dict file (.pth/.safetensors) to start from.", show_default=False)]
Pretrained = Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="--no-pretrained starts from random weights, explicitly.", show_default=False)]
Epochs = Annotated[_Int, typer.Option("--epochs", "--max-epochs", min=1, help="Most epochs (default: 10 finetune, 15 retrain).", show_default=False)]
BatchSize = Annotated[_Int, typer.Option("--batch-size", min=1, help="Images per step over all processes (default: 32; under torchrun each of N takes 1/N); may change on --resume.", show_default=False)]
Lr = Annotated[_Float, typer.Option("--lr", help="Learning rate of the trained backbone layers (default: 3e-4 finetune, 1e-4 retrain).", show_default=False)]
HeadLr = Annotated[_Float, typer.Option("--head-lr", help="Learning rate of the new head (default: 3e-3 finetune, 1e-3 retrain).", show_default=False)]
Optim = Annotated[Optional[str], typer.Option("--optimizer", help="adamw (default) or sgd (momentum, Nesterov).", show_default=False)]
Momentum = Annotated[_Float, typer.Option("--momentum", help="SGD momentum (default: 0.9).", show_default=False)]
WeightDecay = Annotated[_Float, typer.Option("--weight-decay", help="Weight decay (default: 0.01); not on biases and norms.", show_default=False)]
Warmup = Annotated[_Float, typer.Option("--warmup-epochs", help="Linear warm-up, then cosine decay (default: 1, or epochs/5 if shorter).", show_default=False)]
Smoothing = Annotated[_Float, typer.Option("--label-smoothing", help="Label smoothing (default: 0.1).", show_default=False)]
Dropout = Annotated[_Float, typer.Option("--dropout", help="Dropout before the new head (default: 0.2).", show_default=False)]
Patience = Annotated[_Int, typer.Option("--patience", min=0, help="Stop after this many epochs without a better validation result; 0 = never (default: 4 finetune, 5 retrain).", show_default=False)]
Augment = Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Random resized crop + flip on training images (default: on).", show_default=False)]
Seed = Annotated[_Int, typer.Option("--seed", help="Random seed; CPU runs with the same seed are bit-identical (default: 0).", show_default=False)]
Device = Annotated[Optional[str], typer.Option("--device", help="auto (default), cpu, cuda, cuda:N; may change on --resume.", show_default=False)]
Workers = Annotated[_Int, typer.Option("--workers", min=0, help="Image-decoding processes (default: half the cores); may change on --resume.", show_default=False)]
Budget = Annotated[_Float, typer.Option("--time-budget", help="Seconds: stop before an epoch that would not fit, keep the best so far.", show_default=False)]
ValFraction = Annotated[_Float, typer.Option("--val-fraction", min=0.0, max=0.95, help="Validation share without a val/ folder (default: 0.2, as tl extract).", show_default=False)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the last interrupted run (or --run RUN_DIR) from its last checkpoint.")]
SyncBn = Annotated[Optional[bool], typer.Option("--sync-bn/--no-sync-bn", help="Under torchrun on GPUs: batch norms use the whole global batch's statistics (SyncBatchNorm, CUDA only).", show_default=False)]
HeadInit = Annotated[Optional[str], typer.Option("--head-init", help="probe (default): start from the head `tl extract` would fit on the frozen features, scored as epoch 0 (LP-FT); random: a random head.", show_default=False)]
RunDir = Annotated[Optional[Path], typer.Option("--run", help="With --resume: the run folder to continue.", show_default=False)]

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


Freeze = Annotated[_Int, typer.Option("--freeze", min=0, help="Keep layers 1..N fixed (numbered as in `tl layers`).", show_default=False)]


def _options(
    data_dir: DataArg = None, freeze: Freeze = None,
    backbone: Backbone = None, weights: Weights = None, pretrained: Pretrained = None, epochs: Epochs = None,
    batch_size: BatchSize = None, lr: Lr = None, head_lr: HeadLr = None, optimizer: Optim = None, momentum: Momentum = None,
    weight_decay: WeightDecay = None, warmup_epochs: Warmup = None, label_smoothing: Smoothing = None, dropout: Dropout = None,
    patience: Patience = None, augment: Augment = None, seed: Seed = None, device: Device = None, workers: Workers = None,
    time_budget: Budget = None, val_fraction: ValFraction = None, sync_bn: SyncBn = None, head_init: HeadInit = None,
    group_pattern: GroupPatternOpt = None, groups: GroupsOpt = None, resume: Resume = False,
    run: RunDir = None, ws_path: WorkspaceOpt = None,
) -> None:
    """The options of `tl finetune`; `tl retrain` has the same ones less --freeze. Typer reads
    this signature for both commands (see `_register`), so each option is declared once."""


def _register(route: str, doc: str, epilog: str, drop: tuple[str, ...] = ()) -> None:
    sig = inspect.signature(_options, eval_str=True)

    def cmd(**kw) -> None:
        where = ("data_dir", "resume", "run", "ws_path")
        _train(route, kw["data_dir"], kw["resume"], kw["run"], kw["ws_path"], {k: v for k, v in kw.items() if k not in where})

    cmd.__signature__ = sig.replace(parameters=[p for name, p in sig.parameters.items() if name not in drop])
    cmd.__doc__ = doc
    cmd.__name__ = cmd.__qualname__ = f"{route}_cmd"
    command(route, epilog=epilog)(cmd)


_register("finetune", """More data: layers 1..N keep their pretrained weights; the later layers and a new head are trained.

    Each epoch is checkpointed; the best validation epoch is the model kept. The run folder gets
    history.csv, curves.png and the files `tl predict` and `tl evaluate` use.
    """, FINETUNE_EXAMPLES)
_register("retrain", "A lot of data: train the whole network from its pretrained weights (backbone at a lower "
          "learning rate than the head).", RETRAIN_EXAMPLES, drop=("freeze",))


def _train(route: str, data_dir: Path | None, resume: bool, run: Path | None, ws_path, opts: dict) -> None:
    from tl_cli.finetune import trainer as ft
    from tl_cli.errors import ConfigError
    from tl_cli.finetune.config import FinetuneConfig
    from tl_cli.runtime.distributed import is_main
    from tl_cli.runtime.progress import RichReporter

    given = {k: (str(v.expanduser().absolute()) if isinstance(v, Path) and k == "groups" else
                 str(v) if isinstance(v, Path) else v) for k, v in opts.items() if v is not None}
    ws = workspace(ws_path)
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
    except KeyboardInterrupt:
        reporter.stop()
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
        err.print(f"[green]{res.run_dir.name} already finished[/] ({len(res.history)} epochs, stopped by "
                  f"{res.stop_reason.replace('_', ' ')}; best epoch {res.best_epoch}, val accuracy "
                  f"{_fmt(b.get('val_accuracy'))}): nothing to resume")
        out.print(str(res.run_dir))
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
               "time_budget": "time budget reached (tl finetune --resume --time-budget S continues)"}
    s = Table(show_header=False, title_justify="left")
    s.add_column(style="bold")
    s.add_column()
    s.add_row("best epoch", f"{res.best_epoch}: val accuracy {_fmt(res.best.get('val_accuracy'))}, "
                            f"val loss {_fmt(res.best.get('val_loss'))}")
    s.add_row("stopped", reasons.get(res.stop_reason, res.stop_reason))
    s.add_row("parameters", f"{res.trainable_params:,} trained, {res.frozen_params:,} frozen")
    s.add_row("images", f"{res.n_train} train / {res.n_val} val")
    s.add_row("run", str(res.run_dir))
    s.add_row("time", f"{res.seconds:.1f} s")
    out.print(s)
    from rich.markup import escape

    for line in res.skipped[:20]:
        err.print(f"[yellow]skipped[/] {escape(line)}")  # file names may contain [brackets]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
