"""`Backbone`: a classification network split into body (features) and classifier; `attach_head`
replaces that classifier by the new head tl trains."""

from __future__ import annotations

import torch
import torch.nn as nn


class Backbone(nn.Module):
    """Wraps a network whose last Linear layer sits at `classifier_path` (e.g. "fc", "classifier.6").

    That Linear is moved to `self.classifier` and replaced by Identity inside `self.net`, so
    `forward_features` returns the penultimate activations and `forward` the original logits.
    State dicts in the network's own key layout load through `load_original_state_dict`.
    """

    def __init__(self, net: nn.Module, classifier_path: str, ignore_prefixes: tuple[str, ...] = ()):
        super().__init__()
        parent_path, _, attr = classifier_path.rpartition(".")
        parent = net.get_submodule(parent_path) if parent_path else net
        classifier = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
        if not isinstance(classifier, nn.Linear):
            raise TypeError(f"{classifier_path} is {type(classifier).__name__}, expected Linear")
        if attr.isdigit():
            parent[int(attr)] = nn.Identity()
        else:
            setattr(parent, attr, nn.Identity())
        self.net = net
        self.classifier = classifier
        self.classifier_path = classifier_path
        self.ignore_prefixes = ignore_prefixes
        self.feature_dim = classifier.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, (B, feature_dim)."""
        return torch.flatten(self.net(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    def load_original_state_dict(self, state: dict) -> None:
        """Load weights saved for the unwrapped network (or for this wrapper); strict."""
        if any(k.startswith("net.") for k in state):
            self.load_state_dict(state, strict=True)
            return
        prefix = self.classifier_path + "."
        mapped = {}
        for k, v in state.items():
            if k.startswith(self.ignore_prefixes):
                continue  # e.g. auxiliary classifiers that tl drops
            mapped[("classifier." + k[len(prefix):]) if k.startswith(prefix) else ("net." + k)] = v
        self.load_state_dict(mapped, strict=True)


def attach_head(backbone: nn.Module, n_classes: int, dropout: float = 0.0) -> nn.Module:
    """Replace the backbone's ImageNet classifier by Dropout + Linear(feature_dim, n_classes).

    The new Linear is the last "layer" in `tl layers` numbering, as the old classifier was.
    """
    backbone.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.feature_dim, n_classes))
    return backbone
