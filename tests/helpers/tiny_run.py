"""Runs for the report/export tests, built in seconds.

`tiny_run` trains the real small-data route with LeNet-5 on colour images written by the test.
`head_run` saves a run of any backbone with a random (seeded) head, skipping extraction, for
tests about the backbone itself (exports with real weights).
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.images import make_folder
from tl_cli.runs.store import Run, load_run


def tiny_run(data: Path, workspace: Path, val_fraction: float = 0.35) -> Run:
    """Train a LeNet-5 head on `data` (written if missing) in `workspace`; return the run.

    The validation share is not the default 0.2, so tests see whether `--split val` reads the run's.
    """
    from tl_cli.features.extract import ExtractConfig
    from tl_cli.head.small_data import train_small_data
    from tl_cli.runs.workspace import Workspace

    if not data.exists():
        make_folder(data)
    cfg = ExtractConfig(backbone="lenet5", pretrained=False, workers=0, val_fraction=val_fraction)
    res = train_small_data(data, cfg, workspace=Workspace.open(workspace))
    return load_run(res.run_dir)


def head_run(run_dir: Path, classes: list[str], backbone: str = "efficientnet_lite0", seed: int = 0) -> Run:
    """A head-only run of `backbone` (its default weights) with a random head over `classes`."""
    import torch

    from tl_cli.backbones import get_spec, resolve_weights
    from tl_cli.runs.meta import RunMeta, WeightsRef
    from tl_cli.runs.store import save_run

    spec = get_spec(backbone)
    choice = resolve_weights(spec)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(len(classes), spec.feature_dim, generator=g) * 0.05
    b = torch.randn(len(classes), generator=g) * 0.1
    run_dir.mkdir(parents=True)
    meta = RunMeta(route="extract", kind="head", classes=tuple(classes), backbone=backbone,
                   weights=WeightsRef(choice.identity, None, True), preprocess=spec.preprocess)
    save_run(run_dir, {"head.weight": w, "head.bias": b}, meta)
    return load_run(run_dir)


def full_run(run_dir: Path, classes: list[str], backbone: str = "lenet5", seed: int = 0) -> Run:
    """A run holding every tensor of the network (the shape fine-tuned runs have), random weights."""
    import torch

    from tl_cli.backbones import create_backbone, get_spec
    from tl_cli.backbones.wrapper import attach_head
    from tl_cli.runs.meta import RunMeta
    from tl_cli.runs.store import save_run

    torch.manual_seed(seed)
    net, _ = create_backbone(backbone, pretrained=False)
    net = attach_head(net, len(classes))
    run_dir.mkdir(parents=True)
    meta = RunMeta(route="finetune", kind="full", classes=tuple(classes), backbone=backbone,
                   preprocess=get_spec(backbone).preprocess, val_fraction=0.3)
    save_run(run_dir, net.state_dict(), meta)
    return load_run(run_dir)
