"""Summaries of backbones that need no weights: parameter and layer counts via the meta device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tl_cli.backbones.registry import BackboneSpec, get_spec, list_backbones

if TYPE_CHECKING:  # layers imports torch; this module is imported by commands that may not need it
    from tl_cli.backbones.layers import LayerInfo


@dataclass(frozen=True)
class BackboneSummary:
    name: str
    params: int
    feature_dim: int
    layers: int
    input_size: int
    has_pretrained: bool
    weights_available: bool
    downloadable: bool = False  # not here yet, fetched on first use (see backbones/weights.py)


def meta_backbone(spec: BackboneSpec):
    """The architecture on the meta device: shapes and counts without allocating weights."""
    import torch

    with torch.device("meta"):
        return spec.build()


def backbone_layers(name: str) -> list[LayerInfo]:
    """The numbered layer table of a registered backbone, as `tl layers` shows it and `--freeze N` counts."""
    from tl_cli.backbones.layers import enumerate_layers

    spec = get_spec(name)
    return enumerate_layers(meta_backbone(spec), spec.preprocess.input_size)


def layer_count(name: str) -> int:
    """How many layers `--freeze N` can count for backbone `name` (the new head is the last)."""
    return len(backbone_layers(name))


def describe(name: str) -> BackboneSummary:
    """Size, feature width, layer count, input size and weights availability of backbone `name`."""
    from tl_cli.backbones.layers import enumerate_layers

    spec = get_spec(name)
    net = meta_backbone(spec)
    try:
        available = spec.has_pretrained and spec.find_weights() is not None
    except Exception:  # a broken optional install must not break the listing
        available = False
    return BackboneSummary(
        name=spec.name,
        params=sum(p.numel() for p in net.parameters()),
        feature_dim=spec.feature_dim,
        layers=len(enumerate_layers(net, spec.preprocess.input_size)),  # the net built above, not a second one
        input_size=spec.preprocess.input_size,
        has_pretrained=spec.has_pretrained,
        weights_available=available,
        downloadable=spec.has_pretrained and bool(spec.weights_url),
    )


def describe_all() -> list[BackboneSummary]:
    return [describe(n) for n in list_backbones()]


def check_input_side(name: str, side: int) -> None:
    """Raise ConfigError when the backbone can't take `side`-px inputs (LeNet-5's fixed 32 x 32:
    its first Linear layer expects that exact feature map). Traced on the meta device: no compute."""
    import torch

    from tl_cli.errors import ConfigError

    spec = get_spec(name)
    try:
        meta_backbone(spec).forward_features(torch.zeros(1, 3, side, side, device="meta"))
    except (RuntimeError, AssertionError, ValueError) as exc:  # timm's fixed-size ViTs assert
        raise ConfigError(f"--image-size {side} does not fit {name} (trained at {spec.preprocess.input_size} px): "
                          f"{' '.join(str(exc).split())[:160]}",
                          hint=f"use --image-size {spec.preprocess.input_size}, or leave it out") from exc
