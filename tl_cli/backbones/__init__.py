"""Backbones: the registry and the built-in networks.

Importing this package registers the built-in backbones (`builtin` imports `registry`, never the
other way round), so `list_backbones()` and `get_spec()` see them from any import path.
"""

from tl_cli.backbones.builtin import DEFAULT_BACKBONE  # importing builtin registers the built-in backbones
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
