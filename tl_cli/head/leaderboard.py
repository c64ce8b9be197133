"""The backbone leaderboard: `tl extract DATA --backbone a,b,c`.

Each backbone goes through the ordinary small-data route (its own feature cache, so a backbone
added later is the only one extracted; its own run), then the runs are ranked by validation
accuracy, ties broken by the lower validation loss, and the best becomes the workspace's latest
run. The ranking is also written to `<workspace>/leaderboard.json`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tl_cli.errors import ConfigError
from tl_cli.features.extract import ExtractConfig
from tl_cli.head.small_data import train_small_data
from tl_cli.head.softmax import HeadConfig
from tl_cli.runs.workspace import Workspace, WorkspaceLike
from tl_cli.runtime import distributed
from tl_cli.runtime.atomic import write_json
from tl_cli.runtime.progress import Reporter


@dataclass(frozen=True)
class Entry:
    """One backbone's row: its head's validation scores, sizes, extraction speed and run."""

    backbone: str
    val_accuracy: float | None
    val_loss: float | None
    feature_dim: int
    params: int  # the backbone's parameters (without its ImageNet classifier)
    images_per_second: float | None  # None when every feature came from the cache
    n_extracted: int
    run_dir: str

    def rank_key(self) -> tuple:
        """Higher accuracy first, then lower loss; rows without validation scores last."""
        acc = -1.0 if self.val_accuracy is None else self.val_accuracy
        loss = float("inf") if self.val_loss is None else self.val_loss
        return (-acc, loss)


@dataclass(frozen=True)
class Leaderboard:
    entries: list[Entry]  # best first
    data_dir: str

    @property
    def best(self) -> Entry:
        return self.entries[0]


def parse_backbones(value: str) -> list[str]:
    """`a,b,c` -> ["a", "b", "c"], each a known backbone, no repeats (errors name the bad one)."""
    from tl_cli.backbones import get_spec

    names = [n.strip() for n in value.split(",")]
    if any(not n for n in names):
        raise ConfigError(f"--backbone {value!r}: empty name in the comma-separated list")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--backbone lists {', '.join(repeated)} more than once")
    for n in names:
        get_spec(n)  # unknown names fail here, before anything is extracted
    return names


def backbone_params(name: str) -> int:
    """Parameters of the backbone body (meta device: no memory, no weights needed)."""
    from tl_cli.backbones import get_spec
    from tl_cli.backbones.describe import meta_backbone

    net = meta_backbone(get_spec(name))
    head = {id(p) for p in net.classifier.parameters()}
    return sum(p.numel() for p in net.parameters() if id(p) not in head)


def _weights_first(backbones: list[str], pretrained: bool) -> None:
    """Find (download on first use) every backbone's weights before extracting any: missing weights
    of the last backbone fail in seconds, not after the others' extractions. Each extraction's own
    lookup then finds the file on disk."""
    from tl_cli.backbones import get_spec, resolve_weights

    for name in backbones:
        resolve_weights(get_spec(name), None, pretrained)


def run_leaderboard(
    data_dir: str | os.PathLike,
    backbones: list[str],
    cfg: ExtractConfig = ExtractConfig(),
    head_cfg: HeadConfig = HeadConfig(),
    workspace: WorkspaceLike = None,
    reporter: Reporter | None = None,
) -> Leaderboard | None:
    """Extract and fit a head for each backbone; rank them; keep the best as the latest run.

    Args:
        backbones: names (see `parse_backbones`); `cfg.backbone` is replaced by each in turn.
        cfg: the extraction settings shared by all (a `--weights` file fits one backbone only).

    Returns:
        The ranking, best first; None on torchrun ranks other than 0.

    Example:
        >>> board = run_leaderboard("photos", parse_backbones("efficientnet_lite0,timm/resnet50.a1_in1k"))
        >>> [(e.backbone, e.val_accuracy) for e in board.entries]  # best first
    """
    if len(backbones) > 1 and cfg.weights:
        raise ConfigError("--weights names one backbone's file; it cannot go with several --backbone names")
    ws = Workspace.open(workspace)
    _weights_first(backbones, cfg.pretrained)
    entries = []
    for i, name in enumerate(backbones):
        if reporter is not None and distributed.is_main():
            reporter.log(f"leaderboard {i + 1}/{len(backbones)}: {name}")
        res = train_small_data(data_dir, replace(cfg, backbone=name), head_cfg, ws, reporter, end_group=False)
        if res.extract is None:  # a torchrun rank other than 0: it helped extract, rank 0 ranks
            continue
        ex, head = res.extract, res.head
        entries.append(Entry(
            backbone=name, val_accuracy=head.val_accuracy, val_loss=head.val_loss,
            feature_dim=int(ex.features.shape[1]), params=backbone_params(name),
            images_per_second=ex.images_per_second if ex.n_extracted else None,
            n_extracted=ex.n_extracted, run_dir=str(res.run_dir),
        ))
    distributed.shutdown()  # one process group for all backbones (see train_small_data)
    if not entries:
        return None
    entries.sort(key=Entry.rank_key)  # stable: equal scores keep the order given
    board = Leaderboard(entries, str(Path(data_dir)))
    ws.remember(latest_run=Path(board.best.run_dir))
    write_json(ws.root / "leaderboard.json", {"data_dir": board.data_dir, "entries": [asdict(e) for e in entries]})
    return board
