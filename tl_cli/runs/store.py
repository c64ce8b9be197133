"""A run folder: a trained model plus everything needed to use and trust it.

    runs/<YYYYmmdd-HHMMSS>-<route>-<dataset>/
        model.safetensors   tensors only (head, or the whole network for fine-tuned runs)
        meta.json           classes, backbone, weights digest, preprocessing, config, metrics,
                            versions; written last, so its presence marks a complete run
Loading never executes code: safetensors and JSON only.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_cli.errors import RunError
from tl_cli.runtime.atomic import atomic_path, raise_write_error, write_json

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
        if all(isinstance(v, np.ndarray) for v in tensors.values()):
            from safetensors.numpy import save_file as save_np

            save_np({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
            return
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


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


def save_run(run_dir: Path, tensors: dict, meta: dict[str, Any]) -> None:
    """Write weights, then meta.json (last: its presence marks the run complete)."""
    save_tensors(run_dir / WEIGHTS, tensors)
    write_json(run_dir / META, {**meta, "versions": versions()})


@dataclass(frozen=True)
class Run:
    dir: Path
    meta: dict

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def tensors(self) -> dict:
        return load_tensors(self.dir / WEIGHTS)


def val_fraction_of(meta: dict) -> float:
    """The validation share recorded in a run's meta (or an export's copy of it), default 0.2.

    Fine-tuned runs record it at the top, `tl extract` runs in config["extract"].
    """
    if "val_fraction" in meta:
        return float(meta["val_fraction"])
    if "val_fraction" in meta.get("dataset", {}):
        return float(meta["dataset"]["val_fraction"])
    for section in meta.get("config", {}).values():  # {"extract": {...}, "head": {...}}
        if isinstance(section, dict) and "val_fraction" in section:
            return float(section["val_fraction"])
    return 0.2


def grouping_of(meta: dict):
    """The split grouping (data/groups.py) a run was trained with, or None: evaluate's
    `--split val` must select the same images."""
    from tl_cli.data.groups import make_grouping

    for section in meta.get("config", {}).values():  # {"extract": {...}} or {"finetune": {...}}
        if isinstance(section, dict) and (section.get("group_pattern") or section.get("groups")):
            return make_grouping(section.get("group_pattern"), section.get("groups"))
    return None


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder's metadata. Raises RunError if it is missing or incomplete."""
    run_dir = Path(run_dir)
    meta_path = run_dir / META
    if not meta_path.is_file():
        raise RunError(f"{run_dir} is not a complete tl run (no {META})", hint="pass a folder from .tl/runs")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise RunError(f"{meta_path}: not valid JSON") from exc
    if not (run_dir / WEIGHTS).is_file():
        raise RunError(f"{run_dir}: {WEIGHTS} is missing")
    return Run(run_dir, meta)


def list_runs(runs_root: Path) -> list[Run]:
    out = []
    for d in sorted(runs_root.glob("*")) if runs_root.is_dir() else []:
        try:
            out.append(load_run(d))
        except RunError:
            continue
    return out
