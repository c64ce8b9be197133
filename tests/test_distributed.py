"""torch.distributed on CPU: real torchrun launches of 2 gloo processes compared with one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import make_folder, write_image
from tl_cli import distributed
from tl_cli.distributed import DistInfo, my_shard
from tl_cli.errors import ConfigError
from tl_cli.extract import ExtractConfig, extract_features
from tl_cli.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


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


def h5_columns(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in ("relpath", "size", "mtime_ns", "features")}


@pytest.mark.parametrize("n,bs,world", [(10, 2, 2), (11, 4, 3), (3, 4, 2), (0, 1, 2), (17, 1, 4)])
def test_shards_are_whole_batches_covering_everything_once(n, bs, world):
    shards = [my_shard(n, bs, DistInfo(rank=r, world_size=world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    for r, s in enumerate(shards):
        for i in s:  # item i lies in batch i // bs, dealt to rank (i // bs) % world
            assert (i // bs) % world == r
    assert my_shard(n, bs, DistInfo()) == list(range(n))


def test_timeout_from_environment(monkeypatch):
    monkeypatch.delenv("TL_DIST_TIMEOUT_MIN", raising=False)
    assert distributed.timeout() == timedelta(minutes=30)
    monkeypatch.setenv("TL_DIST_TIMEOUT_MIN", "0.5")
    assert distributed.timeout() == timedelta(seconds=30)
    for bad in ("0", "-3", "ten"):
        monkeypatch.setenv("TL_DIST_TIMEOUT_MIN", bad)
        with pytest.raises(ConfigError, match="TL_DIST_TIMEOUT_MIN"):
            distributed.timeout()


def test_single_process_needs_no_process_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.init("cpu") == DistInfo()
    assert not distributed.active()
    assert distributed.all_gather_object(3) == [3]
    assert str(distributed.rank_device("cpu")) == "cpu"


def test_torchrun_extract_equals_single_process_extract(tmp_path):
    """2 gloo ranks write one cache identical (rows, order, feature bytes) to a 1-process extract.

    Odd image counts, an unreadable image and batch size 4 make the ranks' shares unequal and the
    last batch short; the second round (one image added, one changed) shards a partial to-do list.
    """
    import torch

    data = make_folder(tmp_path / "data", n_per_class=11)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    args = ["extract", str(data), "-b", "lenet5", "--no-pretrained", "--batch-size", "4", "--workers", "0"]
    cfg = ExtractConfig(backbone="lenet5", pretrained=False, batch_size=4, workers=0)
    ws_one, ws_dist = tmp_path / "one", tmp_path / "dist"

    def compare() -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1)
        try:
            ref = extract_features(data, cfg, Workspace.open(ws_one))
        finally:
            torch.set_num_threads(threads)
        got = h5_columns(ws_dist / "caches" / ref.cache_key / "features.h5")
        want = h5_columns(ref.cache_dir / "features.h5")
        for k in want:
            assert want[k].dtype == got[k].dtype and want[k].shape == got[k].shape, k
            assert np.array_equal(want[k], got[k]), k
        assert not list((ws_dist / "caches" / ref.cache_key / "pending").iterdir())

    first = torchrun(args, ws_dist)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("tl extract:") == 1  # only rank 0 prints the summary
    assert "33 extracted, 0 from cache" in first.stdout and "2 processes" in first.stdout
    assert len(list((ws_dist / "runs").iterdir())) == 1  # only rank 0 trains and saves the head
    compare()

    write_image(data / "green" / "added.jpg", (30, 210, 50), seed=7)
    changed = data / "blue" / "blue_003.jpg"
    write_image(changed, (0, 0, 250), seed=8)
    os.utime(changed, ns=(1, 2_000_000_000))
    second = torchrun([*args, "--no-train"], ws_dist)
    assert second.returncode == 0, second.stderr
    assert "2 extracted, 32 from cache" in second.stdout
    compare()


def test_error_lines_name_the_rank(image_folder, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from tl_cli.cli import app

    monkeypatch.setenv("RANK", "1")  # WORLD_SIZE stays 1: no process group, only the message changes
    res = CliRunner().invoke(app, ["extract", str(tmp_path / "nowhere"), "-b", "lenet5", "--no-pretrained"])
    assert res.exit_code == 2
    assert "rank 1: error: dataset folder not found" in res.output
    assert "Traceback" not in res.output
