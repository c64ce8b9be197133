"""`tl check DATA` end to end: fill (or reuse) the feature cache, then look for what is wrong.

Reads DATA, never writes into it: everything it finds is reported (terminal, check.json, CSVs,
report.html, groups.json in the workspace) for a person to act on.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tl_cli.check import NEAR_THRESHOLD
from tl_cli.check.duplicates import Group, find_duplicates, leaked_val
from tl_cli.check.imagestats import ImageStats, collect_stats
from tl_cli.check.label_issues import LabelIssue, find_label_issues, out_of_fold_probs
from tl_cli.check.neighbours import normalize, search
from tl_cli.check.outliers import Outlier, class_balance, find_outliers
from tl_cli.check.thumbhash import MIN_CONTRAST, MIN_FEATURE_SIM, rotated_pairs
from tl_cli.errors import ConfigError, TLWarning
from tl_cli.features.extract import ExtractConfig, ExtractResult, extract_features
from tl_cli.runs.workspace import Workspace, WorkspaceLike
from tl_cli.runtime.fields import check_field_types
from tl_cli.runtime.progress import Reporter

WEAK_HEAD = 0.9  # out-of-fold accuracy under which label issues come with a caveat


@dataclass(frozen=True)
class CheckConfig:
    """What `tl check` looks for and how.

    Attributes:
        extract: how the features are made (backbone, split, ...), as `tl extract`.
        near_threshold: cosine similarity of features at or above which two images are near duplicates.
        folds: cross-validation folds for the out-of-fold probabilities.
        neighbours: k of the k-nearest-neighbour outlier score.
    """

    extract: ExtractConfig = field(default_factory=ExtractConfig)
    near_threshold: float = NEAR_THRESHOLD
    folds: int = 5
    neighbours: int = 5

    def __post_init__(self) -> None:
        check_field_types(self)
        if not 0.0 < self.near_threshold <= 1.0:
            raise ConfigError(f"--near-threshold must be in (0, 1], got {self.near_threshold}")
        if self.folds < 2:
            raise ConfigError(f"--folds must be >= 2, got {self.folds}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckResult:
    root: Path
    classes: list[str]
    relpaths: list[str]
    labels: np.ndarray
    splits: np.ndarray
    probs: np.ndarray  # out-of-fold (N, K)
    stats: list[ImageStats]
    groups: list[Group]
    label_issues: list[LabelIssue]
    outliers: list[Outlier]
    balance: list[dict]
    balance_warning: str | None
    config: CheckConfig
    seconds: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)

    @property
    def leaked(self) -> set[str]:
        return leaked_val(self.groups)

    @property
    def oof_accuracy(self) -> float:
        """Accuracy of the out-of-fold predictions: how far the label check can be trusted."""
        return float((self.probs.argmax(1) == self.labels).mean()) if len(self.labels) else 0.0

    @property
    def label_note(self) -> str | None:
        """A caveat when the head itself is weak: then most disagreements are its mistakes, not label errors."""
        if self.oof_accuracy >= WEAK_HEAD or not self.label_issues:
            return None
        return (f"the head's out-of-fold accuracy is only {self.oof_accuracy:.0%}: many of the {len(self.label_issues)} "
                "label issues are its own mistakes; review them from the top (most confident first)")

    @property
    def n_val(self) -> int:
        return int((self.splits == "val").sum())

    def to_json(self) -> dict:
        """The four sections `--format json` prints and check.json holds."""
        cls = self.classes
        return {
            "duplicates": [g.to_dict() for g in self.groups],
            "label_issues": [{"path": self.relpaths[t.index], "split": str(self.splits[t.index]),
                              "given": cls[t.given], "suggested": cls[t.suggested],
                              "confidence": round(t.confidence, 4), "given_probability": round(t.given_probability, 4)}
                             for t in self.label_issues],
            "outliers": [{"path": self.relpaths[o.index], "split": str(self.splits[o.index]),
                          "class": cls[int(self.labels[o.index])], "reasons": o.reasons,
                          "neighbour_similarity": round(o.score, 4),
                          "width": self.stats[o.index].width, "height": self.stats[o.index].height}
                         for o in self.outliers],
            "classes": {"per_class": self.balance, "imbalance_warning": self.balance_warning},
        }

    def summary(self) -> dict:
        """Counts and settings (summary.json): what a script needs besides the lists."""
        g = self.groups
        return {
            "data_dir": str(self.root), "images": len(self.relpaths), "n_val": self.n_val,
            "exact_groups": sum(x.kind == "exact" for x in g), "near_groups": sum(x.kind == "near" for x in g),
            "conflicting_groups": sum(x.conflicting_labels for x in g), "leaking_groups": sum(x.leakage for x in g),
            "leaked_val_images": len(self.leaked), "label_issues": len(self.label_issues),
            "outliers": len(self.outliers), "imbalance_warning": self.balance_warning,
            "out_of_fold_accuracy": round(self.oof_accuracy, 4), "label_note": self.label_note,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()}, "config": self.config.to_dict(),
        }


def analyse(ex: ExtractResult, stats: list[ImageStats], cfg: CheckConfig) -> CheckResult:
    """Everything after the features and image stats are known (no file access): the testable core."""
    t0 = time.perf_counter()
    x = normalize(ex.features)
    nb = search(x, cfg.near_threshold, k=cfg.neighbours)
    t1 = time.perf_counter()
    classes = ex.dataset.classes
    usable = np.array([bool(s.dhash) and s.gray_std >= MIN_CONTRAST for s in stats], dtype=bool)
    ri, rj = rotated_pairs([list(s.dhash) or [0] * 8 for s in stats], usable)
    ok = (x[ri] * x[rj]).sum(1) >= MIN_FEATURE_SIM
    rot = (ri[ok], rj[ok])
    groups = find_duplicates(ex.relpaths, ex.labels, ex.splits, classes, [s.bytes_sha for s in stats],
                             [s.pixels_sha for s in stats], x, (nb.pairs_i, nb.pairs_j), rot)
    index = {r: i for i, r in enumerate(ex.relpaths)}
    dup_of: dict[int, set[int]] = {}
    for grp in groups:
        members = {index[m.path] for m in grp.members}
        for i in members:
            dup_of.setdefault(i, set()).update(members)
    t2 = time.perf_counter()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):  # as head/softmax.py: skinny matmuls, one thread is faster
        probs = out_of_fold_probs(ex.features, ex.labels, len(classes), cfg.folds)
    issues = find_label_issues(ex.labels, probs)
    t3 = time.perf_counter()
    outliers = find_outliers(nb.knn_sim, nb.knn_index, dup_of, [s.width for s in stats], [s.height for s in stats],
                             [s.gray_std for s in stats])
    balance, warning = class_balance(classes, ex.labels, ex.splits)
    seconds = {"neighbours": t1 - t0, "duplicates": t2 - t1, "label_issues": t3 - t2,
               "outliers": time.perf_counter() - t3}
    return CheckResult(ex.dataset.root, classes, ex.relpaths, ex.labels, ex.splits, probs, stats, groups, issues,
                       outliers, balance, warning, cfg, seconds, list(ex.failed))


def check_dataset(data_dir: str | os.PathLike, cfg: CheckConfig = CheckConfig(), workspace: WorkspaceLike = None,
                  reporter: Reporter | None = None) -> CheckResult:
    """Check the dataset at `data_dir` for duplicates, leakage, label errors, outliers and imbalance.

    Features come from the workspace's cache (extracted first where missing, as `tl extract
    --no-train` would); decoded-image statistics are cached beside it under checks/.

    Raises:
        DataError, ConfigError, WeightsNotFound, CacheError: as `tl extract`.

    Example:
        >>> r = check_dataset("photos")
        >>> [g.members[0].path for g in r.groups if g.leakage]
        ['cats/cat.12.jpg']
    """
    ws = Workspace.open(workspace)
    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    ex = extract_features(data_dir, cfg.extract, ws, reporter)
    for note in ex.notes:  # e.g. a damaged cache discarded and rebuilt: said, as `tl extract` says it
        warnings.warn(TLWarning(note), stacklevel=2)
    t1 = time.perf_counter()
    reporter.start("reading images", len(ex.relpaths))
    try:
        stats = collect_stats(ex.dataset.root, ex.relpaths, ws.root / "checks", advance=reporter.advance)
    finally:
        reporter.stop()
    t2 = time.perf_counter()
    res = analyse(ex, stats, cfg)
    res.seconds = {"features": t1 - t0, "image_stats": t2 - t1, **res.seconds}
    return res
