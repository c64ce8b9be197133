"""One read of each image: hash of its bytes, hash of its decoded pixels, size, and how uniform it is.

Decoding is the slow part of a check (the features are already cached), so the results are kept
in the workspace (`checks/stats-<key>.json`), keyed by each file's path, size and mtime like the
feature cache: a second check of the same data decodes nothing.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tl_cli.runtime.atomic import write_json

STATS_VERSION = 2


@dataclass(frozen=True)
class ImageStats:
    """What one read of an image tells. `pixels` is "" when the file could not be decoded."""

    bytes_sha: str
    pixels_sha: str
    width: int
    height: int
    gray_std: float  # std of the grey levels (0-255) of a 64x64 thumbnail: ~0 for a blank image
    dhash: tuple[int, ...] = ()  # check/thumbhash.py: 8 dHashes (one per rotation/flip)


def read_stats(path: Path) -> ImageStats:
    """Hash, size and uniformity of the image at `path` (one decode)."""
    from PIL import Image

    data = path.read_bytes()
    bsha = hashlib.sha256(data).hexdigest()
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            w, h = im.size
            # Same pixels in another container (PNG of a JPEG's decode, stripped metadata) hash the same.
            psha = hashlib.sha256(f"{w}x{h}".encode() + im.tobytes()).hexdigest()
            import numpy as np

            from tl_cli.check.thumbhash import dihedral_hashes

            grey = im.convert("L").resize((64, 64))
            g = np.asarray(grey, dtype=np.float32)
            std = float(g.std())
            dh = tuple(dihedral_hashes(np.asarray(grey.resize((9, 9), resample=3), dtype=np.float32)))
    except Exception:  # noqa: BLE001 - an unreadable image is reported by extraction, not here
        return ImageStats(bsha, "", 0, 0, 0.0)
    return ImageStats(bsha, psha, w, h, std, dh)


def _stats_file(checks_dir: Path, root: Path) -> Path:
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return checks_dir / f"stats-{key}.json"


def collect_stats(root: Path, relpaths: list[str], checks_dir: Path, threads: int = 4,
                  advance=None) -> list[ImageStats]:
    """ImageStats for each of `relpaths` (under `root`), reusing and updating the workspace's copy.

    `advance(n)` is called as images are read (progress).
    """
    path = _stats_file(checks_dir, root)
    try:
        saved = json.loads(path.read_text())
        rows = saved["rows"] if saved.get("version") == STATS_VERSION else {}
    except (OSError, ValueError, KeyError):
        rows = {}
    out: dict[str, ImageStats] = {}
    todo = []
    for rel in relpaths:
        st = (root / rel).stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        row = rows.get(rel)
        if row is not None and row.get("stamp") == stamp:
            out[rel] = ImageStats(**{**row["stats"], "dhash": tuple(row["stats"]["dhash"])})
        else:
            todo.append((rel, stamp))
    if todo:
        with ThreadPoolExecutor(max(1, threads)) as pool:  # Pillow decodes outside the GIL
            for (rel, stamp), stats in zip(todo, pool.map(lambda t: read_stats(root / t[0]), todo)):
                out[rel] = stats
                rows[rel] = {"stamp": stamp, "stats": asdict(stats)}
                if advance:
                    advance(1)
        checks_dir.mkdir(parents=True, exist_ok=True)
        keep = set(relpaths)
        write_json(path, {"version": STATS_VERSION, "root": str(root),
                          "rows": {r: v for r, v in rows.items() if r in keep}})
    return [out[r] for r in relpaths]
