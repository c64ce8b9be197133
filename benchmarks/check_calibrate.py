"""Calibrate `tl check`'s near-duplicate threshold: cosine similarity of the default backbone's
features between photos and their edited copies, against distinct photos of the same class.

    TL_WORKSPACE=/tmp/chk/ws python benchmarks/check_calibrate.py /tmp/chk/calib /work/shared/data/catsdogs [flowers]

(calib/ from benchmarks/check_data.py; the features come from the workspace's cache.)
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np

from tl_cli.check.neighbours import normalize
from tl_cli.features.extract import ExtractConfig, extract_features
from tl_cli.runtime.progress import Reporter


def features(path):
    ex = extract_features(path, ExtractConfig(), reporter=Reporter())
    return ex.relpaths, normalize(ex.features), ex.labels


def main(calib: str, *distinct: str) -> None:
    rel, x, _ = features(calib)
    idx = {r: i for i, r in enumerate(rel)}
    by_edit = defaultdict(list)
    for r, i in idx.items():
        if "__" in r:
            stem, edit = r.rsplit("__", 1)
            by_edit[edit[:-4]].append(float(x[i] @ x[idx[stem + ".jpg"]]))
    ts = (0.85, 0.88, 0.90, 0.92, 0.95)
    print("| edit | n | min | 5th pct | median | " + " | ".join(f"found at {t}" for t in ts) + " |")
    for edit, s in sorted(by_edit.items()):
        s = np.array(s)
        print(f"| {edit} | {len(s)} | {s.min():.3f} | {np.percentile(s, 5):.3f} | {np.median(s):.3f} | "
              + " | ".join(f"{(s >= t).mean():.0%}" for t in ts) + " |")
    for d in distinct:
        rel, x, y = features(d)
        best = []
        for c in np.unique(y):
            xc = x[y == c]
            s = xc @ xc.T
            np.fill_diagonal(s, -1)
            best.append(s.max(1))
        best = np.concatenate(best)
        qs = np.percentile(best, [50, 99, 99.9])
        print(f"| {d} distinct | {len(best)} | | | {np.median(best):.3f} | "
              + " | ".join(f"{(best >= t).mean():.1%} flagged" for t in ts) + " |")
        print(f"{d}: nearest other photo of the same class, n={len(best)}: median {qs[0]:.3f}, 99th pct {qs[1]:.3f}, "
              f"99.9th {qs[2]:.3f}, max {best.max():.3f}; above 0.90: {(best >= 0.90).sum()}, 0.92: "
              f"{(best >= 0.92).sum()}, 0.95: {(best >= 0.95).sum()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
