"""Inference engines for the frozen backbone: one interface, numpy in, numpy out.

`TorchEngine` is eager PyTorch (the reference, and the engine on CUDA: float32, channels_last).
`OnnxEngine` runs the same network through onnxruntime on CPU: several times faster than eager
PyTorch there (benchmarks/README.md, "Measurements the design relies on"), with features within
1e-5 of eager float32. The ONNX file is exported once per (backbone, weights, torch version) and kept in the
per-user cache (`runtime.cache_dirs.engines_dir()`: $TL_CACHE_DIR/engines, else ~/.cache/tl/engines),
so later runs, new workspaces and `tl predict` never import torch for the backbone. Two processes
that need the same engine at once take a lock: one exports, the other waits and reuses the file.

Both engines take the batch already normalised, float32 NCHW (`data.preprocess.normalize`, which the
decode threads apply), and return (N, feature_dim) float32 features.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from tl_cli.errors import ConfigError
from tl_cli.runtime.onnx import OPSET

if TYPE_CHECKING:
    from tl_cli.backbones import BackboneSpec, WeightsChoice
    from tl_cli.data.preprocess import Preprocess

ENGINES = ("auto", "torch", "onnx")
# Bump when the export recipe changes, so stale files are not reused.
EXPORT_FORMAT = f"dynamo-opset{OPSET}-v1"


class Engine(Protocol):
    name: str
    precision: str  # "float32", or "bf16" where features differ beyond float32 tolerance
    takes_uint8: bool  # takes (N, S, S, 3) uint8 crops and normalises them itself (CUDA)

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def choose_engine(name: str, device_type: str) -> str:
    """Resolve "auto": onnxruntime on CPU when installed, torch otherwise (and always on CUDA)."""
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}", hint=f"use one of {', '.join(ENGINES)}")
    if name == "onnx":
        if device_type != "cpu":
            raise ConfigError("--engine onnx runs on the CPU only", hint="use --device cpu, or --engine torch on a GPU")
        if not onnxruntime_available():
            raise ConfigError("--engine onnx needs onnxruntime", hint="pip install onnxruntime, or use --engine torch")
        return "onnx"
    if name == "torch":
        return "torch"
    return "onnx" if device_type == "cpu" and onnxruntime_available() else "torch"


class TorchEngine:
    """Eager PyTorch `forward_features` in inference mode, float32 on every device.

    CPU: float32 channels_last (faster than NCHW, within 1e-5 of it; benchmarks/README.md). CUDA: float32 channels_last
    (cuDNN may use TF32, torch's default), the precision prediction and evaluation use too, so a
    head fitted on these features scores the same when served (runtime/device.py: precision
    policy). On CUDA the engine takes the batch as uint8 crops (`takes_uint8`): a quarter of the
    bytes to copy, and normalised on the GPU with the same float32 operations as
    `preprocess.normalize`, so the input is bit-identical to the CPU's. It also takes a float32 batch
    already on the GPU (the nvJPEG decoder's). `bf16=True` (tests, measurements) runs bf16
    autocast instead; its features differ by ~1e-2 and are never cached as float32 ones.
    """

    name = "torch"

    def __init__(self, net, device, bf16: bool = False, pre: Preprocess | None = None):
        import torch

        self.device = device
        self.bf16 = bool(bf16)
        self.precision = "bf16" if self.bf16 else "float32"
        self.pre = pre
        self.takes_uint8 = device.type == "cuda" and pre is not None
        self.net = net.to(device).eval().to(memory_format=torch.channels_last)

    def _input(self, x):
        import torch

        from tl_cli.data.preprocess import normalize_tensor

        t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        if t.dtype == torch.uint8:  # (N, S, S, 3) crops: normalised on the device
            t = normalize_tensor(t.to(self.device, non_blocking=True).permute(0, 3, 1, 2), self.pre)
        return t.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def __call__(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = self._input(x)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                return self.net.forward_features(t).float().cpu().numpy()


class OnnxEngine:
    """onnxruntime on CPU over an exported `forward_features` graph (dynamic batch)."""

    name = "onnx"
    precision = "float32"
    takes_uint8 = False

    def __init__(self, path: Path, threads: int | None = None):
        from tl_cli.runtime.onnx import ort_session

        self.path = Path(path)
        self.session = ort_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def engine_fingerprint(spec: BackboneSpec, choice: WeightsChoice) -> str:
    """What an exported graph depends on: backbone, weights, input size, torch and export recipe."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:  # pragma: no cover - torch is a hard dependency
        torch_version = "?"
    ident = {
        "backbone": spec.name,
        "weights": choice.identity,
        "input_size": spec.preprocess.input_size,
        "torch": torch_version,
        "export": EXPORT_FORMAT,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def onnx_path(engines_dir: Path, spec: BackboneSpec, choice: WeightsChoice) -> Path:
    return Path(engines_dir) / f"{spec.name}-{engine_fingerprint(spec, choice)}.onnx"


def _features_module(net):
    """The module that is exported: image batch -> penultimate features."""
    import torch

    class Features(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.forward_features(x)

    return Features(net).eval()


def export_onnx(net, input_size: int, path: Path, verify: bool = False) -> Path:
    """Export `net.forward_features` to a single ONNX file at `path` (atomic), batch dimension dynamic.

    With `verify`, the file is checked (`_verify_export`) before it is renamed into place: a file
    that fails never appears at `path`.
    """
    from tl_cli.runtime.onnx import export_onnx as export

    check = (lambda tmp: _verify_export(net, input_size, tmp)) if verify else None
    return export(_features_module(net), (3, input_size, input_size), path, "x", "features", check=check)


def export_once(build_net, input_size: int, path: Path) -> bool:
    """Export `build_net()` to `path` unless it is there already; True when this call exported it.

    Under an exclusive lock on `<folder>/.<file>.lock`, so concurrent processes export once: the
    others wait, then find the file. The export is written atomically and verified (onnxruntime
    loads it and matches eager PyTorch on one image) before it is renamed into place.
    """
    from tl_cli.runtime.locks import exclusive_lock, remove_unlocked_temporaries

    path = Path(path)
    with exclusive_lock(path.parent / f".{path.name}.lock"):
        if path.is_file():
            return False
        remove_unlocked_temporaries(path.parent, path.name)  # left by a killed exporter (we hold the lock)
        export_onnx(build_net(), input_size, path, verify=True)
        return True


def _verify_export(net, input_size: int, onnx_file: Path) -> None:
    """Raise ExportError unless `onnx_file` loads and gives eager float32 features on one image."""
    import torch

    from tl_cli.errors import ExportError
    from tl_cli.runtime.onnx import ort_session

    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net.forward_features(x).numpy()
    sess = ort_session(onnx_file, threads=1)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != ref.shape or not np.allclose(got, ref, rtol=1e-3, atol=1e-4):
        raise ExportError(f"the ONNX export of {onnx_file.name} does not reproduce PyTorch's features")


def make_engine(name: str, spec: BackboneSpec, choice: WeightsChoice, device: str, engines_dir: Path,
                build_net, threads: int | None = None) -> tuple[Engine, list[str]]:
    """Build the engine `name` ("auto", "torch", "onnx") for `device` ("auto", "cpu", "cuda:N").

    `build_net()` returns the eager backbone; it is only called when needed (torch engine, or an
    ONNX export that is not cached yet), so a cached ONNX engine on a CPU machine never imports
    torch (seconds of start-up; benchmarks/README.md). If the export fails under "auto", the torch engine is used
    and a note says why.

    Returns:
        (engine, notes): notes are lines for the user (an export happened, a fallback was taken).

    Example:
        >>> eng, notes = make_engine("auto", spec, choice, "cpu", engines_dir(), build)
        >>> eng(normalize(crops, spec.preprocess)).shape
        (32, 1280)
    """
    from tl_cli.runtime.device import device_type, resolve_device

    kind = choose_engine(name, device_type(device))
    notes: list[str] = []
    if kind == "onnx":
        path = onnx_path(engines_dir, spec, choice)
        try:
            if not path.is_file() and export_once(build_net, spec.preprocess.input_size, path):
                notes.append(f"exported the {spec.name} backbone to ONNX once (kept for every workspace): {path}")
            return OnnxEngine(path, threads), notes
        except Exception as exc:  # noqa: BLE001 - any exporter/runtime failure falls back to torch
            if name == "onnx":
                raise ConfigError(f"ONNX export of {spec.name} failed: {type(exc).__name__}: {str(exc)[:200]}",
                                  hint="use --engine torch") from exc
            notes.append(f"onnxruntime could not run {spec.name} ({type(exc).__name__}); used eager PyTorch")
    return TorchEngine(build_net(), resolve_device(device), pre=spec.preprocess), notes
