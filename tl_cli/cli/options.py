"""Typed option aliases, defined once and shared by every command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

WorkspaceOpt = Annotated[
    Optional[Path],
    typer.Option("--workspace", "-w", envvar="TL_WORKSPACE", help="Where caches and runs live (default ./.tl).",
                 show_default=False),
]
BackboneOpt = Annotated[str, typer.Option("--backbone", "-b", help="Backbone name (see `tl backbones`).")]
WeightsOpt = Annotated[
    Optional[Path], typer.Option("--weights", help="State-dict file (.pth/.safetensors) to use instead of the default weights.")
]
PretrainedOpt = Annotated[
    bool, typer.Option("--pretrained/--no-pretrained", help="--no-pretrained starts from random weights, explicitly.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA if present), cpu, cuda, cuda:N.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")]
WorkersOpt = Annotated[
    Optional[int], typer.Option("--workers", min=0, help="Image-decoding threads (default: one per core).")
]
ValFractionOpt = Annotated[
    float, typer.Option("--val-fraction", min=0.0, max=0.95, help="Validation share when there is no val/ folder.")
]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable image instead of skipping it.")]
ModelOpt = Annotated[Optional[Path], typer.Option("--model", "-m", help="Run folder to use (default: the latest run).")]
ModelOrOnnxOpt = Annotated[
    Optional[Path],
    typer.Option("--model", "-m", help="Run folder, or an .onnx file from `tl export` (default: the latest run)."),
]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="Output format: table, json or csv.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (CPU runs are reproducible).")]
EngineOpt = Annotated[
    str, typer.Option("--engine", help="Backbone runtime: auto (onnxruntime on CPU, torch on CUDA), torch or onnx.")
]
GroupPatternOpt = Annotated[
    Optional[str],
    typer.Option("--group-pattern", help="Keep images whose names differ only by this regex's first match on one "
                 "side of the split (e.g. '_aug\\d+' puts rose_aug3.jpg with rose.jpg; retrain.py's '_nohash_.*$').",
                 show_default=False),
]
GroupsOpt = Annotated[
    Optional[Path],
    typer.Option("--groups", help="A groups file (`tl check` writes groups.json): each group stays on one side of the split.",
                 show_default=False),
]
SummaryFormatOpt = Annotated[str, typer.Option("--format", "-f", help="Output format: table or json.")]


def check_format(fmt: str, allowed: tuple[str, ...] = ("table", "json")) -> None:
    """Reject a --format value the command does not produce (one line, exit 2)."""
    from tl_cli.errors import ConfigError

    if fmt not in allowed:
        raise ConfigError(f"unknown --format {fmt!r}", hint=f"use {' or '.join(allowed)}")
