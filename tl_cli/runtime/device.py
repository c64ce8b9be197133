"""Choosing the device and the settings that make each one fast (and, on request, deterministic).

Precision policy (one for every command, so that what training reports is what serving gets):
    - features (`tl extract`, the LP-FT probe), validation, prediction, evaluation and export
      run in float32 on every device (on CUDA cuDNN may use TF32 for convolutions, torch's
      default, which keeps them within ~1e-3 of the CPU's);
    - only the forward/backward of a training step runs in reduced precision on CUDA: bf16
      autocast on GPUs with native bf16 (Ampere and later), float16 autocast with a GradScaler
      on older ones (T4, V100), where bf16 would be emulated and slow.
"""

from __future__ import annotations

import os

from tl_cli.errors import ConfigError
from tl_cli.runtime.env import env_flag

DETERMINISTIC_ENV = "TL_DETERMINISTIC"
# Files whose presence means an NVIDIA driver may be reachable: Linux (/proc, /dev) and WSL2
# (/dev/dxg, where /proc/driver/nvidia does not exist).
_DRIVER_HINTS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")


def resolve_device(name: str = "auto"):
    """The torch.device for a --device value, bound as this process's current CUDA device.

    "auto" -> CUDA when present, else CPU. An explicit "cuda" without a GPU, or "cuda:N" with
    N at or above the number of visible GPUs, is a ConfigError (one line, not torch's "invalid
    device ordinal" later). A CUDA device is made the current one (`torch.cuda.set_device`), so
    pinned memory and the DataLoader's pin thread use it instead of creating a context on GPU 0.

    Raises:
        ConfigError: unknown name, no CUDA, or a GPU index that does not exist.
    """
    import torch

    if name in (None, "", "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise ConfigError(f"unknown device {name!r}", hint="use auto, cpu, cuda or cuda:N") from exc
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available", hint="use --device cpu")
    n = torch.cuda.device_count()
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.index >= n:
        raise ConfigError(f"--device {name}: this machine has {n} visible GPU{'s' if n != 1 else ''} "
                          f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})",
                          hint="pick an existing GPU, or check CUDA_VISIBLE_DEVICES")
    bind(dev)
    return dev


def bind(dev) -> None:
    """Make `dev` the current CUDA device of this process (no-op for the CPU)."""
    if getattr(dev, "type", None) == "cuda":
        import torch

        torch.cuda.set_device(dev)
        configure_cuda()


def device_type(name: str = "auto") -> str:
    """"cpu" or "cuda" for a --device value, without importing torch when the answer is plain.

    Importing torch costs seconds of start-up; a machine with no sign of an NVIDIA driver cannot
    have CUDA, so "auto" resolves to "cpu" there for free. Any sign of one (including WSL2's
    /dev/dxg, and containers that show /dev/nvidia* but not /proc/driver/nvidia) asks torch, so
    extract/predict decide exactly as fine-tuning does.
    """
    if name in (None, "", "auto"):
        if os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not _driver_hint():
            return "cpu"  # "" hides every GPU from CUDA; no driver: no CUDA
        return resolve_device(name).type
    if name == "cpu":
        return "cpu"
    return resolve_device(name).type


def _driver_hint() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return True
    return any(os.path.exists(p) for p in _DRIVER_HINTS)


def deterministic() -> bool:
    """TL_DETERMINISTIC=1: deterministic CUDA kernels and no autotuning (slower; see README, GPU)."""
    return env_flag(DETERMINISTIC_ENV)


def configure_cuda() -> None:
    """cuDNN autotuning on (tl's inputs have a fixed size), unless TL_DETERMINISTIC asks for
    bit-reproducible runs: then deterministic kernels only and cuBLAS with a fixed workspace."""
    import torch

    if deterministic():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


def bf16_native(dev=None) -> bool:
    """True when the GPU computes bf16 natively (compute capability 8.0+), not by emulation.

    `torch.cuda.is_bf16_supported()` also answers True for emulated bf16 in recent torch;
    `including_emulation=False` (torch >= 2.3) asks for native support only.
    """
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no such argument, and no emulation either
        return bool(torch.cuda.is_bf16_supported())


def train_precision(dev) -> str:
    """Autocast dtype of training steps on `dev`: "bf16", "fp16" (with a GradScaler) or "float32"."""
    if getattr(dev, "type", "cpu") != "cuda":
        return "float32"
    return "bf16" if bf16_native(dev) else "fp16"

