"""`tl predict` and `tl evaluate`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import command, err, out, workspace
from .options import BatchSizeOpt, DeviceOpt, FormatOpt, ModelOpt, WorkspaceOpt

FORMATS = ("table", "json", "csv")


def _check_format(fmt: str) -> None:
    from ..errors import ConfigError

    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")


@command("predict", epilog="Examples:  tl predict cat.jpg   tl predict photos/ --topk 3 --format csv   ls *.jpg | tl predict -")
def predict_cmd(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders, globs, or - to read paths from stdin.")],
    model: ModelOpt = None,
    topk: Annotated[int, typer.Option("--topk", "-k", min=1, help="How many classes to show per image.")] = 1,
    fmt: FormatOpt = "table",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write results to this file.")] = None,
    batch_size: BatchSizeOpt = 32,
    device: DeviceOpt = "auto",
    ws_path: WorkspaceOpt = None,
) -> None:
    """Classify images with the latest run (or --model RUN_DIR). Exit status 1 if any image failed."""
    from ..atomic import write_text
    from ..predict import Predictor, expand_inputs

    _check_format(fmt)
    files, missing = expand_inputs(paths)
    predictor = Predictor.from_workspace(str(model) if model else None, workspace(ws_path), device=device)
    err.print(f"[dim]model: {predictor.run.dir}[/]")
    preds = missing + (predictor.predict(files, topk=topk, batch_size=batch_size) if files else [])
    text = format_predictions(preds, fmt)
    if output:
        write_text(output, text)
        err.print(f"wrote {len(preds)} predictions to {output}")
    elif fmt == "table":
        _print_table(preds)
    else:
        out.print(text, end="", markup=False)
    failed = [p for p in preds if p.error]
    for p in failed:
        err.print(f"[yellow]could not read[/] {p.path}: {p.error}")
    if failed:
        raise typer.Exit(1)


def format_predictions(preds, fmt: str) -> str:
    if fmt == "json":
        return json.dumps([p.to_dict() for p in preds], indent=2) + "\n"
    buf = io.StringIO()
    k = max((len(p.labels) for p in preds), default=1)
    w = csv.writer(buf)
    w.writerow(["path"] + [f"{c}{i}" for i in range(1, k + 1) for c in ("label", "prob")] + ["error"])
    for p in preds:
        row = [p.path]
        for i in range(k):
            row += [p.labels[i], f"{p.probs[i]:.6f}"] if i < len(p.labels) else ["", ""]
        w.writerow(row + [p.error or ""])
    return buf.getvalue()


def _print_table(preds) -> None:
    from rich.table import Table

    t = Table()
    t.add_column("image", overflow="fold")
    t.add_column("prediction")
    t.add_column("probability", justify="right")
    for p in preds:
        if p.error:
            t.add_row(p.path, "[red]error[/]", "")
            continue
        t.add_row(p.path, "\n".join(p.labels), "\n".join(f"{v:.3f}" for v in p.probs))
    out.print(t)


@command("evaluate", epilog="Example:  tl evaluate ./photos_test --format json")
def evaluate_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Labelled folder of class sub-folders.")],
    model: ModelOpt = None,
    fmt: FormatOpt = "table",
    split: Annotated[str, typer.Option("--split", help="all, val or train images of the folder.")] = "all",
    device: DeviceOpt = "auto",
    ws_path: WorkspaceOpt = None,
) -> None:
    """Accuracy and per-class precision/recall/F1 of a run on a labelled folder."""
    from ..evaluate import evaluate
    from ..predict import Predictor

    _check_format(fmt)
    predictor = Predictor.from_workspace(str(model) if model else None, workspace(ws_path), device=device)
    err.print(f"[dim]model: {predictor.run.dir}[/]")
    ev = evaluate(predictor, data_dir, split=split, val_fraction=predictor.run.val_fraction)
    m = ev.metrics
    if fmt == "json":
        out.print(json.dumps(m, indent=2), markup=False)
        return
    from rich.table import Table

    t = Table(title=f"accuracy {m['accuracy']:.4f} on {m['n']} images", title_justify="left")
    for col in ("class", "precision", "recall", "f1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c, r in m["per_class"].items():
        t.add_row(c, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    out.print(t)
    for rel, why in ev.failed:
        err.print(f"[yellow]skipped[/] {rel}: {why}")
