"""The per-epoch record of a run: history.csv, curves.png and the line the CLI prints per epoch."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tl_cli.runtime.atomic import write_text

HISTORY = "history.csv"
CURVES = "curves.png"
HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second")


def write_history(run_dir: Path, history: list[dict]) -> None:
    """history.csv (one row per epoch) and curves.png in `run_dir`, both written atomically."""
    from tl_cli.finetune.plots import save_curves

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    w.writeheader()
    for h in history:
        w.writerow({k: ("" if h[k] is None else (f"{h[k]:.6g}" if isinstance(h[k], float) else h[k])) for k in HISTORY_FIELDS})
    write_text(run_dir / HISTORY, buf.getvalue())
    save_curves(history, run_dir / CURVES, title=run_dir.name)


def format_row(row: dict, improved: bool = False) -> str:
    """One aligned line per epoch (the per-epoch table the CLI prints)."""
    val = (f"val loss {row['val_loss']:.4f}  val acc {row['val_accuracy']:.4f}" if row["val_accuracy"] is not None
           else "no validation images")
    return (f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  train acc {row['train_accuracy']:.4f}  "
            f"{val}  lr {row['lr']:.2e}  {row['images_per_second']:.1f} img/s  {row['seconds']:.1f} s"
            + ("  *best" if improved else ""))
