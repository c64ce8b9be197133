"""Inference engines for the frozen backbone: one interface, numpy in, numpy out.

`TorchEngine` is eager PyTorch (the reference, and the engine on CUDA: float32, channels_last).
`OnnxEngine` runs the same network through onnxruntime on CPU: measured on our 2-core machine it
is ~3x eager channels_last and ~10x eager NCHW float32, with features within 1e-5 of eager
float32. The ONNX file is exported once per (backbone, weights, torch version) and kept in the
per-user cache (`runtime.cache_dirs.engines_dir()`: $TL_CACHE_DIR/engines, else ~/.cache/tl/engines),
so later runs, new workspaces and `tl predict` never import torch for the backbone. Two processes
that need the same engine at once take a lock: one exports, the other waits and reuses the file.

Both engines take the batch already normalised, float32 NCHW (see `normalize_image`, which the
decode threads apply), and return (N, feature_dim) float32 features.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from tl_cli.errors import ConfigError

if TYPE_CHECKING:
    from tl_cli.backbones import BackboneSpec, WeightsChoice
    from tl_cli.data.preprocess import Preprocess

ENGINES = ("auto", "torch", "onnx")
# Bump when the export recipe changes, so stale files are not reused.
EXPORT_FORMAT = "dynamo-opset18-v1"


class Engine(Protocol):
    name: str
    precision: str  # "float32", or "bf16" where features differ beyond float32 tolerance
    takes_uint8: bool  # takes (N, S, S, 3) uint8 crops and normalises them itself (CUDA)

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def cpu_count() -> int:
    """Cores this process may use (affinity-aware, unlike os.cpu_count).

    Under torchrun the node's cores are shared by its LOCAL_WORLD_SIZE processes, so each rank
    sizes its decode threads and onnxruntime pool to its share instead of oversubscribing.
    """
    from tl_cli.runtime.distributed import env_info

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, env_info().local_world_size))


@functools.lru_cache(maxsize=16)
def _lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: channel c's network input for each uint8 value v, computed with the float32
    operations of `preprocess.to_tensor` in its order ((v / 255 - mean) / std), so exactly its values."""
    x = np.broadcast_to(np.arange(256, dtype=np.float32), (3, 256)).copy()
    x /= np.float32(255.0)
    x -= np.asarray(mean, dtype=np.float32)[:, None]
    x /= np.asarray(std, dtype=np.float32)[:, None]
    return x


def normalize_image(crop: np.ndarray, pre: "Preprocess") -> np.ndarray:
    """(S, S, 3) uint8 crop -> (3, S, S) float32, bit-identical to `preprocess.to_tensor`.

    A uint8 has 256 values, so the per-channel result is looked up in a table computed with
    to_tensor's float32 operations: exactly equal, and cheaper than computing it per pixel (a
    224 x 224 crop: 0.4 ms instead of 0.9 ms here, of the ~5 ms an image costs the decode
    threads). numpy releases the GIL in the lookup, so decode threads can run it beside the network.
    """
    lut = _lut(pre.mean, pre.std)
    return np.stack([lut[c][crop[:, :, c]] for c in range(3)])


def normalize_batch(u8: np.ndarray, pre: "Preprocess") -> np.ndarray:
    """(N, S, S, 3) uint8 crops -> (N, 3, S, S) float32, bit-identical to `preprocess.to_tensor`."""
    lut = _lut(pre.mean, pre.std)
    return np.stack([lut[c][u8[..., c]] for c in range(3)], axis=1)


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

    CPU: float32 channels_last (2-3x NCHW, within 1e-5 of it). CUDA: float32 channels_last
    (cuDNN may use TF32, torch's default), the precision prediction and evaluation use too, so a
    head fitted on these features scores the same when served (runtime/device.py: precision
    policy). On CUDA the engine takes the batch as uint8 crops (`takes_uint8`): a quarter of the
    bytes to copy, and normalised on the GPU with the same float32 operations as
    `normalize_batch`, so the input is bit-identical to the CPU's. It also takes a float32 batch
    already on the GPU (the nvJPEG decoder's). `bf16=True` (tests, measurements) runs bf16
    autocast instead; its features differ by ~1e-2 and are never cached as float32 ones.
    """

    name = "torch"

    def __init__(self, net, device, bf16: bool = False, pre: "Preprocess | None" = None):
        import torch

        self.device = device
        self.bf16 = bool(bf16)
        self.precision = "bf16" if self.bf16 else "float32"
        self.pre = pre
        self.takes_uint8 = device.type == "cuda" and pre is not None
        self.net = net.to(device).eval().to(memory_format=torch.channels_last)
        if pre is not None:  # uint8 input is accepted on any device; CUDA is where it pays
            self._mean = torch.tensor(pre.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            self._std = torch.tensor(pre.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            # A device tensor, not a Python number: CUDA divides by a host scalar as a multiply by
            # its reciprocal, which can differ from numpy's division in the last bit.
            self._255 = torch.tensor(255.0, dtype=torch.float32, device=device)

    def _input(self, x):
        import torch

        t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        if t.dtype == torch.uint8:  # (N, S, S, 3) crops: the normalisation of normalize_batch, on the device
            t = t.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            t = t.div_(self._255).sub_(self._mean).div_(self._std)
        return t.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def __call__(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = self._input(x)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                return self.net.forward_features(t).float().cpu().numpy()


def session_options(threads: int | None = None):
    """onnxruntime options for throughput: all graph optimisations, one intra-op thread per core,
    threads that sleep rather than spin when idle."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # a CNN is a chain; parallel mode only adds overhead
    so.intra_op_num_threads = threads or cpu_count()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: the CLI's output is ours
    # No busy-waiting between operators: the decode threads need those cores while the network
    # runs. Measured on the 2-core machine (load 11-12, side by side): extraction 13.3 and 12.2
    # images/s without spinning, 10.8 and 11.0 with it; the forward pass alone did not change
    # beyond the noise.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxEngine:
    """onnxruntime on CPU over an exported `forward_features` graph (dynamic batch)."""

    name = "onnx"
    precision = "float32"
    takes_uint8 = False

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), session_options(threads), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def engine_fingerprint(spec: "BackboneSpec", choice: "WeightsChoice") -> str:
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


def onnx_path(engines_dir: Path, spec: "BackboneSpec", choice: "WeightsChoice") -> Path:
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

    The torch.export-based exporter is used: its graph runs ~1.5x faster in onnxruntime than the
    legacy TorchScript exporter's on EfficientNet-Lite0 (measured side by side).
    """
    import contextlib
    import io
    import warnings

    import torch

    from tl_cli.runtime.atomic import atomic_path

    module = _features_module(net)
    x = torch.zeros(2, 3, input_size, input_size)  # batch 2: batch 1 would be specialised away
    batch = torch.export.Dim("batch", min=1, max=65536)
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(tmp), input_names=["x"], output_names=["features"],
                          dynamo=True, dynamic_shapes=({0: batch},), external_data=False, verbose=False)
        if verify:  # before the rename: a file that fails never appears at `path`
            _verify_export(net, input_size, tmp)
    return path


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
    import onnxruntime as ort
    import torch

    from tl_cli.errors import ExportError

    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net.forward_features(x).numpy()
    sess = ort.InferenceSession(str(onnx_file), session_options(1), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != ref.shape or not np.allclose(got, ref, rtol=1e-3, atol=1e-4):
        raise ExportError(f"the ONNX export of {onnx_file.name} does not reproduce PyTorch's features")


def make_engine(name: str, spec: "BackboneSpec", choice: "WeightsChoice", device: str, engines_dir: Path,
                build_net, threads: int | None = None) -> tuple[Engine, list[str]]:
    """Build the engine `name` ("auto", "torch", "onnx") for `device` ("auto", "cpu", "cuda:N").

    `build_net()` returns the eager backbone; it is only called when needed (torch engine, or an
    ONNX export that is not cached yet), so a cached ONNX engine on a CPU machine never imports
    torch (~2-4 s of start-up here). If the export fails under "auto", the torch engine is used
    and a note says why.

    Returns:
        (engine, notes): notes are lines for the user (an export happened, a fallback was taken).

    Example:
        >>> eng, notes = make_engine("auto", spec, choice, "cpu", engines_dir(), build)
        >>> eng(normalize_batch(crops, spec.preprocess)).shape
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
