"""The workspace: where tl keeps caches and runs, and what it remembers between commands.

Default `.tl/` in the current folder; `--workspace` or `TL_WORKSPACE` moves it. `state.json`
remembers the last dataset and the latest run, so `tl finetune` and `tl predict` work without
repeating paths. Nothing is ever written inside the user's dataset folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tl_cli.errors import DataError, RunError, WorkspaceError
from tl_cli.runtime.atomic import raise_write_error, write_json


def default_workspace() -> Path:
    return Path(os.environ.get("TL_WORKSPACE") or ".tl")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, root: str | os.PathLike | None = None) -> Workspace:
        return cls(Path(root).expanduser().absolute() if root else default_workspace().absolute())

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def ensure(self, outside: Path | None = None) -> None:
        """Create the workspace if needed; raise WorkspaceError if it is not writable, or if it
        would lie inside the folder `outside` (the user's dataset, which tl never writes into)."""
        if outside is not None and self.root.resolve().is_relative_to(Path(outside).resolve()):
            raise WorkspaceError(
                f"the workspace {self.root} is inside the dataset folder {outside}: tl never writes into your data",
                hint="run tl from another folder, or pass --workspace DIR (or set TL_WORKSPACE)",
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"cannot create workspace {self.root}: {exc.strerror}") from exc
        if not os.access(self.root, os.W_OK):
            raise WorkspaceError(
                f"workspace {self.root} is not writable",
                hint="choose another with --workspace or TL_WORKSPACE",
            )

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def remember(self, **values) -> None:
        """Update keys of state.json. Serialised by a lock beside it, so two tl processes
        finishing together can't drop each other's keys (read-modify-write)."""
        import fcntl

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / "state.lock", "a")
        except OSError as exc:
            raise_write_error(exc, self.root / "state.lock")
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held for milliseconds: waiting is fine
            state = self.state()
            state.update({k: str(v) for k, v in values.items()})
            write_json(self.state_file, state)

    def last_dataset(self) -> Path:
        d = self.state().get("last_dataset")
        if not d:
            raise DataError("no dataset given and none used before in this workspace", hint="pass DATA_DIR")
        return Path(d)

    def latest_run(self) -> Path:
        r = self.state().get("latest_run")
        if not r or not (Path(r) / "meta.json").is_file():
            raise RunError(
                f"no trained model in workspace {self.root}",
                hint="train one with `tl extract DATA_DIR` (or `tl finetune`), or pass --model RUN_DIR",
            )
        return Path(r)
