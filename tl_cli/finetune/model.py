"""The network `tl finetune` trains: a backbone, dropout and a new head, first N layers frozen.

Freezing uses the one numbering of `tl layers` (tl_cli/layers.py). A frozen layer's parameters
get `requires_grad=False` and its batch-norms stay in eval mode even while the model trains, so
their running statistics never move. Frozen layers are a prefix of the forward pass, so nothing
before the first trained layer needs a gradient: autograd records no backward work for them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from tl_cli.backbones.layers import LayerInfo, check_freeze, enumerate_layers, frozen_module_names
from tl_cli.backbones.wrapper import attach_head


class FinetuneModel(nn.Module):
    """`Backbone` + Dropout + Linear head with layers 1..`freeze` frozen.

    `self.net` is the same module layout that `model.build_from_run` rebuilds, so its state
    dict is what a run saves.

    Example:
        >>> net, _ = create_backbone("lenet5", pretrained=False)
        >>> m = FinetuneModel(net, n_classes=3, freeze=2, input_size=32)
        >>> [l.index for l in m.layers if l.name in m.frozen]
        [1, 2]
    """

    def __init__(self, backbone: nn.Module, n_classes: int, freeze: int, input_size: int, dropout: float = 0.0):
        super().__init__()
        self.net = attach_head(backbone, n_classes, dropout)
        self.layers: list[LayerInfo] = enumerate_layers(self.net, input_size)
        check_freeze(freeze, len(self.layers))
        self.freeze = freeze
        self.frozen = frozen_module_names(self.layers, freeze)
        for name in self.frozen:
            self.net.get_submodule(name).requires_grad_(False)
        self._frozen_norms = [self.net.get_submodule(n) for layer in self.layers[:freeze] for n in layer.norms]

    def use_sync_batchnorm(self) -> None:
        """Batch norms that share their statistics over all torchrun ranks (CUDA only; `--sync-bn`).

        Conversion keeps the parameter and buffer tensors, so it may come after the optimizer
        is built; the frozen norms are looked up again because they are new modules.
        """
        self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self._frozen_norms = [self.net.get_submodule(n) for layer in self.layers[:self.freeze] for n in layer.norms]

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        for norm in self._frozen_norms:  # running statistics of frozen layers stay pretrained
            norm.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.net.classifier.parameters())

    def body_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters outside the new head."""
        head = {id(p) for p in self.head_parameters()}
        return [p for p in self.net.parameters() if p.requires_grad and id(p) not in head]

    def count_parameters(self) -> tuple[int, int]:
        """(trainable, frozen) parameter counts."""
        trainable = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.net.parameters()) - trainable
