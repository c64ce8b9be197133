"""Likely label errors: out-of-fold probabilities from the softmax head, then confident learning.

1. k-fold cross-validation of the head (head/softmax.py) on the cached features: every image is
   scored by a head that never saw it, so a mislabelled image cannot be memorised.
2. Confident learning (Northcutt, Jiang & Chuang, JAIR 2021, as cleanlab's
   `compute_confident_joint` and `find_label_issues(filter_by="prune_by_noise_rate")`):
   - the threshold of class j is the mean probability of j over the images labelled j;
   - an image is *confidently* of class j when p_j reaches that threshold (the highest such j);
     counting given vs confident class gives the confident joint C (K x K), calibrated so each
     row sums to the class's size; C[i, j] / N estimates the share labelled i that is really j;
   - for every i != j, the round(C[i, j]) images labelled i with the largest margin p_j - p_i
     are flagged; an image the model predicts as its given label is never flagged.
3. Ranked by normalised margin p_given - max_{k != given} p_k, most negative (the model most
   confidently disagrees) first; the suggested label is that other class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tl_cli.head.softmax import HeadConfig, softmax, train_head


@dataclass
class LabelIssue:
    index: int
    given: int
    suggested: int
    confidence: float  # out-of-fold probability of the suggested class
    given_probability: float
    margin: float  # p_given - p_suggested (negative: the model prefers the suggestion)


def fold_ids(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Stratified fold index of each image (every class spread evenly over the folds), deterministic."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out[rng.permutation(idx)] = np.arange(len(idx)) % folds
    return out


def out_of_fold_probs(features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int = 5,
                      cfg: HeadConfig | None = None, seed: int = 0) -> np.ndarray:
    """(N, K) probabilities, each row from a head trained on the other folds.

    Without a validation set each fold's head uses the middle of the L2 grid (head/softmax.py);
    picking the L2 on held-out data here would need a nested split for little gain.
    """
    fid = fold_ids(labels, folds, seed)
    probs = np.zeros((len(labels), n_classes), dtype=np.float32)
    for f in range(folds):
        test = fid == f
        if not test.any():
            continue
        head = train_head(features[~test], labels[~test], None, None, n_classes, cfg or HeadConfig())
        probs[test] = softmax(head.logits(features[test]))
    return probs


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The calibrated confident joint (K x K float, rows = given label) and the per-class thresholds."""
    k = probs.shape[1]
    thresholds = np.array([probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(k)])
    above = probs >= thresholds - 1e-6
    masked = np.where(above, probs, -1.0)
    confident = masked.argmax(1)
    has = above.any(1)
    cj = np.zeros((k, k), dtype=np.float64)
    np.add.at(cj, (labels[has], confident[has]), 1)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    rows = cj.sum(1, keepdims=True)
    cj = np.divide(cj, rows, out=np.zeros_like(cj), where=rows > 0) * counts[:, None]
    return cj, thresholds


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> list[LabelIssue]:
    """Likely label errors among images with given `labels` and out-of-fold `probs`, ranked."""
    labels = np.asarray(labels, dtype=np.int64)
    n, k = probs.shape
    cj, _ = confident_joint(labels, probs)
    pred = probs.argmax(1)
    flagged = np.zeros(n, dtype=bool)
    for i in range(k):
        idx = np.flatnonzero(labels == i)
        for j in range(k):
            if i == j:
                continue
            num = round(cj[i, j])
            if num <= 0:
                continue
            margin = probs[idx, j] - probs[idx, i]
            flagged[idx[np.argsort(-margin, kind="stable")[:num]]] = True
    flagged &= pred != labels  # the model agrees with the given label: not an issue
    # The one image of a class was held out from every head that scored it: it gets probability 0
    # for its own label whatever it shows, which is no evidence that the label is wrong.
    flagged &= np.bincount(labels, minlength=k)[labels] >= 2
    out = []
    for i in np.flatnonzero(flagged):
        other = probs[i].copy()
        other[labels[i]] = -1.0
        s = int(other.argmax())
        out.append(LabelIssue(int(i), int(labels[i]), s, float(probs[i, s]), float(probs[i, labels[i]]),
                              float(probs[i, labels[i]] - probs[i, s])))
    return sorted(out, key=lambda t: (t.margin, t.index))
