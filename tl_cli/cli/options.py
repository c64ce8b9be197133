"""Typed option aliases, defined once and shared by every command.

One option name has one meaning and one help text in every command that takes it (a test checks
this over the whole app). Defaults that are the same everywhere are written in the help text;
the training options default to None, "not given", so that a new run takes its route's default
(`FinetuneConfig.for_route`) and `--resume` keeps the saved value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

_Int = Optional[int]
_Float = Optional[float]


def _opt(*names: str, help: str, **kw) -> typer.models.OptionInfo:  # noqa: A002 - typer's own keyword
    """A typer.Option whose help text carries its default (so no "[default: ...]" is added)."""
    return typer.Option(*names, help=help, show_default=False, **kw)


# ----------------------------------------------------------------------------- where things are
WorkspaceOpt = Annotated[Optional[Path], _opt("--workspace", "-w", envvar="TL_WORKSPACE",
                                              help="Where caches and runs live (default: ./.tl).")]
ModelOpt = Annotated[Optional[Path], _opt("--model", "-m", help=(
    "Run folder (default: the latest run); `tl predict` and `tl evaluate` also take an .onnx file from `tl export`."))]
OutputOpt = Annotated[Optional[Path], _opt("--output", "-o", help=(
    "Where to write: predict, a results file (table -> csv); evaluate, a folder (default: "
    "<run>/evaluations/<date>-<data>-<split>); export, the model file (default: <run>/model.onnx or model.pt); "
    "check, a folder (default: <workspace>/checks/<date>-<data>)."))]
FormatOpt = Annotated[str, _opt("--format", "-f", help=(
    "Output format: table (default), json, or csv (predict, evaluate); `tl export`: onnx (default) or torchscript."))]

# ----------------------------------------------------------------------------- the network
BackboneOpt = Annotated[Optional[str], _opt("--backbone", "-b",
                                            help="Backbone name, see `tl backbones` (default: efficientnet_lite0).")]
WeightsOpt = Annotated[Optional[Path], _opt("--weights", help=(
    "State-dict file (.pth/.safetensors) to use instead of the backbone's pretrained weights."))]
PretrainedOpt = Annotated[Optional[bool], _opt("--pretrained/--no-pretrained", help=(
    "--no-pretrained starts from random weights, explicitly (default: pretrained)."))]
FreezeOpt = Annotated[_Int, _opt("--freeze", min=0, help=(
    "Layers 1..N keep their pretrained weights (numbered as in `tl layers`)."))]

# ----------------------------------------------------------------------------- data and resources
ValFractionOpt = Annotated[_Float, _opt("--val-fraction", min=0.0, max=0.95, help=(
    "Validation share when the folder has no val/ sub-folder (default: 0.2; the same split in every command)."))]
GroupPatternOpt = Annotated[Optional[str], _opt("--group-pattern", help=(
    "Keep images whose names differ only by this regex's first match on one side of the split "
    "(e.g. '_aug\\d+' splits rose_aug3.jpg with rose.jpg; retrain.py's convention: '_nohash_.*$')."))]
GroupsOpt = Annotated[Optional[Path], _opt("--groups", help=(
    "A groups file (`tl check` writes groups.json): each group of copies stays on one side of the split."))]
StrictOpt = Annotated[bool, _opt("--strict", help="Stop at the first unreadable image instead of skipping it.")]
BatchSizeOpt = Annotated[_Int, _opt("--batch-size", min=1, help=(
    "Images per batch (default: 32): per forward pass in extract, predict and evaluate; per optimisation step, "
    "over all torchrun processes together, in finetune and retrain."))]
WorkersOpt = Annotated[_Int, _opt("--workers", min=0, help=(
    "Images decoded in parallel (default: automatic, from the CPU cores this process may use; 0: in the main "
    "process). Threads in extract, predict and evaluate; DataLoader worker processes in finetune and retrain."))]
DeviceOpt = Annotated[Optional[str], _opt("--device", help="auto (default: CUDA if present), cpu, cuda, cuda:N.")]
EngineOpt = Annotated[str, _opt("--engine", help=(
    "Backbone runtime: auto (default: onnxruntime on CPU, torch on CUDA), torch or onnx."))]
SeedOpt = Annotated[_Int, _opt("--seed", help="Random seed; CPU runs with the same seed are bit-identical (default: 0).")]

# ----------------------------------------------------------------------------- fine-tuning (finetune, retrain)
DataDirArg = Annotated[Optional[Path], typer.Argument(help="Folder of class sub-folders (default: the workspace's last dataset).",
                                                      show_default=False)]
EpochsOpt = Annotated[_Int, _opt("--epochs", "--max-epochs", min=1, help="Most epochs (default: 10 finetune, 15 retrain).")]
LrOpt = Annotated[_Float, _opt("--lr", help=(
    "Learning rate of the trained backbone layers (default: AdamW 3e-4, SGD 1e-3; retrain AdamW 1e-4, SGD 3e-4)."))]
HeadLrOpt = Annotated[_Float, _opt("--head-lr", help=(
    "Learning rate of the new head (default: 10x --lr's default: AdamW 3e-3, SGD 1e-2; retrain 1e-3, 3e-3)."))]
OptimizerOpt = Annotated[Optional[str], _opt("--optimizer", help=(
    "auto (default: SGD when the probe start already scores 0.97 on validation, where AdamW's steps would move "
    "features that fit; AdamW otherwise), adamw, or sgd (momentum, Nesterov)."))]
MomentumOpt = Annotated[_Float, _opt("--momentum", help="SGD momentum (default: 0.9).")]
WeightDecayOpt = Annotated[_Float, _opt("--weight-decay", help="Weight decay (default: 0.01); not on biases and norms.")]
WarmupOpt = Annotated[_Float, _opt("--warmup-epochs", help=(
    "Linear warm-up, then cosine decay to 0 after the last step (default: 1, or epochs/5 if shorter)."))]
SmoothingOpt = Annotated[_Float, _opt("--label-smoothing", help=(
    "Label smoothing (default: 0: the probe start is fitted without it, and smoothing would pull it away)."))]
DropoutOpt = Annotated[_Float, _opt("--dropout", help="Dropout before the new head (default: 0.2).")]
MixOpt = Annotated[_Float, _opt("--mix", min=0.0, max=1.0, help=(
    "Share of training batches blended by mixup or CutMix, half each, labels blended alike (default: auto: "
    "every batch when the probe scores below 0.97 and the run has 20 epochs or more, else 0 = off)."))]
EmaOpt = Annotated[_Float, _opt("--ema", help=(
    "Half-life in epochs of the moving average of the weights that is validated and kept "
    "(default: 2; 0 = off, the last step's weights)."))]
PatienceOpt = Annotated[_Int, _opt("--patience", min=0, help=(
    "Stop after this many epochs in a row that improve neither validation accuracy nor loss on the earlier "
    "fine-tuning epochs (the probe, epoch 0, does not count); 0 = never (default: 4 finetune, 5 retrain)."))]
AugmentOpt = Annotated[Optional[bool], _opt("--augment/--no-augment", help=(
    "Random resized crop + flip on training images (default: on)."))]
TimeBudgetOpt = Annotated[_Float, _opt("--time-budget", help=(
    "Seconds: stop before an epoch that would not fit, keep the best so far. Without --epochs the epochs are "
    "planned to fit it after the first one (at most 30, 60 when batches are mixed), and shortened if later "
    "epochs run slower."))]
ImageSizeOpt = Annotated[_Int, _opt("--image-size", min=32, help=(
    "Side in pixels of the crops trained on, and predicted on afterwards (default: the backbone's input size, or "
    "the images' own shorter side when smaller, not below 128: upsampling small photos adds compute, not detail)."))]
SyncBnOpt = Annotated[Optional[bool], _opt("--sync-bn/--no-sync-bn", help=(
    "Under torchrun on GPUs: batch norms use the whole global batch's statistics (SyncBatchNorm, CUDA only)."))]
HeadInitOpt = Annotated[Optional[str], _opt("--head-init", help=(
    "probe (default): start from the head `tl extract` would fit on the frozen features, scored as epoch 0 "
    "(LP-FT); random: a random head."))]
BnOpt = Annotated[Optional[str], _opt("--bn", help=(
    "Batch norms of the trained layers: frozen (default: pretrained running statistics, scale and shift trained) "
    "or train (batch statistics)."))]
ResumeOpt = Annotated[bool, _opt("--resume", help=(
    "Continue the last interrupted run (or --run RUN_DIR) from its last checkpoint, with its saved settings; "
    "only --batch-size, --device, --workers and --time-budget may change."))]
RunDirOpt = Annotated[Optional[Path], _opt("--run", help="With --resume: the run folder to continue.")]


def check_format(fmt: str, allowed: tuple[str, ...] = ("table", "json")) -> None:
    """Reject a --format value the command does not produce (one line, exit 2)."""
    from tl_cli.errors import ConfigError

    if fmt not in allowed:
        raise ConfigError(f"unknown --format {fmt!r}", hint=f"use {' or '.join(allowed)}")
