"""One epoch of fine-tuning: the training pass (one optimiser step per batch) and the validation pass."""

from __future__ import annotations

import contextlib
import functools
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tl_cli.finetune import ddp
from tl_cli.finetune.mix import mix_batch
from tl_cli.finetune.schedule import set_lr, step_lr_factor
from tl_cli.finetune.state import Training
from tl_cli.finetune.step import accumulate, to_device
from tl_cli.runtime.oom import apply_update


class Validation(NamedTuple):
    """A validation pass: mean cross-entropy, accuracy, and which images were right (in the
    validation split's order, over all ranks; None when an image could not be read, so that the
    positions would not line up). `correct` lets the best-epoch rule compare two epochs image by
    image (state.is_better)."""

    loss: float | None
    accuracy: float | None
    correct: np.ndarray | None = None


@torch.no_grad()
def validate(model: nn.Module, loader, device: torch.device) -> Validation:
    """`Validation` over a loader (over all ranks' loaders), in eval mode; no label smoothing.

    float32 on every device (no autocast): the accuracy that chooses the best epoch is the one
    prediction and `tl evaluate` reproduce (precision policy, runtime/device.py).
    Under torchrun pass the model itself, not its DDP wrapper (see ddp.wrap). Out of memory
    (float32 needs twice the activation memory of the bf16 training steps) halves the batch.
    """
    from tl_cli.runtime.oom import HalvingForward

    was_training = model.training
    model.eval()
    forward = HalvingForward(lambda xb: model(to_device(xb, device)).float())
    order = list(loader.sampler)  # this rank's validation images, in the order the batches come
    right = np.zeros(len(loader.dataset))  # 1 where this rank's image was right; summed over ranks
    misaligned = 0.0  # 1 once a batch lost an unreadable image: positions no longer known
    loss_sum, correct, n = 0.0, 0, 0
    for b, (x, y, _) in enumerate(loader):
        expected = order[b * loader.batch_size:(b + 1) * loader.batch_size]
        if x is None or len(y) != len(expected):
            misaligned = 1.0
        if x is None:
            continue
        logits = forward(x)
        y = y.to(device)
        hits = (logits.argmax(1) == y).cpu().numpy()
        if not misaligned:
            right[expected] = hits
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int(hits.sum())
        n += len(y)
    model.train(was_training)
    # each rank saw its share: sum the totals, and the per-image vectors (zeros where another rank's)
    loss_sum, correct, n, misaligned, *right = ddp.sum_over_ranks(loss_sum, correct, n, misaligned, *right)
    if not n:
        return Validation(float("nan"), float("nan"))
    return Validation(loss_sum / n, correct / n, None if misaligned else np.asarray(right) > 0.5)


def validate_run(tr: Training) -> Validation:
    """`validate` the model the run keeps (the weight average, when on) on the run's validation
    loader; Validation(None, None) when the run has no validation images."""
    if tr.loaders.val is None:
        return Validation(None, None)
    with kept_weights(tr):
        return validate(tr.model, tr.loaders.val, tr.device)


def kept_weights(tr: Training):
    """Context in which `tr.model` holds the weights the run validates and keeps: the EMA (ema.py) if on."""
    return tr.ema.applied() if tr.ema is not None else contextlib.nullcontext()


def run_epoch(tr: Training, epoch: int, deadline: float | None) -> dict | None:
    """Train epoch `epoch` (0-based) through `tr.net` and validate; returns its history row, or None
    if the deadline passed mid-epoch. Loss, accuracy and speed are over all ranks.

    The forward/backward of a step is retried in micro-batches after out-of-memory (`tr.halving`),
    the optimizer update runs once per step (`oom.apply_update`). images/s counts from the end
    of the first step, so that CUDA and cuDNN start-up and the loader's first batch (worker
    start-up) are not counted as training speed (with a single step, the whole epoch).
    """
    t = time.perf_counter()
    tr.loaders.sampler.set_epoch(epoch)  # a new order every epoch, the same on resume
    tr.model.train()
    n_batches = len(tr.loaders.train)
    loss_sum, correct, seen = 0.0, 0, 0
    lr = 0.0
    t_first, seen_first = None, 0  # time and images after the first step
    tr.reporter.start(f"epoch {epoch + 1}/{tr.cfg.epochs}", n_batches)
    try:
        for i, (x, y, errors) in enumerate(tr.loaders.train):
            tr.skipped.update(errors)
            if not ddp.any_rank(x is None):  # a step happens on all ranks or none (DDP syncs in backward)
                lr = set_lr(tr.opt, step_lr_factor(tr.cfg, epoch, i, n_batches))
                if tr.cfg.mix:
                    x, y = mix_batch(x, y, len(tr.ds.classes), tr.cfg.mix, tr.cfg.seed, epoch, i)
                loss, ok = _step(tr, x, y)
                loss_sum, correct, seen = loss_sum + loss * len(y), correct + ok, seen + len(y)
                if t_first is None:
                    t_first, seen_first = time.perf_counter(), seen
            speed = _speed(seen, seen_first, t, t_first)
            tr.reporter.advance(1, loss=f"{loss_sum / max(seen, 1):.4f}", acc=f"{correct / max(seen, 1):.3f}",
                                img_s=f"{speed:.1f}/s")
            if deadline and ddp.any_rank(time.perf_counter() > deadline):
                return None
    finally:
        tr.reporter.stop()
    speed = _speed(seen, seen_first, t, t_first)
    loss_sum, correct, seen, speed = ddp.sum_over_ranks(loss_sum, correct, seen, speed)
    val = validate_run(tr)
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "val_loss": val.loss,
        "val_accuracy": val.accuracy,
        "val_correct": val.correct,  # for the best-epoch rule; TrainState.record keeps it out of the history
        "lr": lr,
        "seconds": time.perf_counter() - t,
        "images_per_second": speed,
    }


def _step(tr: Training, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """Forward/backward (retried in micro-batches after out-of-memory), then one optimizer update."""
    forward_backward = functools.partial(accumulate, tr.net or tr.model, tr.opt, x, y, tr.loss_fn, tr.device, amp=tr.amp)
    loss, ok = tr.halving(forward_backward, len(y)) if tr.halving else forward_backward()
    apply_update(lambda: tr.amp.update(tr.opt))
    if tr.ema is not None:
        tr.ema.update()
    return loss, ok


def _speed(seen: int, seen_first: int, t0: float, t_first: float | None) -> float:
    """Training images/s of this rank: after the first step when there were more, else overall."""
    now = time.perf_counter()
    if t_first is not None and seen > seen_first and now > t_first:
        return (seen - seen_first) / (now - t_first)
    return seen / max(now - t0, 1e-9)
