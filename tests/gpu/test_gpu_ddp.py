"""DDP over NCCL: one GPU process under torchrun, 2 GPUs against 1, --sync-bn."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.gpu import GPU, needs_2_gpus, run_dir_of, torchrun

pytestmark = GPU

# No augmentation or dropout, SGD: steps that do not depend on per-rank random draws.
ARGS = ["-b", "lenet5", "--no-pretrained", "--dropout", "0", "--epochs", "2", "--batch-size", "8",
        "--workers", "1", "--patience", "0", "--seed", "3", "--no-augment", "--optimizer", "sgd",
        "--head-init", "random", "--device", "cuda"]


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory):
    from tests.helpers.images import make_folder

    return make_folder(tmp_path_factory.mktemp("ddp") / "data", n_per_class=12)


def _weights(run_dir):
    from tl_cli.runs.store import load_run

    return load_run(run_dir).tensors()


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        d = (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0
        assert d <= atol, (k, d)


def test_torchrun_with_one_process_trains_on_its_gpu(ddp_data, tmp_path):
    p = torchrun(["finetune", str(ddp_data), "--freeze", "2", *ARGS], tmp_path / "ws", nproc=1)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "; cuda" in p.stderr  # the run line names the device
    assert (run_dir_of(tmp_path / "ws") / "model.safetensors").is_file()


@needs_2_gpus
def test_two_gpus_train_the_weights_of_one_gpu_with_the_same_global_batch(ddp_data, tmp_path):
    p = torchrun(["finetune", str(ddp_data), "--freeze", "2", *ARGS], tmp_path / "two", nproc=2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "cuda x 2 processes" in p.stderr
    one = torchrun(["finetune", str(ddp_data), "--freeze", "2", *ARGS], tmp_path / "one", nproc=1)
    assert one.returncode == 0, one.stderr[-3000:]
    # Not bit for bit: NCCL sums in another order, and mixed precision rounds (bf16 steps).
    _close(_weights(run_dir_of(tmp_path / "one")), _weights(run_dir_of(tmp_path / "two")), atol=5e-3)


@needs_2_gpus
def test_sync_bn_normalises_over_the_global_batch(ddp_data, tmp_path):
    """retrain with trained batch norms: with --sync-bn 2 x 4 images behave as 1 x 8 (without it, not)."""
    args = [a for a in ARGS] + ["--sync-bn"]
    two = torchrun(["retrain", str(ddp_data), *args], tmp_path / "two", nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = torchrun(["retrain", str(ddp_data), *ARGS], tmp_path / "one", nproc=1)
    assert one.returncode == 0, one.stderr[-3000:]
    ckpt = torch.load(run_dir_of(tmp_path / "two") / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert any(k.endswith("running_mean") for k in ckpt["model"])  # LeNet-5 here has batch norms that train
    _close(_weights(run_dir_of(tmp_path / "one")), _weights(run_dir_of(tmp_path / "two")), atol=5e-3)
