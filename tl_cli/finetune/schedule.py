"""The optimiser and its learning-rate schedule: linear warm-up, then cosine decay to 0.

The schedule is a curve over (fractional) epochs rather than steps, so a run resumed with another
batch size follows the same curve.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from tl_cli.finetune.config import MIX_MIN_EPOCHS, SGD_AFTER_PROBE, FinetuneConfig, probe_fits
from tl_cli.finetune.model import FinetuneModel

if TYPE_CHECKING:
    from tl_cli.finetune.state import Training
    from tl_cli.runtime.progress import Reporter


def lr_factor(progress: float, warmup: float, total: float) -> float:
    """Learning-rate multiplier at `progress` epochs: linear warm-up to 1, then cosine to 0 at `total`."""
    if warmup > 0 and progress < warmup:
        return progress / warmup
    t = min(max((progress - warmup) / max(total - warmup, 1e-12), 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def step_progress(epoch: int, step: int, n_steps: int, warmup: float) -> float:
    """Where on the curve step `step` (0-based) of `epoch` (0-based, `n_steps` steps each) runs.

    A step spans [start, end) of the curve. Warm-up steps take the value at their end and decay
    steps the value at their start, so no step runs at factor 0: the first runs at 1/n_steps of
    the warm-up, the last just above 0, and the curve reaches 0 after the last step.
    """
    start, end = epoch + step / n_steps, epoch + (step + 1) / n_steps
    return end if end <= warmup else max(start, warmup)


def planned_epochs(done: int, epoch_s: float, left_s: float, cap: int) -> int:
    """Epochs a run should have in all, `done` of them taken `epoch_s` each (the slowest), with
    `left_s` seconds of budget left: as many as fit with a 5% margin, at least one more, at most `cap`."""
    fit = int(max(left_s, 0.0) // (epoch_s * 1.05))
    return max(done + 1, min(cap, done + fit))


def step_lr_factor(cfg: FinetuneConfig, epoch: int, step: int, n_steps: int) -> float:
    """The learning-rate multiplier of one optimiser step of a run with settings `cfg`."""
    return lr_factor(step_progress(epoch, step, n_steps, cfg.warmup_epochs), cfg.warmup_epochs, cfg.epochs)


def build_optimizer(model: FinetuneModel, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW or SGD+Nesterov over the trainable parameters (`cfg.optimizer_settings()`: "auto"
    before the probe has scored is AdamW; `settle_optimizer` revisits it after).

    Two learning rates (trained backbone layers: `lr`, new head: `head_lr`); no weight decay on
    biases and norm weights (1-d tensors), where decay only fights the normalisation.
    """
    name, body_lr, head_lr = cfg.optimizer_settings()
    groups = []
    for params, lr in ((model.body_parameters(), body_lr), (model.head_parameters(), head_lr)):
        for ps, wd in (([p for p in params if p.ndim > 1], cfg.weight_decay), ([p for p in params if p.ndim <= 1], 0.0)):
            if ps:
                groups.append({"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd})
    if name == "sgd":
        return torch.optim.SGD(groups, lr=head_lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=head_lr)


def settle_optimizer(tr: Training, probe_accuracy: float | None) -> None:
    """--optimizer auto and --mix auto, once the probe has scored: decide, rebuild the optimizer,
    save the config, say why.

    Nothing has stepped the optimizer yet (the probe fits the head in closed form), so the new one
    starts exactly where a run given `--optimizer NAME --lr ... --head-lr ...` would. A run whose
    epochs are still to be planned decides the mix at the plan (`settle_mix`).
    """
    from tl_cli.runtime.distributed import is_main

    optimizer_auto, mix_auto = tr.cfg.optimizer == "auto", tr.cfg.mix is None
    tr.cfg = tr.cfg.settled(probe_accuracy)
    tr.opt = build_optimizer(tr.model, tr.cfg)
    if is_main():
        tr.cfg.save(tr.run_dir)
    if optimizer_auto:
        tr.reporter.log(f"optimizer: {tr.cfg.optimizer} (lr {tr.cfg.lr:g}, head {tr.cfg.head_lr:g}): "
                        f"{_optimizer_reason(tr.cfg.optimizer, probe_accuracy)} (--optimizer auto)")
    if mix_auto and tr.cfg.mix is not None:
        tr.reporter.log(mix_reason(tr.cfg, probe_accuracy))


def _optimizer_reason(name: str, probe_accuracy: float | None) -> str:
    if probe_accuracy is None:
        return "no validation images to score the probe on"
    if name == "sgd":
        return (f"the probe scores {probe_accuracy:.3f} on validation, at or above {SGD_AFTER_PROBE}: the features "
                "already fit, and SGD's steps shrink with the gradients where AdamW's do not")
    return f"the probe scores {probe_accuracy:.3f} on validation, below {SGD_AFTER_PROBE}: the features must adapt"


def settle_mix(cfg: FinetuneConfig, probe_accuracy: float | None, reporter: Reporter) -> FinetuneConfig:
    """--mix auto for a run whose epochs were just planned: `cfg` with the share decided (said in one line)."""
    if cfg.mix is not None:
        return cfg
    cfg = replace(cfg, mix=cfg.auto_mix(probe_accuracy))
    reporter.log(mix_reason(cfg, probe_accuracy))
    return cfg


def mix_reason(cfg: FinetuneConfig, probe_accuracy: float | None) -> str:
    """One line: the share --mix auto chose for `cfg` (already decided) and why."""
    probe = "no probe score" if probe_accuracy is None else f"the probe scores {probe_accuracy:.3f}"
    if cfg.mix:
        return (f"mix: {cfg.mix:g} (mixup or CutMix on the training batches): {probe}, below {SGD_AFTER_PROBE}, and "
                f"{cfg.epochs} epochs (>= {MIX_MIN_EPOCHS}) leave time to learn from blends (--mix auto)")
    why = (f"{probe}, at or above {SGD_AFTER_PROBE}: the features already fit" if probe_fits(probe_accuracy)
           else f"{cfg.epochs} epochs are too few (< {MIX_MIN_EPOCHS}) to repay blending")
    return f"mix: off: {why} (--mix auto)"


def set_lr(opt: torch.optim.Optimizer, factor: float) -> float:
    """Scale every parameter group's base learning rate by `factor`; returns the head's (for display)."""
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor
    return opt.param_groups[-1]["lr"]
