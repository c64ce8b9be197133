"""The workspace: where tl keeps caches and runs, and what it remembers between commands.

Default `.tl/` in the current folder; `--workspace` or `TL_WORKSPACE` moves it. `state.json`
remembers the last dataset and the latest run, so `tl finetune` and `tl predict` work without
repeating paths. Nothing is ever written inside the user's dataset folder.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from tl_cli.errors import DataError, RunError, TLWarning, WorkspaceError
from tl_cli.runtime.atomic import write_json


def default_workspace() -> Path:
    return Path(os.environ.get("TL_WORKSPACE") or ".tl")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, root: str | os.PathLike | Workspace | None = None) -> Workspace:
        """The workspace at `root` (a folder, or a Workspace as it is), or the default one for None."""
        if isinstance(root, Workspace):
            return root
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
        """state.json's keys ({} when it is missing or damaged)."""
        return self._read_state()[0]

    def _read_state(self) -> tuple[dict, str | None]:
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return {}, None
        except OSError as exc:
            return {}, f"{self.state_file} is unreadable ({exc.strerror})"
        try:
            state = json.loads(text)
        except ValueError:
            return {}, f"{self.state_file} is damaged (not valid JSON)"
        if not isinstance(state, dict):
            return {}, f"{self.state_file} is damaged (not a JSON object)"
        # Every value tl writes is a path, as text; another type would fail wherever it is used.
        bad = sorted(k for k, v in state.items() if not isinstance(v, str))
        state = {k: self._from_disk(v) for k, v in state.items() if k not in bad}
        if bad:
            return state, f"{self.state_file} is damaged ({', '.join(bad)}: not a path)"
        return state, None

    # Paths inside the workspace (its runs) are kept relative to it, so a workspace that is copied
    # or moved names its own runs, not those of the folder it came from (which may still exist).
    def _to_disk(self, value: str) -> str:
        p = Path(value)
        if p.is_absolute() and p.is_relative_to(self.root):
            return p.relative_to(self.root).as_posix()
        return value

    def _from_disk(self, value: str) -> str:
        return value if not value or Path(value).is_absolute() else str(self.root / value)

    def remember(self, **values) -> None:
        """Update keys of state.json (a value None removes its key). Serialised by a lock beside
        it, so two tl processes finishing together can't drop each other's keys (read-modify-write)."""
        from tl_cli.runtime.locks import exclusive_lock

        with exclusive_lock(self.root / "state.lock"):  # held for milliseconds: waiting is fine
            state = self.state()
            state.update({k: str(v) for k, v in values.items() if v is not None})
            for k in (k for k, v in values.items() if v is None):
                state.pop(k, None)
            write_json(self.state_file, {k: self._to_disk(v) for k, v in state.items()})

    def known_datasets(self) -> list[Path]:
        """Data folders this workspace trained on that still exist (the last one): an --output must
        not land in them, even when another folder is the one being read."""
        last = self.state().get("last_dataset")
        return [Path(last)] if last and Path(last).is_dir() else []

    def last_dataset(self) -> Path:
        state, problem = self._read_state()
        d = state.get("last_dataset")
        if not d:
            raise DataError("no dataset given and none used before in this workspace"
                            + (f" ({problem})" if problem else ""), hint="pass DATA_DIR")
        return Path(d)

    def latest_run(self) -> Path:
        """The run `tl predict` uses by default: the last one trained here.

        When state.json is damaged, or names a run that is damaged or gone (deleted, or a folder
        that is not a run), the newest readable run is used instead, and a TLWarning says what is
        wrong (the CLI prints it as one line).
        """
        from tl_cli.runs.store import META, load_run, newest_run

        state, problem = self._read_state()
        r = state.get("latest_run")
        if r and (Path(r) / META).is_file():
            try:
                return load_run(r).dir
            except RunError as exc:
                problem = exc.message
        elif r:
            problem = f"the latest run {r} is {'not a complete tl run' if Path(r).is_dir() else 'gone'}"
        if problem:
            newest = newest_run(self.runs)
            if newest is not None:
                warnings.warn(TLWarning(f"{problem}; using the newest readable run, {newest.dir.name}"), stacklevel=2)
                return newest.dir
        raise RunError(
            f"no trained model in workspace {self.root}" + (f" ({problem})" if problem else ""),
            hint="train one with `tl extract DATA_DIR` (or `tl finetune`), or pass --model RUN_DIR",
        )


# What `workspace=` accepts across the library: a Workspace, its folder, or None for the default
# (`.tl/` here, or TL_WORKSPACE). Resolved by `Workspace.open`.
WorkspaceLike = Workspace | str | os.PathLike | None
