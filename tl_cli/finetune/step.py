"""One training step: forward/backward (retryable after out-of-memory), then one optimizer update.

Precision (runtime/device.py, the policy): on CUDA the forward/backward of a training step runs
under autocast, bf16 where the GPU has it natively and float16 with a GradScaler elsewhere (T4,
V100); the CPU runs float32. Validation, the probe, prediction and evaluation are float32 on
every device, so the accuracy that picks the best epoch is the one `tl evaluate` reproduces.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


class Amp:
    """Autocast and loss scaling for training steps on `device`.

    `dtype` is "bf16", "fp16" or "float32" (`device.train_precision`). fp16 needs a GradScaler:
    small gradients underflow in float16 without it. Its state is checkpointed (`state_dict`),
    so a resumed run continues with the same scale.
    """

    def __init__(self, device: torch.device, dtype: str | None = None):
        from tl_cli.runtime.device import train_precision

        self.device = device
        self.dtype = dtype or train_precision(device)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == "fp16" else None

    def autocast(self):
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.dtype == "bf16" else torch.float16)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def update(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
            return
        self.scaler.step(opt)  # skipped (and the scale lowered) when a gradient overflowed
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last: the layout oneDNN (CPU) and cuDNN (tensor cores) run convolutions fastest in.
    return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def accumulate(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module,
               device: torch.device, micro: int | None = None, amp: Amp | None = None) -> tuple[float, int]:
    """Clear the gradients, then forward and backward the batch; returns (mean loss, number correct).

    `micro` runs the batch in pieces of that many images, accumulating gradients weighted by
    each piece's share, so the gradient equals the whole-batch one: the out-of-memory fallback
    (`oom.HalvingStep`) calls this again with a smaller `micro`. It never touches the weights or
    the optimizer's state, so running it again after a failure is safe.
    """
    amp = amp or Amp(device, "float32")
    opt.zero_grad(set_to_none=True)
    n = len(y)
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
    for s in range(0, n, micro or n):
        xs, ys = to_device(x[s: s + (micro or n)], device), y[s: s + (micro or n)].to(device, non_blocking=True)
        with amp.autocast():
            logits = model(xs)
        loss = loss_fn(logits.float(), ys)
        amp.backward(loss * (len(ys) / n))
        loss_sum += loss.detach() * (len(ys) / n)
        correct += (logits.argmax(1) == (ys.argmax(1) if ys.ndim == 2 else ys)).sum()  # blended: the larger share
    return float(loss_sum), int(correct)  # one device sync per step, not one per piece


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module,
               device: torch.device, micro: int | None = None, amp: Amp | None = None) -> tuple[float, int]:
    """One optimisation step on a batch (`accumulate`, then one update); returns (mean loss, number correct)."""
    amp = amp or Amp(device, "float32")
    out = accumulate(model, opt, x, y, loss_fn, device, micro, amp)
    amp.update(opt)
    return out
