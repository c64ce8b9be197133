"""The softmax head trained on cached features (multinomial logistic regression).

Features are standardised with the training split's mean and std, the L2 strength is chosen on
the validation split from a log-spaced grid, and each fit stops early when the validation loss
stops improving. Full-batch L-BFGS: the problem is convex and small (10,000 x 1,280 fits in
seconds on two cores), so no mini-batch learning-rate tuning is needed. The standardisation is
folded into the final Linear layer, so the saved head is just `W x + b`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError

DEFAULT_L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


@dataclass(frozen=True)
class HeadConfig:
    """How the head is fitted.

    Attributes:
        l2_grid: L2 strengths tried (on standardised features, per-sample mean loss).
        max_iter: L-BFGS iterations per strength at most.
        patience: checks (of `check_every` iterations) without val-loss improvement before stopping.
        balanced: weight classes inversely to their frequency.
    """

    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    max_iter: int = 300
    check_every: int = 10
    patience: int = 3
    balanced: bool = False

    def __post_init__(self) -> None:
        if not self.l2_grid or any(v < 0 for v in self.l2_grid):
            raise ConfigError("l2_grid must hold non-negative values")
        if self.max_iter < 1:
            raise ConfigError("max_iter must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadResult:
    weight: torch.Tensor  # (C, D), standardisation folded in
    bias: torch.Tensor  # (C,)
    l2: float
    val_accuracy: float | None
    val_loss: float | None
    train_accuracy: float
    grid: list[dict] = field(default_factory=list)  # per-strength val metrics

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias


def class_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    counts = torch.bincount(y, minlength=n_classes).float().clamp(min=1)
    return counts.sum() / (n_classes * counts)


def _fit(x, y, xv, yv, n_classes, l2, cfg: HeadConfig, w0, cw):
    """L-BFGS on CE + l2/2 |W|^2; returns the weights at the best validation loss."""
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=cfg.check_every, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)
    ones = torch.ones(x.shape[0], 1, dtype=x.dtype)
    xb = torch.cat([x, ones], 1)
    xvb = torch.cat([xv, torch.ones(xv.shape[0], 1, dtype=x.dtype)], 1) if xv is not None else None

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w, y, weight=cw) + 0.5 * l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    best = (float("inf"), w.detach().clone())
    bad = 0
    for _ in range(max(1, cfg.max_iter // cfg.check_every)):
        prev = w.detach().clone()
        opt.step(closure)
        if xvb is None:
            best = (0.0, w.detach().clone())
            if torch.allclose(prev, w.detach(), atol=1e-7):
                break
            continue
        with torch.no_grad():
            vloss = F.cross_entropy(xvb @ w, yv).item()
        if vloss < best[0] - 1e-6:
            best, bad = (vloss, w.detach().clone()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
        if torch.allclose(prev, w.detach(), atol=1e-7):
            break
    return best[1]


def train_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None,
               n_classes: int, cfg: HeadConfig = HeadConfig()) -> HeadResult:
    """Fit the softmax head; choose L2 on validation accuracy (ties: lower validation loss).

    Args:
        x_train, y_train: (N, D) features and (N,) integer labels.
        x_val, y_val: validation split, or None to fit with the middle of the grid.
        n_classes: number of classes (labels are 0..n_classes-1).

    Returns:
        HeadResult with the folded Linear weights and the validation metrics.
    """
    x = torch.as_tensor(x_train, dtype=torch.float64)  # float64: L-BFGS converges cleanly, still fast
    y = torch.as_tensor(y_train, dtype=torch.long)
    mean = x.mean(0)
    std = x.std(0).clamp(min=1e-6)
    xs = (x - mean) / std
    has_val = x_val is not None and len(x_val) > 0
    xv = ((torch.as_tensor(x_val, dtype=torch.float64) - mean) / std) if has_val else None
    yv = torch.as_tensor(y_val, dtype=torch.long) if has_val else None
    cw = class_weights(y, n_classes).double() if cfg.balanced else None

    grid = sorted(cfg.l2_grid, reverse=True) if has_val else [sorted(cfg.l2_grid)[len(cfg.l2_grid) // 2]]
    w = torch.zeros(xs.shape[1] + 1, n_classes, dtype=torch.float64)
    results = []
    for l2 in grid:  # strongest first; each fit warm-starts from the previous one
        w = _fit(xs, y, xv, yv, n_classes, l2, cfg, w, cw)
        row = {"l2": l2}
        if has_val:
            with torch.no_grad():
                lv = torch.cat([xv, torch.ones(len(xv), 1, dtype=xv.dtype)], 1) @ w
                row["val_loss"] = F.cross_entropy(lv, yv).item()
                row["val_accuracy"] = (lv.argmax(1) == yv).double().mean().item()
        results.append((row, w.clone()))
    if has_val:
        best_row, best_w = max(results, key=lambda r: (r[0]["val_accuracy"], -r[0]["val_loss"]))
    else:
        best_row, best_w = results[0]
    wt, b = best_w[:-1].T, best_w[-1]  # (C, D), (C,)
    w_folded = wt / std
    b_folded = b - w_folded @ mean
    with torch.no_grad():
        train_acc = ((x @ w_folded.T + b_folded).argmax(1) == y).double().mean().item()
    return HeadResult(
        weight=w_folded.float(),
        bias=b_folded.float(),
        l2=best_row["l2"],
        val_accuracy=best_row.get("val_accuracy"),
        val_loss=best_row.get("val_loss"),
        train_accuracy=train_acc,
        grid=[r for r, _ in results],
    )
