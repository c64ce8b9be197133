"""An exponential moving average (EMA) of the trained weights: the model that is validated and kept.

After every optimiser step the average moves towards the weights by a fixed fraction,
`shadow = decay * shadow + (1 - decay) * weights`. It starts at the weights before epoch 1 (the
probe start), so the first validated models stay close to the probe, and later it averages out
the last steps' noise (as timm's ModelEma, SWA and Polyak averaging do). Default half-life: 2
epochs (timm's usual decay 0.9998 per step is ~2.8 ImageNet epochs). In the study
(benchmarks/finetune_study.md, section 13) it removed the dips of the first fine-tuning epochs
(flowers, 15 epochs: 0.764, 0.773, 0.792, 0.799 ... rising every epoch but one, against 0.701,
0.767, 0.795, 0.724 ... without; catsdogs: 105/106 in every epoch, against 104-105), reaching
the same best accuracy; half-lives of 0.5 and 0.25 epochs, over only 3 epochs, changed nothing
measurable (section 7). `--ema 0` validates and keeps the last step's weights.

The decay is set by a half-life in epochs, not steps: the same setting means the same thing on 100
images or 100,000, and a run resumed with another batch size keeps the same curve.
Only trainable tensors are averaged; frozen weights and the batch-norm running statistics never
move (model.py), so their average would be themselves.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


class WeightAverage:
    """The EMA of the trainable parameters of `net` (a FinetuneModel's `net`).

    Example:
        >>> ema = WeightAverage(net, half_life_epochs=0.5, steps_per_epoch=100)
        >>> ...  # after each optimiser step:
        >>> ema.update()
        >>> with ema.applied():
        ...     validate(...)  # net holds the averaged weights inside the block only
    """

    def __init__(self, net: nn.Module, half_life_epochs: float, steps_per_epoch: int):
        self.net = net
        trained = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in trained]
        self.params = [p.detach() for _, p in trained]  # looked up once: update() runs every step
        self.decay = decay_per_step(half_life_epochs, steps_per_epoch)
        self.shadow = [p.clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, self.params, 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self):
        """Inside the block `net` holds the averaged weights; the training weights come back after."""
        params = self.params
        saved = [p.clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(params, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in zip(self.names, self.shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.names) - set(state))
        if missing:
            raise KeyError(f"the checkpoint's weight average lacks {', '.join(missing[:3])}")
        with torch.no_grad():
            for n, t in zip(self.names, self.shadow):
                t.copy_(state[n])


def weight_average(net: nn.Module, half_life_epochs: float, steps_per_epoch: int,
                   saved: dict[str, torch.Tensor] | None = None) -> WeightAverage | None:
    """The run's EMA (None when `half_life_epochs` is 0), continued from `saved` (a checkpoint's).

    Without `saved` (a new run, or a checkpoint written after epoch 0, the probe) it starts from
    the model's weights, which is where a run that never stopped started it too.
    """
    if not half_life_epochs:
        return None
    ema = WeightAverage(net, half_life_epochs, steps_per_epoch)
    if saved:
        ema.load_state_dict(saved)
    return ema


def decay_per_step(half_life_epochs: float, steps_per_epoch: int) -> float:
    """The per-step decay that halves an old weight's share after `half_life_epochs` epochs."""
    return 0.5 ** (1.0 / max(half_life_epochs * max(steps_per_epoch, 1), 1e-9))
