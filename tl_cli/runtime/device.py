"""Choosing the device and the settings that make each one fast."""

from __future__ import annotations

import os

from tl_cli.errors import ConfigError


def resolve_device(name: str = "auto"):
    """"auto" -> CUDA when present, else CPU. Explicit "cuda" without a GPU is an error."""
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}", hint="use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available", hint="use --device cpu")
    return dev


def device_type(name: str = "auto") -> str:
    """"cpu" or "cuda" for a --device value, without importing torch when the answer is plain.

    Importing torch costs seconds of start-up; a machine without the NVIDIA driver cannot have
    CUDA, so "auto" resolves to "cpu" there for free.
    """
    if name in (None, "", "auto"):
        if not os.path.exists("/proc/driver/nvidia/version") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
            return "cpu"
        return resolve_device(name).type
    if name == "cpu":
        return "cpu"
    return resolve_device(name).type
