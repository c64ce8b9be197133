"""Atomic writes: a reader sees the old file or the new one, never half of one.

Write to a temporary file in the destination folder (same filesystem, so the rename is atomic),
flush, fsync, then `os.replace`. Temporary names start with `.tmp-` so a later run can find and
remove leftovers of a killed process.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tl_cli.errors import WorkspaceError

TMP_PREFIX = ".tmp-"


def raise_write_error(exc: OSError, path: Path) -> None:
    """Re-raise a failed write as a WorkspaceError when it is the user's to fix (disk full, read-only)."""
    # HDF5 reports some write failures with the C library's message but no errno.
    if exc.errno == errno.ENOSPC or "No space left on device" in str(exc):
        raise WorkspaceError(f"disk full while writing {path}", hint="free some space and run again") from exc
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        raise WorkspaceError(
            f"cannot write {path}: {exc.strerror}",
            hint="choose a writable workspace with --workspace or TL_WORKSPACE",
        ) from exc
    raise exc


def _umask() -> int:
    # The only way to read the umask is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    The caller writes the temporary file however it likes (h5py, safetensors, ...). On any
    exception the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", suffix=suffix, dir=path.parent)
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 minus umask).
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
    except OSError as exc:
        raise_write_error(exc, path)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            # Again after writing: some writers (safetensors) replace the file with one of their
            # own, private (0600), which would leave a run's weights unreadable to the group.
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise_write_error(exc, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace `path` with `text` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success its files are fsynced and it becomes `path`.

    Readers see the whole folder or none of it. An existing folder at `path` is replaced
    (moved aside first, removed after the new one is in place). On any exception the temporary
    folder is removed and `path` is untouched.
    """
    import shutil

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); a result folder should not be
    except OSError as exc:
        raise_write_error(exc, path)
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + path.name + ".old.", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_write_error(exc, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete `.tmp-*` files left in `folder` by a killed process; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.glob(TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n
