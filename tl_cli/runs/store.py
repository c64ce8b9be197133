"""A run folder: a trained model plus everything needed to use and trust it.

    runs/<YYYYmmdd-HHMMSS>-<route>-<dataset>/
        model.safetensors   tensors only (head, or the whole network for fine-tuned runs)
        meta.json           a RunMeta (runs/meta.py): classes, backbone, weights digest,
                            preprocessing, config, metrics, versions; written last, so its
                            presence marks a complete run
Loading never executes code: safetensors and JSON only.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from tl_cli.data.preprocess import Preprocess
from tl_cli.errors import RunError
from tl_cli.runs.meta import MetaError, RunMeta, read_meta
from tl_cli.runtime.atomic import atomic_path, raise_write_error, write_text

META = "meta.json"
WEIGHTS = "model.safetensors"


def versions() -> dict[str, str]:
    # Package metadata, not `import torch`: a head-only run must not pay torch's start-up.
    from importlib.metadata import PackageNotFoundError, version

    from tl_cli import __version__

    out = {"tl": __version__, "python": platform.python_version()}
    for pkg in ("torch", "torchvision", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def stamp_and_slug(name: str) -> tuple[str, str]:
    """Now as YYYYmmdd-HHMMSS, and `name` made safe for a folder name (runs, evaluations)."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S"), re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "data"


def new_run_dir(runs_root: Path, route: str, dataset_name: str) -> Path:
    stamp, slug = stamp_and_slug(dataset_name)
    base = runs_root / f"{stamp}-{route}-{slug}"
    for n in range(1, 1000):
        path = base if n == 1 else Path(f"{base}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:  # another run started in the same second
            continue
        except OSError as exc:
            raise_write_error(exc, path)
    raise RunError(f"too many runs named {base.name}")


def save_tensors(path: Path, tensors: dict) -> None:
    """Write torch tensors or numpy arrays (same file format; numpy needs no torch import)."""
    import numpy as np

    with atomic_path(path, suffix=".safetensors") as tmp:
        try:
            if all(isinstance(v, np.ndarray) for v in tensors.values()):
                from safetensors.numpy import save_file as save_np

                save_np({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
                return
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        except Exception as exc:  # safetensors' own error type carries the OS error only as text
            if "No space left on device" not in str(exc) and "os error 28" not in str(exc):
                raise
            raise_write_error(OSError(errno.ENOSPC, "No space left on device"), path)


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise RunError(f"{path}: unreadable weights ({exc.__class__.__name__}: {exc})") from exc


def load_arrays(path: Path) -> dict:
    """Like `load_tensors`, as numpy arrays (no torch import)."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise RunError(f"{path}: unreadable weights ({exc.__class__.__name__}: {exc})") from exc


def save_run(run_dir: Path, tensors: dict, meta: RunMeta) -> None:
    """Write weights, then meta.json (last: its presence marks the run complete).

    The one writer of meta.json: every route passes its `RunMeta`, stamped here with the time
    and the versions of tl and its libraries.
    """
    save_tensors(run_dir / WEIGHTS, tensors)
    created = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    write_run_json(run_dir / META, meta.stamped(created, versions()).to_dict())


def finite_json(obj):
    """`obj` with every non-finite float (NaN, Infinity) as None (null).

    JSON (RFC 8259) has no such numbers: Python writes `NaN`, which most other readers refuse.
    A metric that diverged (val_loss NaN) is recorded as unknown instead.
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_run_json(path: Path, obj) -> None:
    """Atomically write `obj` as indented, standard JSON (non-finite floats as null: `finite_json`)."""
    write_text(path, json.dumps(finite_json(obj), indent=2, allow_nan=False, default=str) + "\n")


@dataclass(frozen=True)
class Run:
    dir: Path
    meta: RunMeta

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def preprocess(self) -> Preprocess:
        """The preprocessing the run was trained with (what prediction must use, never current defaults)."""
        if self.meta.preprocess is None:
            raise RunError(f"{self.dir}: meta.json records no preprocessing, so inputs can't be prepared as in training")
        return self.meta.preprocess

    @property
    def created(self) -> _dt.datetime:
        """When the run was saved (local time, naive); see `created_at`."""
        return created_at(self.dir, self.meta.created)

    def tensors(self) -> dict:
        return load_tensors(self.dir / WEIGHTS)


@dataclass(frozen=True)
class DamagedRun:
    """A run folder whose meta.json or weights can't be used, and why (one line)."""

    dir: Path
    problem: str

    @property
    def created(self) -> _dt.datetime:
        return created_at(self.dir, None)


_STAMP = re.compile(r"^(\d{8}-\d{6})")


def created_at(run_dir: Path, created: str | None) -> _dt.datetime:
    """When a run was made: meta's `created`, else the folder name's stamp, else meta.json's mtime."""
    if created:
        try:
            return _dt.datetime.fromisoformat(created).replace(tzinfo=None)
        except ValueError:
            pass
    m = _STAMP.match(run_dir.name)
    if m:
        return _dt.datetime.strptime(m.group(1), "%Y%m%d-%H%M%S")
    try:
        return _dt.datetime.fromtimestamp((run_dir / META).stat().st_mtime)
    except OSError:
        return _dt.datetime.min


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder's metadata (the one reader of meta.json, via `RunMeta`).

    Raises:
        RunError: no meta.json (not a complete run), or a damaged run (the message says what is wrong).
    """
    run_dir = Path(run_dir)
    meta_path = run_dir / META
    if not meta_path.is_file():
        if (run_dir / "checkpoint.pt").is_file():  # a fine-tuning run stopped before its end (finetune/checkpoint.py)
            raise RunError(f"{run_dir} is an unfinished fine-tuning run (it has a checkpoint, no {META} yet)",
                           hint=f"finish it with `tl finetune --resume --run {run_dir}` (tl retrain for a retrain run), "
                                "or pass a finished run")
        raise RunError(f"{run_dir} is not a complete tl run (no {META})", hint="pass a folder from .tl/runs")
    try:
        meta = read_meta(meta_path)
    except MetaError as exc:
        raise RunError(f"damaged run {run_dir}: {exc.message}", hint="`tl runs` lists the runs that can be used") from exc
    if not (run_dir / WEIGHTS).is_file():
        raise RunError(f"damaged run {run_dir}: {WEIGHTS} is missing", hint="`tl runs` lists the runs that can be used")
    outputs = head_outputs(run_dir / WEIGHTS, meta.kind)
    if outputs is not None and outputs != len(meta.classes):  # else labels go to the wrong outputs, or past the last
        n = len(meta.classes)
        raise RunError(f"damaged run {run_dir}: {META} lists {n} class{'es' if n != 1 else ''}, the model has {outputs} outputs",
                       hint="restore the run's meta.json, or train again; `tl runs` lists the runs that can be used")
    return Run(run_dir, meta)


# The new head's weight in model.safetensors: a head-only run's, and the whole network's
# (backbones.wrapper.attach_head: classifier = Sequential(Dropout, Linear)).
HEAD_WEIGHT = {"head": "head.weight", "full": "classifier.1.weight"}


def head_outputs(path: Path, kind: str) -> int | None:
    """How many classes the model in `path` outputs, from the file's header alone (no tensor is
    read); None when that can't be told (the weights' loader reports an unreadable file)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            shape = f.get_slice(HEAD_WEIGHT[kind]).get_shape() if HEAD_WEIGHT[kind] in f.keys() else None
    except Exception:  # noqa: BLE001 - a damaged file: load_tensors says so when the weights are read
        return None
    return int(shape[0]) if shape else None


def scan_runs(runs_root: Path) -> tuple[list[Run], list[DamagedRun]]:
    """The complete runs under `runs_root`, and the damaged ones (folders without meta.json are
    runs still in progress, or interrupted: neither)."""
    runs, damaged = [], []
    for d in sorted(runs_root.glob("*")) if runs_root.is_dir() else []:
        if not (d / META).is_file():
            continue
        try:
            runs.append(load_run(d))
        except RunError as exc:
            damaged.append(DamagedRun(d, exc.message.removeprefix(f"damaged run {d}: ")))
    return runs, damaged


def list_runs(runs_root: Path) -> list[Run]:
    """The complete, readable runs under `runs_root`, in name order."""
    return scan_runs(runs_root)[0]


def newest_run(runs_root: Path) -> Run | None:
    """The most recently made readable run, or None."""
    return max(list_runs(runs_root), key=lambda r: (r.created, r.dir.name), default=None)
