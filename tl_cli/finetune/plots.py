"""Training curves as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from tl_cli.runtime.atomic import atomic_path


def save_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train and validation, side by side; written atomically."""
    # A Figure on its own Agg canvas, not pyplot: no display needed, and the process-wide
    # backend (the application's choice) is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    # Train loss includes label smoothing and augmentation, so it can sit above validation loss.
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        val = [(e, h[f"val_{key}"]) for e, h in zip(epochs, history) if h.get(f"val_{key}") is not None]
        if val:
            ax.plot([e for e, _ in val], [v for _, v in val], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
