"""Rebuild a run's trained classifier (backbone + new head) from its files, for predict and export."""

from __future__ import annotations

import torch
import torch.nn as nn

from tl_cli.backbones import create_backbone
from tl_cli.backbones.wrapper import attach_head
from tl_cli.errors import RunError
from tl_cli.runs.store import Run


def build_from_run(run: Run, weights: str | None = None) -> nn.Module:
    """Rebuild the trained classifier of a run, in eval mode, from its files alone.

    Head-only runs rebuild the frozen backbone from its weights (checked against the digest
    recorded at training time, so a changed weights file is caught); fine-tuned runs hold
    every tensor themselves.
    """
    meta = run.meta
    tensors = run.tensors()
    n_classes = len(meta.classes)
    if meta.kind == "head":
        w = meta.weights
        net, choice = create_backbone(meta.backbone, weights or w.file, w.pretrained)
        if choice.identity != w.id:
            raise RunError(
                f"the {meta.backbone} weights on this machine ({choice.identity}) differ from the ones "
                f"this model was trained with ({w.id})",
                hint="pass the original weights with --weights FILE",
            )
        net = _with_new_head(net, n_classes)
        net.classifier[1].weight.data.copy_(tensors["head.weight"])
        net.classifier[1].bias.data.copy_(tensors["head.bias"])
        return net.eval()
    net, _ = create_backbone(meta.backbone, pretrained=False)
    net = _with_new_head(net, n_classes)
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise RunError(f"{run.dir}: weights do not match {meta.backbone} "
                       f"({len(missing)} missing, {len(unexpected)} unexpected)")
    return net.eval()


def _with_new_head(net: nn.Module, n_classes: int) -> nn.Module:
    # The head's random initialisation is overwritten at once: drawn from a forked generator, so
    # loading a run never moves the caller's torch random stream.
    with torch.random.fork_rng(devices=[]):
        return attach_head(net, n_classes, 0.0)
