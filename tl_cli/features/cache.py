"""The HDF5 feature cache: content-addressed, incremental, crash-safe.

Layout in the workspace:
    caches/<key>/features.h5        consolidated rows: features, relpath, size, mtime_ns
    caches/<key>/pending/chunk-<n>.h5  chunks written during an extraction that has not finished,
                                    numbered in write order (later chunks win for the same file)
    caches/<key>/lock               held (flock) by the process extracting into this cache

`key` hashes everything that changes what a feature means: backbone, weights digest,
preprocessing, feature dtype, dataset root and the cache format. Within a cache a row is reused
only if the file's relative path, size and modification time all still match. Every file is
written under a temporary name and renamed into place, so a killed process leaves either the
old file or the new one; chunks already written by a killed run are picked up by the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tl_cli.data.scan import is_safe_relpath
from tl_cli.errors import CacheError
from tl_cli.runtime.atomic import atomic_path, raise_write_error, remove_stale_temporaries, write_json

FORMAT_VERSION = 2
_CHUNK = re.compile(r"^chunk-(\d{10})\.h5$")  # numbered names; older versions used random (uuid) names


@dataclass(frozen=True)
class FileStat:
    relpath: str
    size: int
    mtime_ns: int


def stat_files(root: Path, relpaths: Iterable[str]) -> list[FileStat]:
    out = []
    for rel in relpaths:
        st = (root / rel).stat()
        out.append(FileStat(rel, st.st_size, st.st_mtime_ns))
    return out


def cache_key(info: dict) -> str:
    """Stable 16-hex-char key of the cache's identity (a JSON-able dict)."""
    blob = json.dumps({"format": FORMAT_VERSION, **info}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dataset_fingerprint(key: str, stats: list[FileStat]) -> str:
    """Fingerprint of (cache identity, every file's path, size and mtime): names the exact data a run saw."""
    h = hashlib.sha256(key.encode())
    for s in sorted(stats, key=lambda s: s.relpath):
        h.update(f"{s.relpath}\0{s.size}\0{s.mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class FeatureCache:
    """One cache folder. Use as a context manager to hold its lock while writing.

    Example:
        >>> with FeatureCache(ws.caches, info) as cache:
        ...     hits = cache.lookup(stats)
        ...     cache.write_chunk(new_stats, new_features)
        ...     cache.consolidate(stats)
    """

    def __init__(self, caches_dir: Path, info: dict, dtype: str = "float32"):
        self.info = dict(info, dtype=dtype)
        self.key = cache_key(self.info)
        self.dir = Path(caches_dir) / self.key
        self.main = self.dir / "features.h5"
        self.pending = self.dir / "pending"
        self.dtype = np.dtype(dtype)
        self._lock_fh = None
        self.rebuilt_reason: str | None = None  # set when an unreadable cache was discarded
        self._rows: dict[str, tuple[FileStat, Path, int]] = {}

    # -- locking ---------------------------------------------------------------------------
    def __enter__(self) -> FeatureCache:
        try:
            self.pending.mkdir(parents=True, exist_ok=True)
            fh = open(self.dir / "lock", "a+")
        except OSError as exc:
            raise_write_error(exc, self.dir / "lock")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise CacheError(
                f"the feature cache {self.dir} is in use by {holder}",
                hint="wait for the other tl command using it (extract, check, finetune or suggest) to finish, "
                     "or use another --workspace",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._lock_fh = fh
        # Only the lock holder may delete temporaries: they belong to a process that died.
        remove_stale_temporaries(self.dir)
        remove_stale_temporaries(self.pending)
        if not (self.dir / "key.json").exists():
            write_json(self.dir / "key.json", {"key": self.key, **self.info})
        self._load_index()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_fh is not None:
            with contextlib.suppress(OSError):
                self._lock_fh.truncate(0)
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # -- reading ---------------------------------------------------------------------------
    def _read_file_index(self, path: Path) -> list[tuple[FileStat, int]]:
        import h5py

        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise CacheError(f"{path.name}: cache format {version}, expected {FORMAT_VERSION}")
            feats = f["features"]
            if feats.shape[1:] != (self.info["feature_dim"],):
                raise CacheError(f"{path.name}: feature width {feats.shape[1:]} != {self.info['feature_dim']}")
            rel = [r.decode() if isinstance(r, bytes) else r for r in f["relpath"][:]]
            unsafe = next((r for r in rel if not is_safe_relpath(r)), None)
            if unsafe is not None:
                raise CacheError(f"{path.name}: stored path {unsafe!r} is not inside the dataset folder")
            size, mtime = f["size"][:], f["mtime_ns"][:]
            if not (len(rel) == len(size) == len(mtime) == feats.shape[0]):
                raise CacheError(f"{path.name}: datasets of different lengths")
        return [(FileStat(r, int(s), int(m)), i) for i, (r, s, m) in enumerate(zip(rel, size, mtime))]

    def _load_index(self) -> None:
        """Index every readable row; unreadable files are deleted and reported (then rebuilt)."""
        self._rows = {}
        sources = ([self.main] if self.main.exists() else []) + self._chunks()
        for path in sources:  # later chunks override earlier rows for the same file
            try:
                for stat, i in self._read_file_index(path):
                    self._rows[stat.relpath] = (stat, path, i)
            except (OSError, KeyError, ValueError, CacheError) as exc:
                self.rebuilt_reason = f"{path.name} was unreadable ({exc}); it was discarded and is rebuilt"
                path.unlink(missing_ok=True)

    def _chunks(self) -> list[Path]:
        """Pending chunks in write order: a later chunk's row for a file replaces an earlier one's.

        Numbered chunks by number; chunks named by uuid (written by older versions, before any
        numbered one) first, by modification time.
        """
        # Temporaries of a write in progress start with atomic.TMP_PREFIX, so "chunk-*" never matches them.
        def order(p: Path) -> tuple:
            m = _CHUNK.match(p.name)
            return (1, int(m.group(1)), 0) if m else (0, 0, p.stat().st_mtime_ns)

        return sorted(self.pending.glob("chunk-*.h5"), key=order)

    def _next_chunk(self) -> Path:
        """The name of the next chunk: one above the highest number (the lock makes this the only writer)."""
        numbers = [int(m.group(1)) for p in self.pending.glob("chunk-*.h5") if (m := _CHUNK.match(p.name))]
        return self.pending / f"chunk-{max(numbers, default=0) + 1:010d}.h5"

    def lookup(self, stats: list[FileStat]) -> set[str]:
        """Relative paths whose cached row is still valid (same size and mtime)."""
        return {s.relpath for s in stats if s.relpath in self._rows and self._rows[s.relpath][0] == s}

    def read(self, relpaths: list[str]) -> np.ndarray:
        """Features for `relpaths`, in that order, as float32 (N, D)."""
        import h5py

        out = np.empty((len(relpaths), self.info["feature_dim"]), dtype=np.float32)
        by_file: dict[Path, list[tuple[int, int]]] = {}
        for j, rel in enumerate(relpaths):
            _, path, i = self._rows[rel]
            by_file.setdefault(path, []).append((j, i))
        for path, pairs in by_file.items():
            with h5py.File(path, "r") as f:
                data = f["features"][:]  # one contiguous read beats many fancy-indexed ones
            js, iis = zip(*pairs)
            out[list(js)] = data[list(iis)]
        return out

    # -- writing ---------------------------------------------------------------------------
    def _write(self, path: Path, stats: list[FileStat], feats: np.ndarray) -> None:
        import h5py

        with atomic_path(path, suffix=".h5") as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["key"] = self.key
                f.create_dataset("features", data=feats.astype(self.dtype, copy=False))
                f.create_dataset("relpath", data=[s.relpath for s in stats], dtype=h5py.string_dtype())
                f.create_dataset("size", data=np.array([s.size for s in stats], dtype=np.int64))
                f.create_dataset("mtime_ns", data=np.array([s.mtime_ns for s in stats], dtype=np.int64))

    def write_chunk(self, stats: list[FileStat], feats: np.ndarray) -> None:
        """Persist freshly extracted rows now, so a killed run keeps them."""
        if not stats:
            return
        path = self._next_chunk()
        self._write(path, stats, feats)
        for i, s in enumerate(stats):
            self._rows[s.relpath] = (s, path, i)

    def consolidate(self, stats: list[FileStat]) -> None:
        """Rewrite features.h5 with exactly the rows of `stats` (all must be cached), drop chunks."""
        chunks = self._chunks()
        rels = [s.relpath for s in stats]
        main_ok = self.main.exists() and not chunks and all(self._rows[r][1] == self.main for r in rels)
        if main_ok and len(self._rows) == len(rels):
            return  # nothing new and nothing stale: leave the file alone
        feats = self.read(rels)
        self._write(self.main, stats, feats)
        for c in chunks:
            c.unlink(missing_ok=True)
        self._load_index()
