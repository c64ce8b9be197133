"""A fine-tuning run's folder: what --resume reads before the rest, and removing the folder of a
run stopped before its first checkpoint.

Until the first checkpoint (the probe's epoch 0, or epoch 1 with --head-init random) the folder
holds only the settings: `--resume` could not continue it, so a run stopped by then leaves nothing
behind but what the user may have put there.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from tl_cli.finetune.checkpoint import BEST, CHECKPOINT
from tl_cli.finetune.config import CONFIG_FILE
from tl_cli.finetune.history import CURVES, HISTORY
from tl_cli.runs.lock import LOCK
from tl_cli.runs.workspace import Workspace
from tl_cli.runtime.atomic import remove_stale_temporaries

SOURCE = "source.json"
# Every file tl may have written into a run folder before its first checkpoint is in place
# (best.safetensors is written just before the checkpoint that names it).
WRITTEN_BEFORE_CHECKPOINT = (CONFIG_FILE, SOURCE, BEST, HISTORY, CURVES, LOCK)


def discard_unstarted(run_dir: Path, ws: Workspace, previous_run: str | None) -> bool:
    """Remove the folder of a run stopped before its first checkpoint; False (and nothing
    removed) when it has one, so `--resume` continues it.

    Only the files tl writes there are deleted; the folder itself goes when that empties it.
    The workspace's run to resume goes back to `previous_run` (the one before this run started).
    """
    if (run_dir / CHECKPOINT).exists():
        return False
    for name in WRITTEN_BEFORE_CHECKPOINT:
        with contextlib.suppress(OSError):
            (run_dir / name).unlink(missing_ok=True)
    remove_stale_temporaries(run_dir)
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # fails, and keeps the folder, when something else is in it
    if ws.state().get("training_run") == str(run_dir):  # not if another run has started since
        ws.remember(training_run=previous_run)
    return True


def saved_device(ws: Workspace, run_dir) -> str:
    """The --device the run was started with (what resume computes on unless overridden); "auto"
    where this process cannot read the run (under torchrun the workspace may be on node 0 only)."""
    try:
        run_dir = Path(run_dir) if run_dir is not None else Path(ws.state()["training_run"])
        return str(json.loads((run_dir / CONFIG_FILE).read_text()).get("device") or "auto")
    except Exception:  # noqa: BLE001 - rank 0 reports a missing or damaged run properly, right after
        return "auto"
