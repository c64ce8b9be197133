"""`tl info` and `tl runs`: what a run is, how it was trained, how well it did, where it lives.

Reads only meta.json, through `RunMeta` (and the backbone's architecture on the meta device for
the layer table), never the weights. What a run does not record (older files, other routes) is
shown as "-"; a damaged run is listed as damaged, with what is wrong.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tl_cli.errors import RunError
from tl_cli.runs.lock import LOCK
from tl_cli.runs.store import DamagedRun, Run, load_run, scan_runs
from tl_cli.runs.workspace import Workspace, WorkspaceLike
from tl_cli.runtime.atomic import TMP_PREFIX


@dataclass(frozen=True)
class LayerRow:
    """One weight layer of a run's model and whether training changed it."""

    index: int
    name: str
    kind: str
    params: int
    trainable: int | None  # None when the route does not say
    frozen: int | None


@dataclass(frozen=True)
class RunSummary:
    """One line of `tl runs`."""

    name: str
    dir: str
    created: str  # ISO 8601, local time
    route: str | None
    backbone: str | None
    classes: tuple[str, ...]
    val_accuracy: float | None
    dataset: str | None
    latest: bool
    damaged: str | None = None  # what is wrong with a run that can't be used; None when it can

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunInfo:
    """Everything `tl info` shows about one run."""

    summary: RunSummary
    freeze: int | None  # as recorded (finetune/retrain); None for extract runs and older metas
    epochs: int | None
    best_epoch: int | None
    stop_reason: str | None  # "epochs", "early_stopping", "time_budget" (fine-tuned runs)
    metrics: dict[str, Any]  # scalar metrics only
    n_train: int | None
    n_val: int | None
    layers: tuple[LayerRow, ...]  # empty when the backbone is not registered here
    layers_note: str | None  # why the layer table is missing or incomplete
    files: tuple[tuple[str, int], ...]  # (path relative to the run folder, bytes)

    @property
    def frozen_layers(self) -> int | None:
        known = [r for r in self.layers if r.frozen is not None]
        return sum(1 for r in known if r.frozen) if known else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = self.summary.to_dict()
        d["files"] = [{"path": p, "bytes": n} for p, n in self.files]
        d["frozen_layers"] = self.frozen_layers
        return d


def _same(a: Path | str | None, b: Path) -> bool:
    if not a:
        return False
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def summarize(run: Run, latest: str | None = None) -> RunSummary:
    meta = run.meta
    return RunSummary(
        name=run.dir.name,
        dir=str(run.dir.resolve()),
        created=run.created.isoformat(timespec="seconds"),
        route=meta.route,
        backbone=meta.backbone,
        classes=meta.classes,
        val_accuracy=meta.val_accuracy,
        dataset=meta.dataset.root,
        latest=_same(latest, run.dir),
    )


def summarize_damaged(run: DamagedRun, latest: str | None = None) -> RunSummary:
    return RunSummary(name=run.dir.name, dir=str(run.dir.resolve()), created=run.created.isoformat(timespec="seconds"),
                      route=None, backbone=None, classes=(), val_accuracy=None, dataset=None,
                      latest=_same(latest, run.dir), damaged=run.problem)


def workspace_runs(ws: Workspace) -> list[RunSummary]:
    """The workspace's runs, newest first, damaged ones included (marked); the latest (the one
    `tl predict` uses) is marked."""
    latest = ws.state().get("latest_run")
    runs, damaged = scan_runs(ws.runs)
    rows = [summarize(r, latest) for r in runs] + [summarize_damaged(d, latest) for d in damaged]
    return sorted(rows, key=lambda s: (s.created, s.name), reverse=True)


def resolve_run(run: str | os.PathLike | None, ws: Workspace) -> Path:
    """A run folder from a path, a run name in the workspace (or a unique prefix of one), or the latest."""
    if run is None:
        return ws.latest_run()
    p = Path(run).expanduser()
    if p.is_dir():
        return p
    names = sorted(d.name for d in ws.runs.glob("*") if d.is_dir()) if ws.runs.is_dir() else []
    if str(run) in names:
        return ws.runs / str(run)
    hits = [n for n in names if n.startswith(str(run))]
    if len(hits) == 1:
        return ws.runs / hits[0]
    if len(hits) > 1:
        raise RunError(f"{run!s} matches {len(hits)} runs: {', '.join(hits[:5])}", hint="give more of the name")
    raise RunError(f"no run {run!s} (not a folder, nor a run in {ws.runs})", hint="`tl runs` lists them")


def _frozen_count(route: str | None, freeze: int | None, n_layers: int) -> int | None:
    """How many leading layers kept their pretrained weights, from what the run records."""
    if route == "extract":
        return n_layers - 1  # the whole backbone; only the new head (the last layer) was trained
    if route == "retrain":
        return freeze or 0
    return freeze  # finetune, or a route this version does not know: only what is recorded


def layer_rows(backbone: str, n_classes: int, route: str | None, freeze: int | None) -> tuple[tuple[LayerRow, ...], str | None]:
    """The run's model (backbone + new head) layer by layer, built on the meta device (no weights)."""
    import torch

    from tl_cli.backbones import get_spec
    from tl_cli.backbones.describe import meta_backbone
    from tl_cli.backbones.layers import enumerate_layers
    from tl_cli.backbones.wrapper import attach_head
    from tl_cli.errors import TLError

    try:
        spec = get_spec(backbone)
    except TLError as exc:
        return (), f"no layer table: {exc.message}"
    with torch.device("meta"):
        net = attach_head(meta_backbone(spec), max(n_classes, 1))
    layers = enumerate_layers(net, spec.preprocess.input_size)
    n_frozen = _frozen_count(route, freeze, len(layers))
    note = None if n_frozen is not None else "the run does not record which layers were frozen"
    rows = []
    for layer in layers:
        if n_frozen is None:
            tr = fr = None
        else:
            is_frozen = layer.index <= n_frozen
            tr, fr = (0, layer.params) if is_frozen else (layer.params, 0)
        rows.append(LayerRow(layer.index, layer.name.removeprefix("net."), layer.kind, layer.params, tr, fr))
    return tuple(rows), note


def _files(run_dir: Path) -> tuple[tuple[str, int], ...]:
    out = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        dirnames.sort()
        for f in sorted(filenames):
            if f.startswith(TMP_PREFIX) or f == LOCK:
                continue  # leftovers of an interrupted write, and the trainer's lock: not part of the run
            p = Path(dirpath) / f
            out.append((p.relative_to(run_dir).as_posix(), p.stat().st_size))
    return tuple(out)


def run_info(run: str | os.PathLike | None = None, workspace: WorkspaceLike = None, layers: bool = True) -> RunInfo:
    """Summarise a run folder (default: the workspace's latest run).

    Raises:
        RunError: no such run, or the folder is not a complete run.

    Example:
        >>> info = run_info()          # the latest run
        >>> info.summary.route, info.metrics.get("val_accuracy")
        ('extract', 0.95)
    """
    ws = Workspace.open(workspace)
    r = load_run(resolve_run(run, ws))
    meta = r.meta
    summary = summarize(r, ws.state().get("latest_run"))
    scalars = {k: v for k, v in meta.metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
    rows: tuple[LayerRow, ...] = ()
    note = None
    if layers:
        rows, note = layer_rows(meta.backbone, len(meta.classes), meta.route, meta.freeze)
    return RunInfo(
        summary=summary,
        freeze=meta.freeze,
        epochs=meta.epochs,
        best_epoch=meta.best_epoch,
        stop_reason=meta.stop_reason,
        metrics=scalars,
        n_train=meta.dataset.n_train,
        n_val=meta.dataset.n_val,
        layers=rows,
        layers_note=note,
        files=_files(r.dir),
    )
