"""Advisory file locks between processes (fcntl.flock; released by the kernel when a process dies).

Used where two processes may produce the same file at once (an ONNX export, a download): the
lock decides who does the work, and tells a later run which temporaries belong to a dead process.
On systems without fcntl the locks are no-ops; atomic renames still keep every file whole.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

from tl_cli.runtime.atomic import TMP_PREFIX, raise_write_error


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed, never deleted: deleting a lock file
    while another process waits on it would let a third one lock a new file beside them)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise_write_error(exc, path)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def try_lock_fd(fd: int) -> bool:
    """Take an exclusive lock on an open file without waiting; False if another process holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def remove_unlocked_temporaries(folder: str | os.PathLike, name: str) -> int:
    """Delete `.tmp-<name>.*` files in `folder` that no live process holds locked; returns how many.

    A writer locks its temporary for as long as it writes it, so an unlocked one was left by a
    process that was killed.
    """
    if fcntl is None:  # no locks to tell a live writer from a dead one: leave them all
        return 0
    n = 0
    for p in Path(folder).glob(TMP_PREFIX + name + ".*"):
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            if try_lock_fd(fd):
                p.unlink(missing_ok=True)
                n += 1
        finally:
            os.close(fd)
    return n
