"""Backbones: the registry and the built-in networks."""

from tl_cli.backbones.registry import (
    BackboneSpec,
    WeightsChoice,
    create_backbone,
    get_spec,
    list_backbones,
    load_state_dict_file,
    register_backbone,
    resolve_weights,
)

DEFAULT_BACKBONE = "efficientnet_lite0"

__all__ = [
    "BackboneSpec",
    "DEFAULT_BACKBONE",
    "WeightsChoice",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "load_state_dict_file",
    "register_backbone",
    "resolve_weights",
]
