"""`tl backbones` and `tl layers`."""

from __future__ import annotations

from tl_cli.backbones import DEFAULT_BACKBONE
from tl_cli.cli.app import command, out
from tl_cli.cli.options import BackboneOpt, FreezeOpt


@command("backbones", epilog="Example:  tl backbones")
def backbones_cmd() -> None:
    """List the registered backbones, their size, and whether their weights are on this machine
    ("on first use": downloaded into torch hub's cache the first time the backbone is used)."""
    from rich.table import Table

    from tl_cli.backbones.describe import describe_all

    t = Table(title="backbones (default: " + DEFAULT_BACKBONE + ")", title_justify="left")
    for col in ("name", "params", "features", "layers", "input", "weights here"):
        t.add_column(col, justify="right" if col in ("params", "features", "layers", "input") else "left")
    for d in describe_all():
        t.add_row(d.name, f"{d.params / 1e6:.1f}M", str(d.feature_dim), str(d.layers), str(d.input_size),
                  _weights_here(d))
    out.print(t)


def _weights_here(d) -> str:
    if d.weights_available:
        return "[green]yes[/]"
    if not d.has_pretrained:
        return "[dim]none exist[/]"
    return "[yellow]on first use[/]" if d.downloadable else "[red]no[/]"


@command("layers", epilog="Example:  tl layers --backbone vgg16 --freeze 10")
def layers_cmd(
    backbone: BackboneOpt = DEFAULT_BACKBONE,
    freeze: FreezeOpt = None,
) -> None:
    """The numbered layer table that `--freeze N` counts (needs no pretrained weights)."""
    from rich.table import Table

    from tl_cli.backbones import get_spec
    from tl_cli.backbones.describe import backbone_layers
    from tl_cli.backbones.layers import check_freeze

    spec = get_spec(backbone)
    layers = backbone_layers(backbone)
    if freeze is not None:
        check_freeze(freeze, len(layers))
    t = Table(title=f"{backbone}: {len(layers)} layers (input {spec.preprocess.input_size}px)", title_justify="left")
    for col in ("#", "name", "type", "params", "output", "state"):
        t.add_column(col, justify="right" if col in ("#", "params") else "left")
    frozen_params = 0
    total = 0
    for layer in layers:
        is_frozen = freeze is not None and layer.index <= freeze
        total += layer.params
        frozen_params += layer.params if is_frozen else 0
        state = "" if freeze is None else ("[cyan]frozen[/]" if is_frozen else "[green]trained[/]")
        name = layer.name.removeprefix("net.") + (" (new head)" if layer.index == len(layers) else "")
        t.add_row(str(layer.index), name, layer.kind, f"{layer.params:,}", "x".join(map(str, layer.output_shape)), state)
    out.print(t)
    if freeze is not None:
        out.print(f"--freeze {freeze}: {freeze} layers frozen ({frozen_params:,} parameters), "
                  f"{len(layers) - freeze} trained ({total - frozen_params:,} parameters, head sized for ImageNet here)")
