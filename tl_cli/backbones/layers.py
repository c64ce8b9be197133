"""One meaning of "layer" for every backbone, and freezing the first N of them.

A layer is a weight layer (convolution or fully connected) in the order the forward pass runs
it, with the classifier counted last (tl replaces it with the new head). Parallel branches
(ResNet shortcuts, Inception branches) are numbered in the order PyTorch executes them: a ResNet
block's 1x1 shortcut projection comes right after the block's last convolution.
A batch-norm belongs to the weight layer that ran just before it; freezing a layer freezes its
batch-norm too (weights and running statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from tl_cli.errors import ConfigError

WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class LayerInfo:
    """One weight layer: 1-based index, module path, type, parameter count, output shape."""

    index: int
    name: str
    kind: str
    params: int
    output_shape: tuple[int, ...]
    norms: tuple[str, ...]  # batch-norm modules that belong to this layer


def enumerate_layers(backbone: nn.Module, input_size: int) -> list[LayerInfo]:
    """Number the weight layers of a `Backbone` (body then classifier) in forward order.

    Runs one forward pass on the "meta" device (shapes only, no arithmetic, no memory), so it
    is cheap even for VGG and needs no pretrained weights.
    """
    import copy

    meta = copy.deepcopy(backbone).to("meta") if _has_real_params(backbone) else backbone
    names = {m: n for n, m in meta.named_modules()}
    order: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def hook(mod, _inp, out):
        order.append((names[mod], mod, tuple(out.shape) if isinstance(out, torch.Tensor) else ()))

    handles = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, WEIGHT_TYPES + NORM_TYPES)]
    try:
        was_training = meta.training
        meta.eval()
        with torch.no_grad():
            meta(torch.empty(1, 3, input_size, input_size, device="meta"))
        meta.train(was_training)
    finally:
        for h in handles:
            h.remove()
    layers: list[dict] = []
    seen: set[str] = set()
    for name, mod, shape in order:
        if name in seen:  # a module called twice (shared weights) counts once
            continue
        seen.add(name)
        if isinstance(mod, WEIGHT_TYPES):
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            layers.append(dict(name=name, kind=type(mod).__name__, params=params, shape=shape, norms=[]))
        elif layers:
            layers[-1]["norms"].append(name)
            layers[-1]["params"] += sum(p.numel() for p in mod.parameters(recurse=False))
    return [
        LayerInfo(i + 1, d["name"], d["kind"], d["params"], d["shape"][1:], tuple(d["norms"]))
        for i, d in enumerate(layers)
    ]


def _has_real_params(m: nn.Module) -> bool:
    return any(p.device.type != "meta" for p in m.parameters())


def check_freeze(n_freeze: int, n_layers: int) -> None:
    """`--freeze N` must leave at least the classifier (the last layer) trainable."""
    if n_freeze < 0:
        raise ConfigError(f"--freeze must be >= 0, got {n_freeze}")
    if n_freeze >= n_layers:
        raise ConfigError(
            f"--freeze {n_freeze} is too large: this backbone has {n_layers} layers, the last being the classifier",
            hint=f"use --freeze between 0 and {n_layers - 1} (`tl layers` shows them)",
        )


def frozen_module_names(layers: list[LayerInfo], n_freeze: int) -> list[str]:
    """Module paths (weight layers and their norms) frozen by `--freeze n_freeze`."""
    out: list[str] = []
    for layer in layers[:n_freeze]:
        out.append(layer.name)
        out.extend(layer.norms)
    return out
