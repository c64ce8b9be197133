"""`tl suggest`: recommend a route for a dataset."""

from __future__ import annotations

import json

from rich.markup import escape

from tl_cli.backbones import DEFAULT_BACKBONE
from tl_cli.cli.app import command, out, workspace
from tl_cli.cli.options import BackboneOpt, DataDirArg, FormatOpt, ValFractionOpt, WorkspaceOpt, check_format


@command("suggest", epilog="Example:  tl suggest ./photos   tl suggest ./photos --backbone resnet50 --format json")
def suggest_cmd(
    data_dir: DataDirArg = None,
    backbone: BackboneOpt = DEFAULT_BACKBONE,
    val_fraction: ValFractionOpt = 0.2,
    fmt: FormatOpt = "table",
    ws_path: WorkspaceOpt = None,
) -> None:
    """Count images per class and recommend extract, finetune --freeze N or retrain, saying why."""
    from tl_cli.suggest import suggest

    check_format(fmt)
    data = data_dir if data_dir is not None else workspace(ws_path).last_dataset()
    s = suggest(data, backbone, val_fraction)
    if fmt == "json":
        out.print(json.dumps(s.to_dict(), indent=2), markup=False)
        return
    render(s)


def render(s) -> None:
    from rich.table import Table

    t = Table(title=f"{len(s.counts)} classes", title_justify="left")
    for col in ("class", "train", "val"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c in s.counts:
        mark = "  [dim](smallest)[/]" if c.train == s.min_train else ""
        t.add_row(escape(c.name) + mark, str(c.train), str(c.val))
    t.add_row("[bold]total[/]", str(sum(c.train for c in s.counts)), str(sum(c.val for c in s.counts)))
    out.print(t)
    freeze = "" if s.freeze is None or s.route != "finetune" else f" --freeze {s.freeze}"
    out.print(f"[bold]route: {s.route}{freeze}[/]  ({s.backbone}, {s.n_layers} layers)")
    for r in s.reasons:
        out.print(f"  - {escape(r)}")
    for w in s.warnings:
        out.print(f"[yellow]warning:[/] {escape(w)}")
    out.print(f"run:  [bold]{escape(s.command)}[/]")
