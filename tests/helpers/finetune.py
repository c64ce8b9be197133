"""Reporters and weight comparisons shared by the fine-tuning tests."""

from __future__ import annotations

from pathlib import Path

import torch

from tl_cli.finetune.checkpoint import load_checkpoint
from tl_cli.runs.store import load_run
from tl_cli.runtime.progress import Reporter


class KillAfter(Reporter):
    """Interrupts the run right after epoch `n` has been checkpointed (as Ctrl-C or a kill would)."""

    def __init__(self, n: int):
        self.n = n

    def log(self, message: str) -> None:
        if message.startswith(f"epoch {self.n:>3} "):
            raise KeyboardInterrupt


class Notes(Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_run(run_dir).tensors()


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir)["model"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
