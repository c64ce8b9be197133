"""Images that do not belong among the others, and the balance of the classes.

- far: the mean similarity to an image's k nearest neighbours (duplicates excluded, as a copy
  would make any image look at home) is below Tukey's far-out fence of the dataset's own scores
  (Q1 - 3 IQR): no threshold that depends on the backbone.
- tiny: shorter side under max(32 px, a quarter of the dataset's median shorter side).
- aspect: longer side more than 3x the shorter one (banners, strips, panoramas).
- uniform: grey-level std of a 64x64 thumbnail under 4 (of 255): blank, black or one-colour images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_SIDE_PX = 32
MAX_ASPECT = 3.0
UNIFORM_STD = 4.0
FENCE_IQR = 3.0
IMBALANCE_SEVERE = 10.0  # largest / smallest class
IMBALANCE_NOTE = 3.0
SMALL_CLASS = 10


@dataclass
class Outlier:
    index: int
    reasons: list[str]
    score: float  # mean cosine similarity to the nearest neighbours (lower = farther from everything)


def find_outliers(knn_sim: np.ndarray, knn_index: np.ndarray, dup_of: dict[int, set[int]], widths, heights,
                  gray_std) -> list[Outlier]:
    """Outliers, farthest first. `dup_of[i]`: indices in i's duplicate group (ignored as neighbours)."""
    n = len(knn_sim)
    score = np.zeros(n, dtype=np.float32)
    for i in range(n):
        others = [s for j, s in zip(knn_index[i], knn_sim[i]) if j >= 0 and int(j) not in dup_of.get(i, ())]
        score[i] = float(np.mean(others)) if others else float(knn_sim[i].mean()) if knn_sim.shape[1] else 1.0
    reasons: dict[int, list[str]] = {}
    if n >= 20:  # a fence needs a distribution
        q1, q3 = np.percentile(score, [25, 75])
        fence = q1 - FENCE_IQR * (q3 - q1)
        for i in np.flatnonzero(score < fence):
            reasons.setdefault(int(i), []).append(f"far from every class (neighbour similarity {score[i]:.2f} < {fence:.2f})")
    w, h = np.asarray(widths), np.asarray(heights)
    short, long_ = np.minimum(w, h), np.maximum(w, h)
    ok = short > 0
    tiny = max(MIN_SIDE_PX, float(np.median(short[ok])) / 4) if ok.any() else MIN_SIDE_PX
    for i in np.flatnonzero(ok & (short < tiny)):
        reasons.setdefault(int(i), []).append(f"tiny ({w[i]}x{h[i]} px)")
    for i in np.flatnonzero(ok & (long_ > MAX_ASPECT * np.maximum(short, 1))):
        reasons.setdefault(int(i), []).append(f"extreme aspect ratio ({w[i]}x{h[i]})")
    for i in np.flatnonzero(ok & (np.asarray(gray_std) < UNIFORM_STD)):
        reasons.setdefault(int(i), []).append(f"near-uniform (grey std {gray_std[i]:.1f})")
    out = [Outlier(i, r, float(score[i])) for i, r in reasons.items()]
    return sorted(out, key=lambda o: (o.score, o.index))


def class_balance(classes: list[str], labels: np.ndarray, splits: np.ndarray) -> tuple[list[dict], str | None]:
    """Per-class counts (total, train, val, share) and a warning when the imbalance is severe."""
    rows = []
    n = max(1, len(labels))
    for c, name in enumerate(classes):
        m = labels == c
        rows.append({"class": name, "count": int(m.sum()), "train": int((m & (splits == "train")).sum()),
                     "val": int((m & (splits == "val")).sum()), "share": round(float(m.sum()) / n, 4)})
    counts = [r["count"] for r in rows]
    small, big = min(counts), max(counts)
    warning = None
    if small == 0 or big / small >= IMBALANCE_SEVERE:
        name = rows[counts.index(small)]["class"]
        warning = (f"severe class imbalance: {name} has {small} images, the largest class {big}; "
                   "consider more images of it, or --balanced (tl extract) to weight classes")
    elif small < SMALL_CLASS:  # balanced, but too few to learn or to validate a class reliably
        name = rows[counts.index(small)]["class"]
        warning = (f"few images: {name} has {small}, under {SMALL_CLASS}; "
                   "a class needs tens of images for a reliable classifier")
    elif big / small >= IMBALANCE_NOTE:
        name = rows[counts.index(small)]["class"]
        warning = f"class imbalance: {name} has {small} images, the largest class {big} ({big / small:.1f}x)"
    return rows, warning
