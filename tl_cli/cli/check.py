"""`tl check`: what is wrong with a dataset, before training on it."""

from __future__ import annotations

import json
import shlex
from typing import Annotated

import typer

from tl_cli.backbones import DEFAULT_BACKBONE
from tl_cli.check import NEAR_THRESHOLD
from tl_cli.cli.app import command, err, out, workspace
from tl_cli.cli.options import (
    BackboneOpt,
    BatchSizeOpt,
    DataDirArg,
    DeviceOpt,
    EngineOpt,
    FormatOpt,
    GroupPatternOpt,
    GroupsOpt,
    OutputOpt,
    PretrainedOpt,
    ValFractionOpt,
    WeightsOpt,
    WorkersOpt,
    WorkspaceOpt,
    check_format,
)

SHOW = 10  # rows per section in the terminal; the files hold all


@command("check", epilog="Examples:  tl check ./photos   tl check ./photos --format json > check.json\n\n"
                         "then:  tl extract ./photos --groups .tl/checks/<date>-photos/groups.json")
def check_cmd(
    data_dir: DataDirArg = None,
    backbone: BackboneOpt = DEFAULT_BACKBONE,
    weights: WeightsOpt = None,
    pretrained: PretrainedOpt = True,
    val_fraction: ValFractionOpt = 0.2,
    group_pattern: GroupPatternOpt = None,
    groups: GroupsOpt = None,
    near_threshold: Annotated[float, typer.Option(
        "--near-threshold", min=0.0, max=1.0,
        help="Cosine similarity of features from which two images are near duplicates.")] = NEAR_THRESHOLD,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Cross-validation folds for the label check.")] = 5,
    batch_size: BatchSizeOpt = 32,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    engine: EngineOpt = "auto",
    fmt: FormatOpt = "table",
    output: OutputOpt = None,
    ws_path: WorkspaceOpt = None,
) -> None:
    """Find exact and near duplicates, train/val leakage, likely label errors, outliers and class imbalance.

    Uses (or fills) the feature cache of `tl extract`. Never changes anything in DATA: it reports
    what to review, in the terminal and in check.json, CSVs, groups.json and report.html.
    """
    from tl_cli.check.report import CHECK_FILES, default_check_dir, write_check
    from tl_cli.check.run import CheckConfig, check_dataset
    from tl_cli.features.extract import ExtractConfig
    from tl_cli.runtime.outputs import check_output_dir
    from tl_cli.runtime.progress import RichReporter

    check_format(fmt)
    ws = workspace(ws_path)
    data = data_dir if data_dir is not None else ws.last_dataset()
    ecfg = ExtractConfig(backbone=backbone, weights=str(weights) if weights else None, pretrained=pretrained,
                         val_fraction=val_fraction, batch_size=batch_size, workers=workers, device=device, engine=engine,
                         group_pattern=group_pattern, groups=str(groups.expanduser().absolute()) if groups else None)
    cfg = CheckConfig(extract=ecfg, near_threshold=near_threshold, folds=folds)
    if output is not None:  # before the work, not after it: a bad --output fails at once
        check_output_dir(output, CHECK_FILES, [data, *ws.known_datasets()])
    res = check_dataset(data, cfg, ws, RichReporter(err))
    folder = write_check(res, output or default_check_dir(ws.root / "checks", res.root))
    if fmt == "json":
        out.print(json.dumps(res.to_json(), indent=1), markup=False)
    else:
        render(res)
    err.print(f"files: {folder}  (report.html, check.json, CSVs, groups.json)", markup=False)
    if res.leaked:
        err.print("to keep copies on one side of the split: "
                  f"tl extract {shlex.quote(str(res.root))} --groups {shlex.quote(str(folder / 'groups.json'))}",
                  markup=False)


def render(res) -> None:
    from rich.markup import escape
    from rich.table import Table

    s = res.summary()
    t = Table(title=f"tl check: {escape(str(res.root))} ({s['images']} images)", title_justify="left")
    for col in ("finding", "count", "first ones"):
        t.add_column(col, justify="right" if col == "count" else "left")
    leak = [g for g in res.groups if g.leakage]
    conflict = [g for g in res.groups if g.conflicting_labels]
    def first(items: list[str]) -> str:
        return escape(", ".join(items[:3]) + (" ..." if len(items) > 3 else ""))
    t.add_row("exact duplicate groups", str(s["exact_groups"]),
              first([" = ".join(m.path for m in g.members[:2]) for g in res.groups if g.kind == "exact"]))
    t.add_row("near duplicate groups", str(s["near_groups"]),
              first([" ~ ".join(m.path for m in g.members[:2]) for g in res.groups if g.kind == "near"]))
    t.add_row("conflicting labels (groups)", str(len(conflict)), first([g.members[0].path for g in conflict]))
    t.add_row("train/val leakage", f"{len(res.leaked)} of {res.n_val} val", first(sorted(res.leaked)))
    t.add_row("likely label errors", str(s["label_issues"]),
              first([f"{res.relpaths[i.index]} -> {res.classes[i.suggested]}" for i in res.label_issues]))
    t.add_row("outliers", str(s["outliers"]), first([res.relpaths[o.index] for o in res.outliers]))
    t.add_row("classes", str(len(res.classes)), escape(", ".join(f"{r['class']} {r['count']}" for r in res.balance)))
    out.print(t)
    if res.label_issues:
        li = Table(title=f"likely label errors (top {min(SHOW, len(res.label_issues))})", title_justify="left")
        for col in ("path", "split", "given", "suggested", "confidence"):
            li.add_column(col, justify="right" if col == "confidence" else "left")
        for i in res.label_issues[:SHOW]:
            li.add_row(escape(res.relpaths[i.index]), str(res.splits[i.index]), escape(res.classes[i.given]),
                       escape(res.classes[i.suggested]), f"{i.confidence:.2f}")
        out.print(li)
    if leak:
        err.print(f"leakage: {len(res.leaked)} of {res.n_val} validation images ({len(res.leaked) / max(res.n_val, 1):.0%}) "
                  "have a copy in training: the validation accuracy is optimistic", markup=False, style="yellow")
    if res.balance_warning:
        err.print(f"warning: {res.balance_warning}", markup=False, style="yellow")
    if res.label_note:
        err.print(f"note: {res.label_note}", markup=False, style="yellow")
