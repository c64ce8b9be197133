"""The softmax head trained on cached features (multinomial logistic regression).

Features are standardised with the training split's mean and std, the L2 strength is chosen on
the validation split from a log-spaced grid, and each fit stops early when the validation loss
stops improving. Full-batch L-BFGS (scipy) on a hand-written float32 loss and gradient: the
problem is convex and small, so no learning rate is tuned and no autograd is needed. numpy only,
so `tl extract` with a cached engine never imports torch; 10,000 x 1,280 features fit in a few
seconds on two cores. The standardisation is folded into the final layer, so the saved head is
just `W x + b`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tl_cli.errors import ConfigError
from tl_cli.runtime.fields import check_field_types

DEFAULT_L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


@dataclass(frozen=True)
class HeadConfig:
    """How the head is fitted.

    Attributes:
        l2_grid: L2 strengths tried (on standardised features, per-sample mean loss).
        max_iter: L-BFGS iterations per strength at most.
        patience: checks (of `check_every` iterations) without val-loss improvement before stopping.
        grid_patience: strengths in a row worse than the best before weaker ones are skipped.
        balanced: weight classes inversely to their frequency.
    """

    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    max_iter: int = 150
    check_every: int = 5
    patience: int = 2
    grid_patience: int = 2
    balanced: bool = False

    def __post_init__(self) -> None:
        check_field_types(self)
        if not self.l2_grid or any(v < 0 for v in self.l2_grid):
            raise ConfigError("l2_grid must hold non-negative values")
        for name, least in (("max_iter", 1), ("check_every", 1), ("patience", 0), ("grid_patience", 0)):
            if getattr(self, name) < least:
                raise ConfigError(f"{name} must be >= {least}, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadResult:
    weight: np.ndarray  # (C, D) float32, standardisation folded in
    bias: np.ndarray  # (C,) float32
    l2: float
    val_accuracy: float | None
    val_loss: float | None
    train_accuracy: float
    grid: list[dict] = field(default_factory=list)  # per-strength val metrics

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) @ self.weight.T + self.bias


def class_weights(y, n_classes: int) -> np.ndarray:
    """Per-class weights inversely proportional to frequency (mean 1 over samples)."""
    counts = np.bincount(np.asarray(y), minlength=n_classes).astype(np.float64).clip(min=1)
    return counts.sum() / (n_classes * counts)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits z (N, C), float32 in place on a copy."""
    z = z - z.max(1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(1, keepdims=True)
    return z


def cross_entropy(z: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of logits z (N, C) for labels y."""
    z = z - z.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1))
    return float((lse - z[np.arange(len(y)), y]).mean())


class _Objective:
    """Weighted mean cross-entropy + l2/2 |W|^2 (bias unpenalised) and its gradient, float32 matmuls.

    xb: (N, D+1) standardised features with a ones column; W: (D+1, C) flattened for scipy.
    """

    BLOCK = 512  # rows: 512 x 1,281 float32 = 2.6 MB

    def __init__(self, xb: np.ndarray, y: np.ndarray, n_classes: int, cw: np.ndarray | None):
        self.xb, self.y, self.c = xb, y, n_classes
        s = np.ones(len(y), np.float32) if cw is None else cw[y].astype(np.float32)
        self.s = s / s.sum()  # per-sample weight, as torch's cross_entropy(weight=...) normalises
        self.l2 = 0.0

    def __call__(self, wflat: np.ndarray) -> tuple[float, np.ndarray]:
        w = wflat.reshape(-1, self.c).astype(np.float32)
        g = np.zeros_like(w)
        loss = 0.0
        # Row blocks that stay in cache: each block of X is read from memory once for both the
        # logits and the gradient (the two skinny matmuls are memory-bound; this halves the traffic).
        for a in range(0, len(self.y), self.BLOCK):
            xb, y, s = self.xb[a:a + self.BLOCK], self.y[a:a + self.BLOCK], self.s[a:a + self.BLOCK]
            z = xb @ w
            zmax = z.max(1, keepdims=True)
            lse = np.log(np.exp(z - zmax).sum(1)) + zmax[:, 0]
            rows = np.arange(len(y))
            loss += float((s * (lse - z[rows, y])).sum())
            p = np.exp(z - lse[:, None])
            p[rows, y] -= 1.0
            p *= s[:, None]
            g += xb.T @ p
        g[:-1] += self.l2 * w[:-1]
        loss += 0.5 * self.l2 * float((w[:-1].astype(np.float64) ** 2).sum())
        return loss, g.astype(np.float64).ravel()


def _fit(obj: _Objective, xvb, yv, l2: float, cfg: HeadConfig, w0: np.ndarray) -> np.ndarray:
    """L-BFGS from w0; returns the weights at the best validation loss (checked every few iterations)."""
    from scipy.optimize import minimize

    obj.l2 = l2
    state = {"it": 0, "best": (float("inf"), w0), "bad": 0}

    def check(intermediate_result):
        state["it"] += 1
        if xvb is None or state["it"] % cfg.check_every:
            return
        w = intermediate_result.x.reshape(-1, obj.c)
        vloss = cross_entropy(xvb @ w.astype(np.float32), yv)
        if vloss < state["best"][0] - 1e-6:
            state["best"], state["bad"] = (vloss, w.copy()), 0
        else:
            state["bad"] += 1
            if state["bad"] >= cfg.patience:
                raise StopIteration  # validation loss stopped improving: early stop

    res = minimize(obj, w0.ravel(), jac=True, method="L-BFGS-B", callback=check,
                   options={"maxiter": cfg.max_iter, "maxcor": 20, "ftol": 1e-9, "gtol": 1e-6})
    w = res.x.reshape(-1, obj.c)
    if xvb is None:
        return w
    final = cross_entropy(xvb @ w.astype(np.float32), yv)
    return w if final <= state["best"][0] else state["best"][1]


def _past_the_best(results: list, patience: int) -> bool:
    """True when the last `patience` strengths were worse than the best one on val loss and accuracy."""
    if len(results) <= patience:
        return False
    best_loss = min(r["val_loss"] for r, _ in results[:-patience])
    best_acc = max(r["val_accuracy"] for r, _ in results[:-patience])
    return all(r["val_loss"] > best_loss and r["val_accuracy"] <= best_acc for r, _ in results[-patience:])


def _search(obj: _Objective, xvb, yv, grid: list[float], cfg: HeadConfig, w: np.ndarray) -> list:
    """Fit each L2 strength (strongest first, warm-started); [(metrics row, weights)]."""
    results = []
    for l2 in grid:
        w = _fit(obj, xvb, yv, l2, cfg, w)
        row = {"l2": l2}
        if xvb is not None:
            lv = xvb @ w.astype(np.float32)
            row["val_loss"] = cross_entropy(lv, yv)
            row["val_accuracy"] = float((lv.argmax(1) == yv).mean())
        results.append((row, w.copy()))
        if xvb is not None and _past_the_best(results, cfg.grid_patience):
            break  # weaker L2 only overfits more, and its fits are the slowest (worst conditioned)
    return results


def train_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None,
               n_classes: int, cfg: HeadConfig = HeadConfig()) -> HeadResult:
    """Fit the softmax head; choose L2 on validation accuracy (ties: lower validation loss).

    Args:
        x_train, y_train: (N, D) features and (N,) integer labels.
        x_val, y_val: validation split, or None to fit with the middle of the grid.
        n_classes: number of classes (labels are 0..n_classes-1).

    Returns:
        HeadResult with the folded Linear weights (numpy float32) and the validation metrics.

    Example:
        >>> r = train_head(x[:800], y[:800], x[800:], y[800:], n_classes=3)
        >>> (r.logits(x[800:]).argmax(1) == y[800:]).mean() == r.val_accuracy
        True
    """
    x = np.asarray(x_train, dtype=np.float32)
    y = np.asarray(y_train, dtype=np.int64)
    mean = x.mean(0, dtype=np.float64)
    std = x.std(0, ddof=1, dtype=np.float64).clip(min=1e-6) if len(x) > 1 else np.ones(x.shape[1])
    ones = lambda n: np.ones((n, 1), np.float32)  # noqa: E731 - bias column
    xb = np.hstack([((x - mean) / std).astype(np.float32), ones(len(x))])
    has_val = x_val is not None and len(x_val) > 0
    xvb = np.hstack([((np.asarray(x_val, np.float32) - mean) / std).astype(np.float32), ones(len(x_val))]) if has_val else None
    yv = np.asarray(y_val, dtype=np.int64) if has_val else None
    obj = _Objective(xb, y, n_classes, class_weights(y, n_classes) if cfg.balanced else None)

    grid = sorted(cfg.l2_grid, reverse=True) if has_val else [sorted(cfg.l2_grid)[len(cfg.l2_grid) // 2]]
    w = np.zeros((xb.shape[1], n_classes))
    # One BLAS thread: the matmuls are skinny (C columns) and memory-bound, and multi-threaded
    # OpenBLAS spin-waits badly on small blocks (much slower per evaluation on busy cores: benchmarks/README.md).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        results = _search(obj, xvb, yv, grid, cfg, w)
    if has_val:
        best_row, best_w = max(results, key=lambda r: (r[0]["val_accuracy"], -r[0]["val_loss"]))
    else:
        best_row, best_w = results[0]
    wt, b = best_w[:-1].T, best_w[-1]  # (C, D), (C,)
    w_folded = wt / std
    b_folded = b - w_folded @ mean
    train_acc = float(((x @ w_folded.T.astype(np.float32) + b_folded).argmax(1) == y).mean())
    return HeadResult(
        weight=w_folded.astype(np.float32),
        bias=b_folded.astype(np.float32),
        l2=best_row["l2"],
        val_accuracy=best_row.get("val_accuracy"),
        val_loss=best_row.get("val_loss"),
        train_accuracy=train_acc,
        grid=[r for r, _ in results],
    )
