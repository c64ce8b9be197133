"""torch.distributed on CPU: real torchrun launches of 2 gloo processes compared with one process."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers.images import make_folder, write_image
from tests.helpers.paths import REPO
from tests.helpers.torchrun import free_port, torchrun
from tl_cli.errors import ConfigError
from tl_cli.features.extract import ExtractConfig, extract_features
from tl_cli.runs.workspace import Workspace
from tl_cli.runtime import distributed
from tl_cli.runtime.distributed import DistInfo, my_shard


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


def test_error_lines_name_the_rank(monkeypatch, tmp_path):
    """Also: [brackets] in a message (gloo's errors have them) are printed, not parsed as markup."""
    from typer.testing import CliRunner

    from tl_cli.cli import app

    monkeypatch.setenv("RANK", "1")  # WORLD_SIZE stays 1: no process group, only the message changes
    res = CliRunner().invoke(app, ["extract", str(tmp_path / "x[/y]"), "-b", "lenet5", "--no-pretrained"])
    assert res.exit_code == 2, res.output
    assert "rank 1: error: dataset folder not found" in res.output
    assert "x[/y]" in res.output.replace("\n", "")
    assert "Traceback" not in res.output


# ----------------------------------------------------------------------------- DDP fine-tuning

DDP_ARGS = ["-b", "lenet5", "--no-pretrained", "--freeze", "2", "--optimizer", "sgd", "--lr", "0.05",
            "--head-lr", "0.05", "--no-augment", "--dropout", "0", "--epochs", "6", "--batch-size", "4",
            "--workers", "0", "--patience", "0", "--seed", "3", "--head-init", "random"]


def ddp_reference_config():
    """The same run as DDP_ARGS, for one process in this one."""
    from tl_cli.finetune.config import FinetuneConfig

    return FinetuneConfig(backbone="lenet5", pretrained=False, freeze=2, optimizer="sgd", lr=0.05, head_lr=0.05,
                          augment=False, dropout=0.0, epochs=6, batch_size=4, workers=0, patience=0, seed=3,
                          head_init="random")


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc): torchrun starts each rank in its own session."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def run_dir_of(ws: Path) -> Path:
    return Path(Workspace.open(ws).state()["training_run"])


def assert_close_tensors(a: dict, b: dict, atol: float) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=atol), (k, (a[k].double() - b[k].double()).abs().max())


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    """36 images: 26 train (a multiple of the 2 ranks, so no rank repeats an image) and 10 val."""
    return make_folder(tmp_path_factory.mktemp("ddp") / "ddp_data", n_per_class=12)


# Random per rank: dropout and augmentation draw from each rank's own streams.
RANDOM_ARGS = ["-b", "lenet5", "--no-pretrained", "--freeze", "2", "--dropout", "0.3", "--epochs", "4",
               "--batch-size", "4", "--workers", "0", "--patience", "0", "--seed", "3"]


def two_process_run(data: Path, ws: Path, args: list[str]) -> Path:
    """An uninterrupted `torchrun --nproc-per-node 2 -m tl_cli finetune` (global batch 4 = 2 x 2)."""
    p = torchrun(["finetune", str(data), *args], ws)
    assert p.returncode == 0, p.stderr
    assert "cpu x 2 processes" in p.stderr
    assert p.stdout.count("tl finetune:") == 1  # one summary, rank 0's
    assert len(list((ws / "runs").iterdir())) == 1  # one run folder, written by rank 0
    return run_dir_of(ws)


@pytest.fixture(scope="module")
def ddp_two_process_run(ddp_data) -> Path:
    return two_process_run(ddp_data, ddp_data.parent / "ws", DDP_ARGS)


def test_ddp_finetune_equals_one_process_with_the_same_global_batch(ddp_data, ddp_two_process_run, tmp_path):
    """2 gloo ranks with 2 images each per step train the same weights as 1 process with 4 (SGD, seed 3)."""
    import torch

    from tl_cli.finetune.checkpoint import load_checkpoint
    from tl_cli.finetune.trainer import start
    from tl_cli.runs.store import load_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = start(ddp_data, ddp_reference_config(), Workspace.open(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    two = ddp_two_process_run
    ckpt_one, ckpt_two = load_checkpoint(one.run_dir), load_checkpoint(two)
    assert_close_tensors(ckpt_one["model"], ckpt_two["model"], atol=1e-6)  # after the last of 6 epochs
    assert_close_tensors(load_run(one.run_dir).tensors(), load_run(two).tensors(), atol=1e-6)  # the kept model
    from tl_cli.backbones import create_backbone

    init = {k: v for k, v in create_backbone("lenet5", pretrained=False)[0].state_dict().items() if k.endswith("fc1.weight")}
    assert len(init) == 1
    assert (ckpt_two["model"]["net.fc1.weight"] - next(iter(init.values()))).abs().max() > 1e-3  # trained layers moved
    for h1, h2 in zip(one.history, ckpt_two["history"], strict=True):  # metrics reduced over both ranks
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert h1[k] == pytest.approx(h2[k], abs=1e-6), (h1["epoch"], k)
    assert ckpt_two["best"]["epoch"] == one.best_epoch
    # which validation images the kept epoch got right, gathered from both ranks' shares in order
    assert ckpt_two["best"]["val_correct"] == ckpt_one["best"]["val_correct"]
    assert ckpt_one["best"]["val_correct"].startswith("10:")  # ddp_data's 10 validation images
    assert len(ckpt_two["rng_ranks"]) == 2  # each rank's random streams, for an exact resume


def test_ddp_probe_equals_one_process_probe(ddp_data, tmp_path):
    """--head-init probe under torchrun: rank 0 fits the probe and sends it; epoch 0 and the steps after
    it match one process. (Small learning rates and no label smoothing: on these easy images the probe
    is so confident that label smoothing makes huge gradients, which amplify the ranks' float rounding.)"""
    import dataclasses

    import torch

    from tl_cli.finetune.checkpoint import load_checkpoint
    from tl_cli.finetune.trainer import start

    # DDP_ARGS less its last two (--head-init random)
    args = [*DDP_ARGS[:-2], "--epochs", "2", "--lr", "0.001", "--head-lr", "0.001", "--label-smoothing", "0"]
    two = two_process_run(ddp_data, tmp_path / "two", args)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = dataclasses.replace(ddp_reference_config(), head_init="probe", epochs=2, lr=0.001, head_lr=0.001,
                                  warmup_epochs=None, label_smoothing=0.0)
        one = start(ddp_data, cfg, Workspace.open(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    ckpt_two = load_checkpoint(two)
    assert [h["epoch"] for h in ckpt_two["history"]] == [0, 1, 2]
    for h1, h2 in zip(one.history, ckpt_two["history"], strict=True):
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert h1[k] == pytest.approx(h2[k], rel=1e-6, abs=1e-6), (h1["epoch"], k)
    assert_close_tensors(load_checkpoint(one.run_dir)["model"], ckpt_two["model"], atol=1e-6)


def test_ddp_resume_after_a_kill_equals_the_uninterrupted_run(ddp_data, tmp_path):
    """torchrun and its ranks killed (SIGKILL) after an epoch, then `torchrun ... --resume`: bit for bit
    the uninterrupted run, dropout and augmentation included (each rank's random streams are restored)."""
    import signal
    import time

    import torch

    from tl_cli.finetune.checkpoint import load_checkpoint
    from tl_cli.runs.store import load_run

    ws = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TL_WORKSPACE=str(ws), TL_DIST_TIMEOUT_MIN="2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "tl_cli", "finetune", str(ddp_data), *RANDOM_ARGS]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_after = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        run = Workspace.open(ws).state().get("training_run")
        history = Path(run) / "history.csv" if run else None
        if history and history.exists() and len(history.read_text().splitlines()) >= 2:  # an epoch checkpointed (0: the probe)
            for pid in [*children(proc.pid), proc.pid]:  # both ranks and torchrun, as a lost machine would
                os.kill(pid, signal.SIGKILL)
            killed_after = load_checkpoint(Path(run))["epoch"]
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_after is not None and killed_after < 4, "the run ended before it could be killed"
    run = run_dir_of(ws)
    assert not (run / "meta.json").exists()

    p = torchrun(["finetune", "--resume"], ws)
    assert p.returncode == 0, p.stderr
    assert f"resuming after epoch {killed_after}" in p.stderr
    ref = two_process_run(ddp_data, tmp_path / "uninterrupted", RANDOM_ARGS)
    for a, b in ((load_checkpoint(run)["model"], load_checkpoint(ref)["model"]),
                 (load_run(run).tensors(), load_run(ref).tensors())):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_global_batch_must_split_evenly_over_ranks(ddp_data, monkeypatch):
    from tl_cli.finetune.config import FinetuneConfig
    from tl_cli.finetune.ddp import local_batch_size
    from tl_cli.finetune.trainer import start

    assert local_batch_size(8, DistInfo(rank=1, world_size=4)) == 2
    with pytest.raises(ConfigError, match="multiple of the 3 processes"):
        local_batch_size(8, DistInfo(rank=0, world_size=3))
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun would; refused before any process group or run folder
    ws = Workspace.open()
    with pytest.raises(ConfigError, match="--batch-size 5 is the global batch"):
        start(ddp_data, FinetuneConfig(backbone="lenet5", pretrained=False, batch_size=5), ws)
    assert not ws.runs.exists()


def test_sync_bn_needs_cuda(ddp_data):
    from tl_cli.finetune.config import FinetuneConfig
    from tl_cli.finetune.trainer import start

    cfg = FinetuneConfig(backbone="lenet5", pretrained=False, freeze=0, epochs=2, workers=0, device="cpu", sync_bn=True)
    ws = Workspace.open()
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        start(ddp_data, cfg, ws)
    assert not ws.runs.exists()  # refused before a run folder was made


def test_ranks_steps_together_are_the_one_process_steps(ddp_data):
    """The sampler property behind DDP == one process: step k of 2 ranks (2 images each) holds the
    images of step k of one process (4 images), and the order changes with the epoch."""
    from tl_cli.backbones import get_spec
    from tl_cli.data.scan import scan_dataset
    from tl_cli.finetune.data import make_loaders

    ds = scan_dataset(ddp_data)
    pre = get_spec("lenet5").preprocess
    one = make_loaders(ds, pre, 4, 0, False, 3, dist=DistInfo())
    ranks = [make_loaders(ds, pre, 4, 0, False, 3, dist=DistInfo(rank=r, world_size=2)) for r in range(2)]

    def steps(sampler, size):
        order = list(sampler)
        return [order[i:i + size] for i in range(0, len(order), size)]

    orders = []
    for epoch in (0, 1):
        for loaders in (one, *ranks):
            loaders.sampler.set_epoch(epoch)
        together = [sorted(a + b) for a, b in zip(steps(ranks[0].sampler, 2), steps(ranks[1].sampler, 2), strict=True)]
        assert together == [sorted(s) for s in steps(one.sampler, 4)]
        orders.append(list(one.sampler))
    assert orders[0] != orders[1] and sorted(orders[0]) == list(range(26))


def test_every_epoch_reshuffles(ddp_data, monkeypatch):
    from torch.utils.data.distributed import DistributedSampler

    from tl_cli.finetune.config import FinetuneConfig
    from tl_cli.finetune.trainer import start

    seen = []
    original = DistributedSampler.set_epoch
    monkeypatch.setattr(DistributedSampler, "set_epoch", lambda self, e: (seen.append(e), original(self, e)))
    start(ddp_data, FinetuneConfig(backbone="lenet5", pretrained=False, freeze=2, epochs=3, workers=0, patience=0),
          Workspace.open())
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("args, code", [(["--version"], 0), (["extract", "/no/such/folder"], 2)])
def test_a_process_that_joined_a_group_leaves_without_finalization(monkeypatch, capsys, args, code):
    """Under torchrun `tl` ends with os._exit (after flushing), so no gloo worker thread can need the
    GIL while Python finalizes (SIGABRT on a finished rank); the exit status is the command's."""
    from tl_cli.cli import main

    class Exited(Exception):
        pass

    def fake_exit(status):
        raise Exited(status)

    monkeypatch.setattr(sys, "argv", ["tl", *args])
    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(distributed, "_joined", True)
    with pytest.raises(Exited) as got:
        main()
    assert got.value.args == (code,)
    monkeypatch.setattr(distributed, "_joined", False)  # a single process exits as Python does
    with pytest.raises(SystemExit) as plain:
        main()
    assert plain.value.code == code


def test_a_rank_whose_peer_left_says_so_in_one_line(monkeypatch, capsys):
    """A rank waiting in a collective for one that failed gets gloo's 'Connection closed by peer': it
    says the other rank's error is the cause, not 'internal error' with gloo's text."""
    from tl_cli.cli.app import report_error

    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                        "[127.0.0.1]:10896. This is typically caused by a remote worker crashing. GLHF!")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert report_error(gloo) == 1
    said = " ".join(capsys.readouterr().err.split())
    assert "rank 1: stopped: another process of this torchrun job ended" in said and "internal error" not in said
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: such an error is unexpected, and said as one
    assert report_error(gloo) == 1
    assert "internal error: RuntimeError" in " ".join(capsys.readouterr().err.split())
