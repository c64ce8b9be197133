"""The one-line warnings other commands print: a cheap look at the cache for leakage and copies.

`tl extract` calls `quick_check` on the features it just cached; `tl finetune`/`tl retrain` call
`run_leak_note` at the end of a run, which reads whatever feature cache of the dataset the
workspace holds (or, with none, compares file hashes: exact copies only). Both only say how much
leaks and how to fix it; `tl check` shows which images.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import numpy as np

from tl_cli.check import NEAR_THRESHOLD
from tl_cli.check.neighbours import normalize

BLOCK = 2048
# The folder is shell-quoted so the command can be pasted as printed (spaces, quotes in paths).
FIX = ("run `tl check {root}` to see them; train with --groups <its groups.json> (or --group-pattern REGEX) "
       "to keep copies on one side")


def leaked_val_count(features: np.ndarray, splits: np.ndarray, threshold: float = NEAR_THRESHOLD) -> int:
    """Validation images whose nearest training image has cosine similarity >= threshold."""
    val, train = splits == "val", splits == "train"
    if not val.any() or not train.any():
        return 0
    x = normalize(features)
    xv, xt = x[val], x[train]
    leaked = 0
    for a in range(0, len(xv), BLOCK):
        leaked += int(((xv[a:a + BLOCK] @ xt.T).max(1) >= threshold).sum())
    return leaked


def quick_check(features: np.ndarray, splits: np.ndarray, labels: np.ndarray, root: Path,
                threshold: float | None = NEAR_THRESHOLD) -> str | None:
    """One line when the cached features show train/val leakage or exact duplicates, else None.

    Exact duplicates here are images with identical features (identical pixels after
    preprocessing): free to find by hashing the rows. `threshold` None counts only those as
    leakage (the near-duplicate threshold is calibrated for the default backbone only).
    """
    feats = np.ascontiguousarray(features, dtype=np.float32)
    splits = np.asarray(splits)
    keys = [hashlib.sha1(row.tobytes()).digest() for row in feats]
    dups = len(keys) - len(set(keys))
    if threshold is not None:
        leaked = leaked_val_count(feats, splits, threshold)
    else:
        train = {k for k, s in zip(keys, splits) if s == "train"}
        leaked = sum(1 for k, s in zip(keys, splits) if s == "val" and k in train)
    n_val = int((splits == "val").sum())
    parts = []
    if leaked:
        parts.append(f"{leaked} of {n_val} validation images ({leaked / n_val:.0%}) have a copy or near-copy in training")
    if dups:
        parts.append(f"{dups} image(s) are exact duplicates of others")
    if not parts:
        return None
    return "; ".join(parts) + ": " + FIX.format(root=shlex.quote(str(root)))


def _cached_features(ws, root: Path, relpaths: list[str]) -> np.ndarray | None:
    """Features of `relpaths` from a cache of `root` by the default backbone (the one the near-copy
    threshold is calibrated for) in the workspace, if one holds them all."""
    import h5py

    from tl_cli.backbones import DEFAULT_BACKBONE

    for key_file in sorted(ws.caches.glob("*/key.json")):
        try:
            key = json.loads(key_file.read_text())
            if key.get("dataset_root") != str(root) or key.get("backbone") != DEFAULT_BACKBONE:
                continue
            with h5py.File(key_file.parent / "features.h5", "r") as f:
                rel = [r.decode() if isinstance(r, bytes) else r for r in f["relpath"][:]]
                pos = {r: i for i, r in enumerate(rel)}
                if all(r in pos for r in relpaths):
                    data = f["features"][:]
                    return np.asarray(data[[pos[r] for r in relpaths]], dtype=np.float32)
        except (OSError, ValueError, KeyError):
            continue
    return None


def run_leak_note(ws, run_dir: Path) -> str | None:
    """After a fine-tuning run: one line saying how much of its validation split leaks, or None."""
    from tl_cli.data.scan import scan_dataset
    from tl_cli.runs.meta import read_meta

    try:
        meta = read_meta(Path(run_dir) / "meta.json")
        root = Path(meta.dataset.root)
        ds = scan_dataset(root, meta.val_fraction, grouping=meta.grouping)
    except Exception:  # noqa: BLE001 - a hint must never break a finished run
        return None
    rel = [s.relpath for s in ds.samples]
    splits = np.array([s.split for s in ds.samples])
    n_val = int((splits == "val").sum())
    feats = _cached_features(ws, ds.root, rel)
    if feats is not None:
        leaked = leaked_val_count(feats, splits)
    else:  # no features: exact copies only, by file hash
        sha = [hashlib.sha256((ds.root / r).read_bytes()).hexdigest() for r in rel]
        train = {h for h, s in zip(sha, splits) if s == "train"}
        leaked = sum(1 for h, s in zip(sha, splits) if s == "val" and h in train)
    if not leaked or not n_val:
        return None
    return (f"the validation split leaks: {leaked} of {n_val} validation images ({leaked / n_val:.0%}) have a copy "
            f"in training, so the validation accuracy is optimistic; " + FIX.format(root=shlex.quote(str(ds.root))))
