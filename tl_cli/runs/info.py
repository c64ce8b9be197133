"""`tl info` and `tl runs`: what a run is, how it was trained, how well it did, where it lives.

Reads only meta.json (and the backbone's architecture on the meta device for the layer table),
never the weights. Meta is read defensively: runs written by other routes or older versions of
tl may lack keys, which are shown as "-" rather than failing.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tl_cli.errors import RunError
from tl_cli.runs.store import META, Run, list_runs, load_run
from tl_cli.runs.workspace import Workspace
from tl_cli.runtime.atomic import TMP_PREFIX

ROUTES = ("extract", "finetune", "retrain")
_STAMP = re.compile(r"^(\d{8}-\d{6})")
_VAL_ACC_KEYS = ("val_accuracy", "best_val_accuracy", "val_acc")


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


def _find(meta: dict, key: str) -> Any:
    """`key` at the top of meta.json, else in its metrics/config (or one level deeper in config)."""
    if meta.get(key) is not None:
        return meta[key]
    for section in ("metrics", "config", "training", "train"):
        sub = meta.get(section)
        if isinstance(sub, dict):
            if sub.get(key) is not None:
                return sub[key]
            for inner in sub.values():
                if isinstance(inner, dict) and inner.get(key) is not None:
                    return inner[key]
    return None


def _as_int(v: Any) -> int | None:
    try:
        return int(v) if v is not None and not isinstance(v, bool) else None
    except (TypeError, ValueError):
        return None


def _created(run: Run) -> _dt.datetime:
    """When the run was made: meta "created", else the folder name's stamp, else meta.json's mtime."""
    raw = run.meta.get("created")
    if isinstance(raw, str):
        try:
            return _dt.datetime.fromisoformat(raw).replace(tzinfo=None)
        except ValueError:
            pass
    m = _STAMP.match(run.dir.name)
    if m:
        return _dt.datetime.strptime(m.group(1), "%Y%m%d-%H%M%S")
    return _dt.datetime.fromtimestamp((run.dir / META).stat().st_mtime)


def _same(a: Path | str | None, b: Path) -> bool:
    if not a:
        return False
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def summarize(run: Run, latest: str | None = None) -> RunSummary:
    meta = run.meta
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    acc = next((metrics[k] for k in _VAL_ACC_KEYS if isinstance(metrics.get(k), (int, float))), None)
    ds = meta.get("dataset")
    route = meta.get("route")
    return RunSummary(
        name=run.dir.name,
        dir=str(run.dir.resolve()),
        created=_created(run).isoformat(timespec="seconds"),
        route=route if isinstance(route, str) else None,
        backbone=meta.get("backbone") if isinstance(meta.get("backbone"), str) else None,
        classes=tuple(str(c) for c in meta.get("classes") or ()),
        val_accuracy=float(acc) if acc is not None else None,
        dataset=ds.get("root") if isinstance(ds, dict) else (ds if isinstance(ds, str) else None),
        latest=_same(latest, run.dir),
    )


def workspace_runs(ws: Workspace) -> list[RunSummary]:
    """Complete runs of the workspace, newest first; the latest (the one `tl predict` uses) is marked."""
    latest = ws.state().get("latest_run")
    rows = [summarize(r, latest) for r in list_runs(ws.runs)]
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
            if f.startswith(TMP_PREFIX):
                continue  # leftovers of an interrupted write, not part of the run
            p = Path(dirpath) / f
            out.append((p.relative_to(run_dir).as_posix(), p.stat().st_size))
    return tuple(out)


def run_info(run: str | os.PathLike | None = None, workspace: Workspace | None = None, layers: bool = True) -> RunInfo:
    """Summarise a run folder (default: the workspace's latest run).

    Raises:
        RunError: no such run, or the folder is not a complete run.

    Example:
        >>> info = run_info()          # the latest run
        >>> info.summary.route, info.metrics.get("val_accuracy")
        ('extract', 0.95)
    """
    ws = workspace or Workspace.open()
    r = load_run(resolve_run(run, ws))
    meta = r.meta
    summary = summarize(r, ws.state().get("latest_run"))
    freeze = _as_int(_find(meta, "freeze"))
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
    ds = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    rows: tuple[LayerRow, ...] = ()
    note = None
    if layers and summary.backbone:
        rows, note = layer_rows(summary.backbone, len(summary.classes), summary.route, freeze)
    elif layers:
        note = "no layer table: the run does not record its backbone"
    return RunInfo(
        summary=summary,
        freeze=freeze,
        epochs=_as_int(_find(meta, "epochs")),
        best_epoch=_as_int(_find(meta, "best_epoch")),
        stop_reason=str(meta["stop_reason"]) if isinstance(meta.get("stop_reason"), str) else None,
        metrics=scalars,
        n_train=_as_int(ds.get("n_train")),
        n_val=_as_int(ds.get("n_val")),
        layers=rows,
        layers_note=note,
        files=_files(r.dir),
    )
