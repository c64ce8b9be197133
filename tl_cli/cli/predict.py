"""`tl predict` and `tl evaluate`."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tl_cli.cli.app import command, err, out, workspace
from tl_cli.cli.options import BatchSizeOpt, DeviceOpt, FormatOpt, ModelOpt, OutputOpt, WorkersOpt, WorkspaceOpt, check_format

FORMATS = ("table", "json", "csv")
# What `-o` may overwrite, by format: a results file of that kind, never an image or anything else.
OUTPUT_SUFFIXES = {"csv": (".csv", ".txt"), "tsv": (".tsv", ".txt"), "json": (".json", ".jsonl", ".txt"),
                   "jsonl": (".json", ".jsonl", ".txt")}
FORMAT_OF_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl"}
SAME_FORMAT = {"tsv": "csv", "jsonl": "json"}  # variants a --format name allows


def output_format(output: Path, fmt: str) -> str:
    """The format of the `-o` file: --format's, or the name's when --format is the terminal table
    (`-o preds.json` writes JSON). A name that says another format than --format is an error."""
    named = FORMAT_OF_SUFFIX.get(output.suffix.lower())
    if fmt == "table":
        return named or "csv"
    if named is not None and SAME_FORMAT.get(named, named) != fmt:
        from tl_cli.errors import ConfigError

        raise ConfigError(f"--output {output} is named as {named} but --format is {fmt}",
                          hint=f"name it {output.with_suffix('.' + fmt).name}, or leave --format out")
    return named if named in SAME_FORMAT else fmt


@command("predict", epilog="Examples:  tl predict cat.jpg   tl predict photos/ --topk 3 --format csv   "
                           "ls *.jpg | tl predict -   tl predict 'inbox/**/*.png' --model model.onnx")
def predict_cmd(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (recursive), globs, or - to read paths from stdin.")],
    model: ModelOpt = None,
    topk: Annotated[int, typer.Option("--topk", "-k", min=1, help="How many classes to show per image.")] = 1,
    fmt: FormatOpt = "table",
    output: OutputOpt = None,
    batch_size: BatchSizeOpt = 32,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    ws_path: WorkspaceOpt = None,
) -> None:
    """Classify images with the latest run (or --model). Exit status 1 if any image failed."""
    from tl_cli.inference.inputs import expand_inputs
    from tl_cli.inference.predict import load_predictor
    from tl_cli.runtime.atomic import write_text
    from tl_cli.runtime.outputs import check_output_file
    from tl_cli.runtime.progress import RichReporter

    check_format(fmt, FORMATS)
    out_fmt = output_format(output, fmt) if output is not None else fmt
    entries = expand_inputs(paths)
    files = [e for e in entries if isinstance(e, Path)]
    if not entries:
        from tl_cli.errors import DataError

        raise DataError("no images in the given inputs", hint="pass image files, folders of images, or globs")
    ws = workspace(ws_path)
    predictor = load_predictor(model, ws, device=device)
    if output is not None:  # before the work: a bad --output fails at once
        # Never inside a folder being read, nor onto any image found (a glob's, or one in a folder).
        given = [Path(p) for p in paths if p != "-" and Path(p).exists()]
        check_output_file(output, OUTPUT_SUFFIXES[out_fmt], [*given, *files, *_training_data(predictor, ws)])
    err.print(f"[dim]model: {escape(str(predictor.source))}[/]")
    for note in predictor.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    done = iter(predictor.predict(files, topk, batch_size, workers, RichReporter(err)) if files else [])
    preds = [next(done) if isinstance(e, Path) else e for e in entries]  # the inputs' order, misses in place
    if output:
        write_text(output, format_predictions(preds, out_fmt))
        err.print(f"wrote {len(preds)} predictions to {output}", markup=False, highlight=False)
    elif fmt == "table":
        _print_table(preds)
    else:
        out.print(format_predictions(preds, fmt), end="", markup=False)
    failed = [p for p in preds if p.error]
    for p in failed:
        err.print(f"[yellow]could not read[/] {escape(p.path)}: {escape(p.error)}", markup=True, highlight=False)
    if failed:
        err.print(f"[red]{len(failed)} of {len(preds)} input(s) failed[/]")
        raise typer.Exit(1)


def _training_data(predictor, ws) -> list[Path]:
    """The folders tl has trained on here (the model's, the workspace's last): an --output must not
    land in them (a report folder there would become a class of the next training)."""
    trained = predictor.trained.dataset.root
    return [*([Path(trained)] if trained else []), *ws.known_datasets()]


def format_predictions(preds, fmt: str) -> str:
    """json: a list of {path, labels, probs[, error]}; jsonl: one such object a line (JSON Lines);
    csv (tsv): path, label1, prob1, ..., error."""
    if fmt == "json":
        return json.dumps([p.to_dict() for p in preds], indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(p.to_dict()) + "\n" for p in preds)
    buf = io.StringIO()
    k = max((len(p.labels) for p in preds), default=1)
    w = csv.writer(buf, delimiter="\t" if fmt == "tsv" else ",")
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
            t.add_row(escape(p.path), "[red]error[/]", "")
            continue
        # Paths and class names are the user's: "[x]" in a folder name is text, not rich markup.
        t.add_row(escape(p.path), escape("\n".join(p.labels)), "\n".join(f"{v:.3f}" for v in p.probs))
    out.print(t)


@command("evaluate", epilog="Examples:  tl evaluate ./photos_test   tl evaluate ./photos --split val   "
                            "tl evaluate ./photos_test --format json > metrics.json")
def evaluate_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Labelled folder of class sub-folders.")],
    model: ModelOpt = None,
    fmt: FormatOpt = "table",
    split: Annotated[str, typer.Option(
        "--split", help="all images of the folder, or only the val or train split the run used.")] = "all",
    output: OutputOpt = None,
    batch_size: BatchSizeOpt = 32,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    ws_path: WorkspaceOpt = None,
) -> None:
    """Score a run on a labelled folder: accuracy, per-class F1, confusion matrix, mistakes.

    Writes metrics.json, confusion.csv/.png, misclassified.csv and report.html.
    """
    from tl_cli.inference.evaluate import default_output_dir, evaluate
    from tl_cli.inference.predict import load_predictor
    from tl_cli.inference.report import EVALUATION_FILES, write_evaluation
    from tl_cli.runtime.outputs import check_output_dir
    from tl_cli.runtime.progress import RichReporter

    check_format(fmt, FORMATS)
    ws = workspace(ws_path)
    predictor = load_predictor(model, ws, device=device)
    if output is not None:  # before the work, not after it: a bad --output fails at once
        check_output_dir(output, EVALUATION_FILES, [data_dir, *_training_data(predictor, ws)])
    err.print(f"[dim]model: {escape(str(predictor.source))}[/]")
    ev = evaluate(predictor, data_dir, split, predictor.trained.val_fraction, batch_size, workers,
                  RichReporter(err), predictor.trained.grouping if split != "all" else None)
    folder = write_evaluation(ev, output or default_output_dir(predictor, ev))
    for rel, why in ev.failed:
        err.print(f"[yellow]skipped[/] {escape(str(rel))}: {escape(str(why))}", markup=True, highlight=False)
    if fmt == "json":
        out.print(json.dumps(ev.metrics, indent=2), markup=False)
    elif fmt == "csv":
        out.print((folder / "confusion.csv").read_text(), end="", markup=False)
    else:
        _print_evaluation(ev)
    err.print(f"wrote {folder}/ (metrics.json, confusion.csv, confusion.png, misclassified.csv, report.html)",
              markup=False, highlight=False, soft_wrap=True)


def _print_evaluation(ev) -> None:
    from rich.table import Table

    m = ev.metrics
    t = Table(title=f"accuracy {m['accuracy']:.4f} on {m['n']} images ({ev.split})", title_justify="left")
    for col in ("class", "precision", "recall", "f1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c, r in m["per_class"].items():
        t.add_row(escape(c), f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    a = m["macro_avg"]
    t.add_row("[i]macro avg[/]", f"{a['precision']:.3f}", f"{a['recall']:.3f}", f"{a['f1']:.3f}", str(m["n"]))
    out.print(t)
    if len(ev.classes) <= 12:
        cm = Table(title="confusion (rows true, columns predicted)", title_justify="left")
        cm.add_column("")
        for c in ev.classes:
            cm.add_column(escape(c), justify="right")
        for c, row in zip(ev.classes, m["confusion"]):
            cm.add_row(escape(c), *[f"[bold]{v}[/]" if i == ev.classes.index(c) else str(v) for i, v in enumerate(row)])
        out.print(cm)
    wrong = ev.misclassified()
    if wrong:
        w = Table(title=f"most confident mistakes ({min(10, len(wrong))} of {len(wrong)}; paths in {escape(str(ev.root))})",
                  title_justify="left")
        for col in ("image", "true", "predicted", "confidence"):
            w.add_column(col, justify="right" if col == "confidence" else "left", overflow="fold")
        for x in wrong[:10]:
            w.add_row(escape(os.path.relpath(x.path, ev.root)), escape(x.true), escape(x.predicted), f"{x.confidence:.3f}")
        out.print(w)
