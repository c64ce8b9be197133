"""`tl extract`: the small-data route."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tl_cli.backbones import DEFAULT_BACKBONE
from tl_cli.cli.app import command, err, out, workspace
from tl_cli.cli.options import (
    BackboneOpt,
    BatchSizeOpt,
    DeviceOpt,
    EngineOpt,
    GroupPatternOpt,
    GroupsOpt,
    PretrainedOpt,
    StrictOpt,
    ValFractionOpt,
    WeightsOpt,
    WorkersOpt,
    WorkspaceOpt,
)


@command(
    "extract",
    epilog="Example:  tl extract ./photos   then   tl predict new.jpg\n\n"
           "Leaderboard:  tl extract ./photos --backbone efficientnet_lite0,timm/convnext_tiny.fb_in22k_ft_in1k\n\n"
           "Several GPUs:  torchrun --standalone --nproc-per-node 4 -m tl_cli extract ./photos",
)
def extract_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Folder of class sub-folders (or train/ and val/ folders of them).")],
    backbone: BackboneOpt = DEFAULT_BACKBONE,
    weights: WeightsOpt = None,
    pretrained: PretrainedOpt = True,
    val_fraction: ValFractionOpt = 0.2,
    group_pattern: GroupPatternOpt = None,
    groups: GroupsOpt = None,
    batch_size: BatchSizeOpt = 32,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    engine: EngineOpt = "auto",
    decoder: Annotated[str, typer.Option("--decoder", help="auto (nvJPEG on the GPU when extracting on CUDA, "
                                         "else Pillow threads), cpu, or gpu.")] = "auto",
    strict: StrictOpt = False,
    balanced: Annotated[bool, typer.Option("--balanced", help="Weight classes inversely to their frequency.")] = False,
    no_train: Annotated[bool, typer.Option("--no-train", help="Only fill the feature cache.")] = False,
    ws_path: WorkspaceOpt = None,
) -> None:
    """Small data: cache the frozen backbone's features in HDF5 and train a softmax head on them.

    Re-running on the same folder reuses every cached feature; new images are the only ones
    run through the network. Several backbones (`--backbone a,b,c`) make a leaderboard: each is
    extracted (its own cache) and gets a head and a run; the best on validation becomes the latest run.
    """
    from tl_cli.features.extract import ExtractConfig
    from tl_cli.head.small_data import train_small_data
    from tl_cli.head.softmax import HeadConfig
    from tl_cli.runtime.progress import RichReporter

    cfg = ExtractConfig(
        backbone=backbone, weights=str(weights) if weights else None, pretrained=pretrained,
        val_fraction=val_fraction, batch_size=batch_size, workers=workers, device=device, strict=strict, engine=engine,
        decoder=decoder, group_pattern=group_pattern, groups=str(groups.expanduser().absolute()) if groups else None,
    )
    ws = workspace(ws_path)
    if "," in backbone and not no_train:
        from tl_cli.head.leaderboard import parse_backbones, run_leaderboard

        board = run_leaderboard(data_dir, parse_backbones(backbone), cfg, HeadConfig(balanced=balanced), ws, RichReporter(err))
        if board is not None:
            render_leaderboard(board)
        return
    res = train_small_data(data_dir, cfg, HeadConfig(balanced=balanced), ws, RichReporter(err), train=not no_train)
    if res.extract is not None:  # under torchrun only rank 0 has the result and prints
        render_summary(res)
        from tl_cli.check import NEAR_THRESHOLD
        from tl_cli.check.quick import quick_check

        ex = res.extract  # the near-copy threshold is calibrated for the default backbone's features
        near = NEAR_THRESHOLD if ex.backbone == DEFAULT_BACKBONE else None
        note = quick_check(ex.features, ex.splits, ex.labels, ex.dataset.root, near)
        if note:
            err.print(f"check: {note}", markup=False, style="yellow")


def render_leaderboard(board) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    title = f"tl extract: {escape(str(board.data_dir))}: {len(board.entries)} backbones, best first"
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("#", "backbone", "val acc", "val loss", "dim", "params", "img/s"):
        t.add_column(col, justify="left" if col == "backbone" else "right", no_wrap=col == "backbone")
    for i, e in enumerate(board.entries, 1):
        t.add_row(str(i), e.backbone, "-" if e.val_accuracy is None else f"{e.val_accuracy:.4f}",
                  "-" if e.val_loss is None else f"{e.val_loss:.4f}", str(e.feature_dim), f"{e.params / 1e6:.2f}M",
                  "cached" if e.images_per_second is None else f"{e.images_per_second:.1f}")
    out.print(t)
    out.print(f"latest run: {board.best.run_dir} ({board.best.backbone}); the others: `tl runs`", markup=False)


def render_summary(res) -> None:
    from rich.markup import escape
    from rich.table import Table

    from tl_cli.head.small_data import readable_counts

    ex = res.extract
    ds = ex.dataset
    # Class names and paths are the user's text: "[x]" in a folder name is not rich markup.
    t = Table(title=f"tl extract: {escape(str(ds.root))}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    n_train = int((ex.splits == "train").sum())
    n_val = int((ex.splits == "val").sum())
    counts = readable_counts(ex).items()  # the images the model learns from, not the unreadable ones
    t.add_row("classes", f"{len(ds.classes)}: " + escape(", ".join(f"{c} ({n})" for c, n in counts)))
    bad_files = [f for f in ex.failed if not f[0].endswith("/")]  # "name/" entries are class folders
    t.add_row("images", f"{len(ex.relpaths) + len(bad_files)} found, {len(bad_files)} skipped, "
                        f"{ex.n_extracted} extracted, {ex.n_cached} from cache")
    t.add_row("split", f"{n_train} train / {n_val} val ({ds.layout})")
    t.add_row("backbone", f"{ex.backbone}  ({ex.features.shape[1]}-d features, cache {escape(str(ex.cache_dir))})")
    if ex.n_extracted:
        procs = f", {ex.world_size} processes" if ex.world_size > 1 else ""
        t.add_row("speed", f"{ex.images_per_second:.1f} images/s ({ex.extract_seconds:.1f} s, engine {ex.engine}{procs})")
    if res.head is not None:
        h = res.head
        acc = f"{h.val_accuracy:.4f}" if h.val_accuracy is not None else "n/a (no validation images)"
        t.add_row("val accuracy", acc)
        t.add_row("train accuracy", f"{h.train_accuracy:.4f}  (L2 {h.l2:g})")
        t.add_row("run", escape(str(res.run_dir)))
    t.add_row("time", f"{ex.seconds:.1f} s total")
    out.print(t)
    for note in ex.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    if ex.failed:
        err.print(f"[yellow]skipped {len(ex.failed)} file(s) or class folder(s):[/]")
        for rel, why in ex.failed[:20]:
            err.print(f"  {rel}: {why}", markup=False)  # file names may contain [brackets]
        if len(ex.failed) > 20:
            err.print(f"  ... and {len(ex.failed) - 20} more")
