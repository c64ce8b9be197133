"""The softmax head on features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tests.helpers.paths import REPO
from tl_cli.head.softmax import HeadConfig, class_weights, train_head


def _blobs(n, d=20, c=3, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, sep, (c, d))
    y = rng.integers(0, c, n)
    x = centers[y] + rng.normal(0, 1.0, (n, d)) + 5.0  # offset: standardisation must handle it
    return x.astype(np.float32), y


def test_learns_separable_classes_and_reports_val_metrics():
    x, y = _blobs(600)
    r = train_head(x[:500], y[:500], x[500:], y[500:], 3)
    assert r.val_accuracy > 0.95 and r.train_accuracy > 0.95
    assert r.l2 in HeadConfig().l2_grid and len(r.grid) == len(HeadConfig().l2_grid)
    # The saved head is a plain Linear on raw features: it must reproduce the val accuracy.
    pred = (x[500:] @ r.weight.T + r.bias).argmax(1)
    assert (pred == y[500:]).mean() == r.val_accuracy


def test_l2_chosen_on_validation_prefers_regularisation_when_overfitting():
    # Few samples, many noisy dimensions: the weakest L2 overfits.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 300)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    xv = rng.normal(size=(400, 300)).astype(np.float32)
    yv = (xv[:, 0] > 0).astype(int)
    r = train_head(x, y, xv, yv, 2)
    assert r.l2 > min(HeadConfig().l2_grid)
    best = max(g["val_accuracy"] for g in r.grid)
    assert r.val_accuracy == best


def test_without_validation_still_fits():
    x, y = _blobs(200)
    r = train_head(x, y, None, None, 3)
    assert r.val_accuracy is None and r.train_accuracy > 0.95


def test_balanced_weights_help_the_minority_class():
    rng = np.random.default_rng(2)
    x0 = rng.normal(0, 1, (950, 5))
    x1 = rng.normal(1.2, 1, (50, 5))
    x = np.concatenate([x0, x1]).astype(np.float32)
    y = np.array([0] * 950 + [1] * 50)
    plain = train_head(x, y, None, None, 2)
    bal = train_head(x, y, None, None, 2, HeadConfig(balanced=True))

    def recall1(r):
        p = (x @ r.weight.T + r.bias).argmax(1)
        return (p[y == 1] == 1).mean()

    assert recall1(bal) > recall1(plain)
    w = class_weights(y, 2)
    assert w[1] / w[0] == 19.0


def test_loss_and_gradient_equal_torch_autograd():
    """The hand-written objective is the weighted cross-entropy + L2 that torch would compute."""
    from tl_cli.head.softmax import _Objective

    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 7)).astype(np.float32)
    xb = np.hstack([x, np.ones((50, 1), np.float32)])
    y = rng.integers(0, 4, 50)
    cw = class_weights(y, 4)
    w = rng.normal(size=(8, 4))
    obj = _Objective(xb, y, 4, cw)
    obj.l2 = 0.3
    loss, grad = obj(w.ravel())
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    ref = F.cross_entropy(torch.from_numpy(xb).double() @ wt, torch.from_numpy(y), weight=torch.from_numpy(cw)) \
        + 0.15 * (wt[:-1] ** 2).sum()
    ref.backward()
    assert abs(loss - ref.item()) < 1e-5
    np.testing.assert_allclose(grad.reshape(8, 4), wt.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_no_torch_import_for_the_head():
    import subprocess
    import sys
    root = REPO
    code = ("import sys, numpy as np; from tl_cli.head.softmax import train_head;"
            "x = np.random.default_rng(0).normal(size=(40, 6)); y = (x[:, 0] > 0).astype(int);"
            "train_head(x[:30], y[:30], x[30:], y[30:], 2); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(root)})
    assert out.stdout.strip() == "False", out.stderr
