"""Real torchrun launches of `tl` on the CPU (gloo), for the distributed tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], workspace: Path, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node N -m tl_cli ARGS` with the gloo backend (no GPU here)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TL_WORKSPACE=str(workspace),
               TL_DIST_TIMEOUT_MIN="2", COLUMNS="200")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={free_port()}", "-m", "tl_cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
