"""A run folder held by the one process training into it.

Two `tl finetune --resume` on the same run would both train and overwrite each other's
checkpoints. The trainer holds an advisory lock on `<run>/.lock` for as long as it writes the
folder (released by the kernel if the process dies); a second one fails at once, naming the
holder, as `tl extract` does for a feature cache (features/cache.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tl_cli.errors import WorkspaceError
from tl_cli.runtime.atomic import raise_write_error
from tl_cli.runtime.locks import try_lock_fd

LOCK = ".lock"  # hidden: `tl info` lists a run's files without it


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process while the block runs.

    Raises:
        WorkspaceError: another live process holds it ("in use by pid N").
    """
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise_write_error(exc, path)
    try:
        if not try_lock_fd(fd):
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise WorkspaceError(f"the run {run_dir} is in use by {holder}",
                                 hint="wait for the other `tl finetune` to finish (or stop it), then resume")
        # The holder's pid, for the message above; never the lock itself (the lock is the flock).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the lock
