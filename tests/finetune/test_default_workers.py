"""Worker and thread counts follow the cores this process may use, not the machine's."""

from __future__ import annotations

import os
import re
from pathlib import Path

import tl_cli
from tl_cli.finetune.data import default_workers
from tl_cli.runtime.distributed import cpu_count


def test_workers_follow_the_affinity_mask_not_the_machine(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the host
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # this container
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu_count() == 2
    assert default_workers("cpu") == 1 and default_workers("cuda") == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(20)), raising=False)
    assert default_workers("cpu") == 8 and default_workers("cuda") == 19
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: the node's cores shared by 4 processes
    assert cpu_count() == 5 and default_workers("cpu") == 2 and default_workers("cuda") == 4


def test_one_place_counts_cores():
    root = Path(tl_cli.__file__).parent
    hits = [(p.relative_to(root).as_posix(), line.strip()) for p in root.rglob("*.py")
            for line in p.read_text().splitlines() if re.search(r"os\.(cpu_count|sched_getaffinity)\(", line)]
    assert {p for p, _ in hits} == {"runtime/distributed.py"}, hits
