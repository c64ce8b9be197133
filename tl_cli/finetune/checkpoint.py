"""Training checkpoints: written atomically every epoch, read back without running code.

A checkpoint holds only tensors and plain containers (dicts, lists, numbers, strings), written
with `torch.save` and read with `torch.load(weights_only=True)`, so a tampered file cannot
execute anything. Random states are converted to tensors and plain lists for the same reason.

    checkpoint.pt   model, optimizer, schedule step, epoch, best-so-far, history, random states
    best.safetensors  weights of the best epoch so far (written before the checkpoint that names it)
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tl_cli.errors import RunError, UnsafeFile, WorkspaceError
from tl_cli.runtime.atomic import atomic_path, raise_write_error
from tl_cli.runtime.tensor_files import code_refused, load_tensors_only

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
FORMAT = 1


def rng_state(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random stream training draws from, as tensors and plain lists."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        # This process's GPU only: get_rng_state_all() would create a CUDA context on every GPU.
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], loader_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if len(state.get("cuda") or []) == 1 and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])  # the current device's (see rng_state)
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextlib.contextmanager
def random_state_kept():
    """Training seeds and draws from the global torch, numpy and `random` streams (so a checkpoint
    can restore them); a library caller gets its own streams back when training ends."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Atomically replace the run's checkpoint: a kill mid-write leaves the previous one intact.

    Raises:
        WorkspaceError: the disk is full, or the file could not be written.
    """
    path = run_dir / CHECKPOINT
    with atomic_path(path, suffix=".pt") as tmp:
        try:
            torch.save({"format": FORMAT, **state}, tmp)
        except RuntimeError as exc:
            if not _WRITE_FAILED.search(str(exc)):
                raise
            _raise_write_failed(exc, path)


# What torch's zip writer (PyTorchStreamWriter) says when a write() comes back short: it raises a
# RuntimeError, not an OSError, so the errno (ENOSPC, EDQUOT, EIO) is lost.
_WRITE_FAILED = re.compile(r"unexpected pos|file write failed|failed writing file")
LOW_SPACE = 64 * 2**20  # bytes: less than this left after a failed write means the disk filled up


def _raise_write_failed(exc: RuntimeError, path: Path) -> None:
    """A failed torch.save as the WorkspaceError other writes give (atomic.raise_write_error)."""
    try:
        full = shutil.disk_usage(path.parent).free < LOW_SPACE
    except OSError:
        full = False
    if full:
        raise_write_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
    raise WorkspaceError(f"cannot write {path}: the write failed ({str(exc).splitlines()[0][:160]})",
                         hint="check the disk (quota, errors) and resume with `tl finetune --resume`") from exc


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Read a checkpoint without executing code.

    Raises:
        RunError: missing, truncated or otherwise damaged file, or an unknown format.
        UnsafeFile: the file holds Python objects that would need code to load.
    """
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise RunError(f"{run_dir} has no {CHECKPOINT}: nothing to resume",
                       hint="the run was stopped before its first epoch ended; start it again")
    try:
        state = load_tensors_only(path)
    except Exception as exc:  # a refused class or function; else truncated zip, bad magic, I/O: "damaged"
        code = code_refused(path, exc)
        if code:
            raise UnsafeFile(f"{path}: refusing to load: it holds Python objects that need code to run ({code})",
                             hint="tl checkpoints hold only tensors; start the run again") from exc
        raise _damaged(path, exc) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunError(f"{path}: not a tl checkpoint of format {FORMAT}")
    missing = [k for k in ("model", "optimizer", "epoch", "rng") if k not in state]
    if missing:
        raise _damaged(path, KeyError(", ".join(missing)))
    return state


def _damaged(path: Path, exc: BaseException) -> RunError:
    return RunError(f"{path}: damaged checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
                    hint="delete the run folder and start again; checkpoints are written atomically, so this "
                         "means the file was changed or the disk is failing")
