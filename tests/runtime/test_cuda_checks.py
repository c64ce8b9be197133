"""The CUDA device checks, shown on a CPU machine with torch.cuda monkeypatched.

Each test names the defect of issue 13 it covers (numbers as in the issue).
"""

from __future__ import annotations

import os

import pytest
import torch

from tl_cli.errors import ConfigError
from tl_cli.runtime import device as devmod
from tl_cli.runtime import distributed


@pytest.fixture
def fake_gpus(monkeypatch):
    """A machine with `n` visible GPUs as far as torch.cuda's queries go; records set_device."""
    calls: list = []

    def make(n: int, bf16_native: bool = True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: bf16_native or including_emulation)
        monkeypatch.setattr(devmod, "configure_cuda", lambda: calls.append("configured"))
        return calls

    return make


def test_2_cuda_index_beyond_the_gpu_count_is_one_clear_error(fake_gpus):
    fake_gpus(2)
    with pytest.raises(ConfigError, match=r"2 visible GPUs \(cuda:0 to cuda:1\)"):
        devmod.resolve_device("cuda:2")
    fake_gpus(1)
    with pytest.raises(ConfigError, match="1 visible GPU "):
        devmod.resolve_device("cuda:1")


def test_3_a_single_process_on_cuda_n_makes_it_the_current_device(fake_gpus):
    calls = fake_gpus(4)
    assert devmod.resolve_device("cuda:3") == torch.device("cuda", 3)
    assert calls == [torch.device("cuda", 3), "configured"]  # before any pinned memory or loader exists
    calls.clear()
    assert devmod.resolve_device("auto") == torch.device("cuda", 0)
    assert calls == [torch.device("cuda", 0), "configured"]
    calls.clear()
    assert devmod.resolve_device("cpu") == torch.device("cpu") and calls == []


@pytest.mark.parametrize("hint", ["/dev/dxg", "/dev/nvidiactl", "/proc/driver/nvidia/version"])
def test_7_auto_asks_torch_wherever_a_driver_may_be(fake_gpus, monkeypatch, hint):
    fake_gpus(1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(os.path, "exists", lambda p: p == hint)  # e.g. WSL2: /dev/dxg, no /proc/driver/nvidia
    assert devmod.device_type("auto") == "cuda"


def test_7_auto_without_any_driver_is_the_cpu_without_importing_torch_logic(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    monkeypatch.setattr(devmod, "resolve_device", lambda name: pytest.fail("asked torch"))
    assert devmod.device_type("auto") == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every GPU hidden
    monkeypatch.setattr(os.path, "exists", lambda p: True)
    assert devmod.device_type("auto") == "cpu"


def _torchrun(monkeypatch, local_rank: int, world: int = 4):
    for k, v in {"WORLD_SIZE": world, "RANK": local_rank, "LOCAL_RANK": local_rank, "LOCAL_WORLD_SIZE": world}.items():
        monkeypatch.setenv(k, str(v))


def test_8_one_gpu_per_rank_launchers_are_accepted(fake_gpus, monkeypatch):
    calls = fake_gpus(1)  # SLURM --gpus-per-task=1: each rank sees only its own GPU, as cuda:0
    _torchrun(monkeypatch, 3)
    assert distributed.rank_device("auto") == torch.device("cuda", 0)
    assert calls[0] == torch.device("cuda", 0)
    fake_gpus(4)
    assert distributed.rank_device("cuda") == torch.device("cuda", 3)
    fake_gpus(2)  # several visible but fewer than the local ranks: oversubscribed, refused
    with pytest.raises(ConfigError, match="LOCAL_RANK 3 but only 2 GPU"):
        distributed.rank_device("auto")
    with pytest.raises(ConfigError, match="every process would use the same GPU"):
        distributed.rank_device("cuda:1")
    assert distributed.rank_device("cpu") == torch.device("cpu")


def test_10_bf16_only_where_native_else_fp16_with_a_grad_scaler(fake_gpus):
    import warnings

    from tl_cli.finetune.step import Amp

    fake_gpus(1, bf16_native=True)
    amp = Amp(torch.device("cuda", 0))
    assert amp.dtype == "bf16" and amp.scaler is None
    fake_gpus(1, bf16_native=False)  # T4, V100: is_bf16_supported() says True only by emulation
    assert devmod.train_precision(torch.device("cuda", 0)) == "fp16"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler warns that this CPU machine has no CUDA
        amp = Amp(torch.device("cuda", 0))
    assert amp.dtype == "fp16" and amp.scaler is not None
    assert devmod.train_precision(torch.device("cpu")) == "float32"


@pytest.mark.parametrize("message", [
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA error: cudaErrorMemoryAllocation",
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer of size 1024",
])
def test_11_library_allocation_failures_are_out_of_memory(message):
    from tl_cli.runtime.oom import is_oom

    assert is_oom(RuntimeError(message))


def test_11_other_library_errors_are_not():
    from tl_cli.runtime.oom import is_oom

    assert not is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"))
    assert not is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED"))
    assert not is_oom(ValueError("out of memory"))  # not an error an allocator raises


def test_13_decode_threads_and_workers_scale_with_the_cores(monkeypatch):
    from tl_cli.data import decode
    from tl_cli.finetune import data

    monkeypatch.setattr(distributed, "cpu_count", lambda: 16)
    assert decode.default_threads() == 16  # no cap of 8 on a 16-core GPU machine
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert data.default_workers("cuda") == 15 and data.default_workers("cpu") == 8


def test_13_cudnn_autotuning_unless_deterministic(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.delenv(devmod.DETERMINISTIC_ENV, raising=False)
    devmod.configure_cuda()
    assert torch.backends.cudnn.benchmark is True
    monkeypatch.setenv(devmod.DETERMINISTIC_ENV, "1")
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, warn_only=False: None)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    devmod.configure_cuda()
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_13_training_speed_leaves_out_the_first_step():
    import time

    from tl_cli.finetune.epoch import _speed

    t0 = time.perf_counter() - 10.0  # a first step that took 9 s (CUDA start-up, autotuning)
    t_first = time.perf_counter() - 1.0
    assert 90 <= _speed(132, 32, t0, t_first) <= 100  # 100 images in the last ~1 s
    assert _speed(32, 32, t0, t_first) == pytest.approx(3.2, rel=0.05)  # one step only: overall
