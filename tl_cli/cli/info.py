"""`tl info` and `tl runs`."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.markup import escape

from tl_cli.cli.app import command, out, workspace
from tl_cli.cli.options import FormatOpt, WorkspaceOpt, check_format

DASH = "-"


def _v(x, fmt: str = "{}") -> str:
    return DASH if x is None else fmt.format(x)


@command("info", epilog="Examples:  tl info   tl info 20260101-120000-extract-photos   tl info .tl/runs/X --format json")
def info_cmd(
    run: Annotated[Optional[str], typer.Argument(
        help="Run folder, or a run name (or unique prefix) from `tl runs`; default the latest.")] = None,
    fmt: FormatOpt = "table",
    no_layers: Annotated[bool, typer.Option("--no-layers", help="Skip the layer table.")] = False,
    ws_path: WorkspaceOpt = None,
) -> None:
    """A run's backbone, classes, training (route, freeze, epochs), metrics, layers and files."""
    from tl_cli.runs.info import run_info
    from tl_cli.runs.store import finite_json  # runs written before NaN became null may hold NaN

    check_format(fmt)
    info = run_info(run, workspace(ws_path), layers=not no_layers)
    if fmt == "json":
        out.print(json.dumps(finite_json(info.to_dict()), indent=2, allow_nan=False), markup=False)
        return
    render_info(info)


def render_info(info) -> None:
    from rich.table import Table

    s = info.summary
    t = Table(title=f"run {escape(s.name)}" + ("  [green](latest)[/]" if s.latest else ""), show_header=False,
              title_justify="left")
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    t.add_row("backbone", _v(s.backbone))
    t.add_row("classes", f"{len(s.classes)}: " + escape(", ".join(s.classes)) if s.classes else DASH)
    t.add_row("route", _v(s.route))
    freeze = info.freeze if info.freeze is not None else info.frozen_layers
    freeze_s = _v(freeze)
    if s.route == "extract" and freeze is not None:
        freeze_s += " (the whole backbone; only the head was trained)"
    t.add_row("freeze", freeze_s)
    t.add_row("epochs", _v(info.epochs) + (f" (stopped: {escape(info.stop_reason)})" if info.stop_reason else ""))
    t.add_row("best epoch", _v(info.best_epoch))
    t.add_row("data", f"{escape(_v(s.dataset))}  ({_v(info.n_train)} train / {_v(info.n_val)} val)")
    for k, v in info.metrics.items():
        t.add_row(k.replace("_", " "), f"{v:.4f}" if isinstance(v, float) else escape(_v(v)))
    t.add_row("created", s.created)
    t.add_row("folder", escape(s.dir))
    t.add_row("files", escape(", ".join(f"{p} ({_size(n)})" for p, n in info.files)))
    out.print(t)
    if info.layers:
        render_layers(info)
    if info.layers_note:
        out.print(f"[dim]{escape(info.layers_note)}[/]")


def render_layers(info) -> None:
    from rich.table import Table

    rows = info.layers
    t = Table(title=f"{len(rows)} layers", title_justify="left")
    for col in ("#", "name", "type", "params", "trainable", "frozen"):
        t.add_column(col, justify="right" if col in ("#", "params", "trainable", "frozen") else "left")
    for r in rows:
        name = r.name + (" (new head)" if r.index == len(rows) else "")
        t.add_row(str(r.index), name, r.kind, f"{r.params:,}", _v(r.trainable, "{:,}"), _v(r.frozen, "{:,}"))
    known = all(r.trainable is not None for r in rows)
    total = sum(r.params for r in rows)
    t.add_row("", "[bold]total[/]", "", f"{total:,}",
              f"{sum(r.trainable for r in rows):,}" if known else DASH,
              f"{sum(r.frozen for r in rows):,}" if known else DASH)
    out.print(t)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@command("runs", epilog="Example:  tl runs   tl runs --format json")
def runs_cmd(fmt: FormatOpt = "table", ws_path: WorkspaceOpt = None) -> None:
    """The workspace's runs, newest first, with route, backbone, classes and validation accuracy."""
    from rich.table import Table

    from tl_cli.runs.info import workspace_runs
    from tl_cli.runs.store import finite_json

    check_format(fmt)
    ws = workspace(ws_path)
    rows = workspace_runs(ws)
    if fmt == "json":
        out.print(json.dumps(finite_json([r.to_dict() for r in rows]), indent=2, allow_nan=False), markup=False)
        return
    if not rows:
        out.print(f"no runs in {escape(str(ws.runs))}: train one with `tl extract DATA_DIR`")
        return
    t = Table(title=f"runs in {escape(str(ws.runs))}", title_justify="left")
    t.add_column("")
    t.add_column("run", overflow="fold", min_width=20)
    for col in ("route", "backbone"):
        t.add_column(col)
    t.add_column("classes", max_width=28)
    t.add_column("val acc", justify="right")
    t.add_column("created", no_wrap=True)
    for r in rows:
        if r.damaged:
            t.add_row("[green]*[/]" if r.latest else "", escape(r.name), "[red]damaged[/]", DASH, DASH, DASH,
                      r.created.replace("T", " ")[:16])
            continue
        classes = ", ".join(r.classes)
        classes = f"{len(r.classes)}: " + (classes if len(classes) <= 40 else classes[:37] + "...")
        t.add_row("[green]*[/]" if r.latest else "", escape(r.name), _v(r.route), _v(r.backbone), escape(classes),
                  _v(r.val_accuracy, "{:.4f}"), r.created.replace("T", " ")[:16])
    out.print(t)
    if any(r.latest for r in rows):
        out.print("[dim]* latest: the run `tl predict` and `tl evaluate` use by default[/]")
    for r in rows:
        if r.damaged:
            out.print(f"[red]damaged[/] {escape(r.name)}: {escape(r.damaged)}")
