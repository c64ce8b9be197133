"""Nearest neighbours by cosine similarity of the cached features, in row blocks.

One pass over (block x N) products of L2-normalised float32 features gives both what the
duplicate search needs (every pair above a threshold) and what the outlier score needs (each
image's k nearest neighbours). A block of 1,024 rows against 10,000 images is 40 MB; the whole
10,000 x 10,000 x 1,280 product is ~256 GFLOP of BLAS sgemm, a few seconds on two cores
(measured in the README). faiss would not change the order: an exact search does the same products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 2048


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


@dataclass
class Neighbours:
    """Result of `search`.

    pairs_i, pairs_j, pairs_sim: every pair i < j with similarity >= threshold.
    knn_index, knn_sim: (N, k) nearest other images of each row, most similar first.
    """

    pairs_i: np.ndarray
    pairs_j: np.ndarray
    pairs_sim: np.ndarray
    knn_index: np.ndarray
    knn_sim: np.ndarray


def search(features: np.ndarray, threshold: float, k: int = 5, block: int = BLOCK) -> Neighbours:
    """All pairs with cosine similarity >= `threshold`, and the `k` nearest neighbours of each row.

    Args:
        features: (N, D) features (any scale; they are normalised here).
        threshold: cosine similarity in [-1, 1] above which a pair is returned.
        k: neighbours per row (fewer when N - 1 < k).

    Example:
        >>> nb = search(feats, 0.92)
        >>> list(zip(nb.pairs_i, nb.pairs_j))   # near-duplicate pairs
    """
    x = normalize(features)
    n = len(x)
    k = max(0, min(k, n - 1))
    pi, pj, ps = [], [], []
    knn_i = np.full((n, k), -1, dtype=np.int64)
    knn_s = np.full((n, k), -np.inf, dtype=np.float32)
    # Only blocks on and above the diagonal are computed (half the products); each serves its rows
    # directly and its columns through the transpose, since similarity is symmetric.
    for a in range(0, n, block):
        b = min(n, a + block)
        for c0 in range(a, n, block):
            c1 = min(n, c0 + block)
            sim = x[a:b] @ x[c0:c1].T  # (rows, cols)
            if c0 == a:
                np.fill_diagonal(sim, -np.inf)  # an image is not its own neighbour
            r, c = np.nonzero(sim >= threshold)
            keep = (c + c0) > (r + a)  # each pair once, i < j
            pi.append(r[keep] + a)
            pj.append(c[keep] + c0)
            ps.append(sim[r[keep], c[keep]])
            if k:
                _merge_topk(knn_i, knn_s, a, sim, c0, k)
                if c0 != a:
                    _merge_topk(knn_i, knn_s, c0, sim.T, a, k)
    cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt))  # noqa: E731
    return Neighbours(cat(pi, np.int64), cat(pj, np.int64), cat(ps, np.float32), knn_i, knn_s)


def _merge_topk(knn_i: np.ndarray, knn_s: np.ndarray, row0: int, sim: np.ndarray, col0: int, k: int) -> None:
    """Merge the k best of each row of `sim` (rows row0.., columns col0..) into the running top-k.

    k rounds of argmax (then masked) instead of argpartition: for k << columns it reads the
    block k times and sorts nothing (measured ~8x faster than argpartition for k=5, 10,000 columns).
    """
    rows = np.arange(sim.shape[0])
    work = sim.copy()
    cand_i = np.empty((sim.shape[0], k), dtype=np.int64)
    cand_s = np.empty((sim.shape[0], k), dtype=np.float32)
    for t in range(min(k, sim.shape[1])):
        j = work.argmax(1)
        cand_i[:, t] = j + col0
        cand_s[:, t] = work[rows, j]
        work[rows, j] = -np.inf
    t = min(k, sim.shape[1])
    sl = slice(row0, row0 + sim.shape[0])
    all_i = np.concatenate([knn_i[sl], cand_i[:, :t]], axis=1)
    all_s = np.concatenate([knn_s[sl], cand_s[:, :t]], axis=1)
    order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
    knn_i[sl] = np.take_along_axis(all_i, order, axis=1)
    knn_s[sl] = np.take_along_axis(all_s, order, axis=1)
