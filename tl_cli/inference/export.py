"""Exporting a run's whole classifier (backbone + head) to ONNX or TorchScript, and running ONNX.

The exported network takes what `Preprocess` produces: float32 NCHW images, RGB scaled to [0, 1],
resized and centre-cropped, then normalised with the backbone's mean/std. It returns logits.
Everything a consumer needs to feed it (preprocessing, class names, tensor names) is written as
JSON beside the model: `model.onnx` -> `model.onnx.json`.

Every export is checked before it is kept: the exported file is run on sample inputs (real
images from the run's dataset when they are still there) and compared with eager PyTorch; if
they differ beyond float32 tolerance the export fails and nothing is left at the output path.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tl_cli.data.preprocess import Preprocess
from tl_cli.errors import ConfigError, ExportError
from tl_cli.inference.onnx_model import INPUT, OUTPUT, sidecar_path
from tl_cli.runs.store import Run, load_run, versions
from tl_cli.runtime.atomic import atomic_path, write_json
from tl_cli.runtime.fields import check_field_types
from tl_cli.runtime.onnx import OPSET, export_onnx, ort_session

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


@dataclass(frozen=True)
class ExportConfig:
    """How to export and how strictly to check the result.

    Attributes:
        format: "onnx" or "torchscript".
        opset: ONNX opset (runtime/onnx.py: the one the backbone engine uses too).
        atol, rtol: allowed difference of logits from eager PyTorch (float32 rounding level).
        n_samples: images the export is checked on (3, so the check also exercises a batch size
            other than the one used for tracing).
    """

    format: str = "onnx"
    opset: int = OPSET
    atol: float = 1e-4
    rtol: float = 1e-4
    n_samples: int = 3

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.format not in FORMATS:
            raise ConfigError(f"unknown export format {self.format!r}", hint=f"use one of {', '.join(FORMATS)}")
        if self.n_samples < 1:
            raise ConfigError("n_samples must be >= 1")
        if self.opset < OPSET:  # the exporter's first opset (the type is checked above)
            raise ConfigError(f"opset must be an integer >= {OPSET}, got {self.opset!r}")
        if not (self.atol >= 0 and self.rtol >= 0):
            raise ConfigError(f"atol and rtol must be >= 0, got {self.atol!r} and {self.rtol!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    max_abs_diff: float
    n_samples: int
    sample_source: str  # "images from <root>", "given images" or "random inputs (...)"
    seconds: float


def sample_inputs(run: Run, pre: Preprocess, n: int, paths: list[Path] | None = None):
    """(n, 3, S, S) float32 inputs: the given images, else images spread over the run's dataset, else noise.

    Real images matter: they exercise the value ranges the model sees in use, where random
    noise can hide numerical differences (or show ones that never occur).
    """
    import torch

    from tl_cli.data.preprocess import load_tensor
    from tl_cli.errors import ImageError

    source = "given images"
    if paths is None:
        paths, source = _dataset_images(run, n), f"images from {run.meta.dataset.root}"
    tensors = []
    for p in paths:
        try:
            tensors.append(load_tensor(p, pre))
        except ImageError:
            continue
        if len(tensors) == n:
            break
    if tensors:
        return torch.stack(tensors), source
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 3, pre.input_size, pre.input_size, generator=g)
    return noise, "random inputs (the run's images are not on this machine)"


def _dataset_images(run: Run, n: int) -> list[Path]:
    from tl_cli.data.scan import scan_dataset
    from tl_cli.errors import DataError

    root = run.meta.dataset.root
    if not root or not Path(root).is_dir():
        return []
    try:
        ds = scan_dataset(root, min_classes=1)
    except DataError:
        return []
    step = max(1, len(ds.samples) // (2 * n))  # spread over classes (samples are class-ordered)
    picks = ds.samples[::step][: 2 * n]  # twice as many as needed, in case some are unreadable
    return [ds.abspath(s) for s in picks]


def _write_onnx(net, example, path: Path, cfg: ExportConfig) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it; fail with a clear message if absent)
    except ImportError as exc:
        raise ExportError("ONNX export needs the onnx package", hint="pip install onnx onnxscript") from exc
    export_onnx(net, tuple(example.shape[1:]), path, INPUT, OUTPUT, cfg.opset)


def _write_torchscript(net, example, path: Path, cfg: ExportConfig) -> None:
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(net, example)
    # Saved to memory, then written by Python: torch's own file writer ends the whole process with
    # a C++ abort when the disk fills, where a Python write raises an OSError we can report.
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    path.write_bytes(buf.getbuffer())


MODEL_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".torchscript": "torchscript"}


def _check_format_suffix(output: Path, fmt: str) -> None:
    """A TorchScript file named .onnx (or the reverse) would fail later, wherever it is loaded."""
    named = MODEL_SUFFIXES.get(output.suffix.lower())
    if named is not None and named != fmt:
        raise ConfigError(f"--output {output} is named as {named} but --format is {fmt}",
                          hint=f"name it {output.with_suffix(FORMATS[fmt]).name}, or pass --format {named}")


def _check_sidecar(sidecar: Path) -> None:
    """The description goes beside the model: it may replace an earlier one, never the user's file."""
    if sidecar.is_dir():
        raise ConfigError(f"{sidecar} is a folder; the export's description goes there",
                          hint="choose another --output name")
    if sidecar.exists():
        try:
            doc = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            doc = None
        if not (isinstance(doc, dict) and {"format", "classes", "preprocess"} <= set(doc)):
            raise ConfigError(f"{sidecar} exists and is not a tl export description; the export's would replace it",
                              hint="choose another --output name, or remove that file yourself")


def run_exported(path: Path, fmt: str, x) -> np.ndarray:
    """Logits of an exported file on input `x` (float32 NCHW tensor)."""
    import torch

    if fmt == "onnx":
        return ort_session(path).run([OUTPUT], {INPUT: x.numpy()})[0]
    with torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(x).numpy()


def export_run(run: Run | str | Path, cfg: ExportConfig = ExportConfig(), output: str | Path | None = None,
               sample_paths: list[Path] | None = None) -> ExportResult:
    """Export a run's classifier and check it against eager PyTorch.

    Args:
        run: the run, or its folder.
        output: file to write (default `<run>/model.onnx` or `<run>/model.pt`); its JSON goes beside it.
        sample_paths: images to check on (default: images of the run's dataset, else noise).

    Raises:
        ExportError: the exporter failed, or the export's logits differ from PyTorch's beyond
            cfg.atol/rtol (nothing is left at `output` then).

    Example:
        >>> export_run(load_run(".tl/runs/20250101-120000-extract-photos"), ExportConfig("onnx")).max_abs_diff
        3.1e-06
    """
    import torch

    from tl_cli.inference.load import build_from_run
    from tl_cli.runtime.outputs import check_output_file

    run = run if isinstance(run, Run) else load_run(run)
    t0 = time.perf_counter()
    suffix = FORMATS[cfg.format]
    output = Path(output) if output else run.dir / f"model{suffix}"
    if output.suffix.lower() == ".json":
        raise ConfigError(f"{output}: the export's own JSON is written beside it; choose another name")
    # Only an earlier export may be overwritten, never a photo, and nothing goes into the run's data.
    check_output_file(output, (suffix,), [run.meta.dataset.root] if run.meta.dataset.root else [])
    _check_format_suffix(output, cfg.format)
    _check_sidecar(sidecar_path(output))
    pre = run.preprocess
    net = build_from_run(run).cpu().float().eval()
    x, source = sample_inputs(run, pre, cfg.n_samples, sample_paths)
    with torch.no_grad():
        ref = net(x).numpy()
    example = torch.zeros(2, 3, pre.input_size, pre.input_size)  # batch 2 != check batch: tests the dynamic axis
    with atomic_path(output, suffix=suffix) as tmp, warnings.catch_warnings():
        # torch flags TorchScript and the TorchScript-based ONNX exporter as deprecated; both still
        # work, and the check below is what tells whether the result is right.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # Tracing turns shape-dependent values (e.g. TF "SAME" padding) into constants; right here,
        # because the input size is fixed by the preprocessing (only the batch varies).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            (_write_onnx if cfg.format == "onnx" else _write_torchscript)(net, example, tmp, cfg)
            got = run_exported(tmp, cfg.format, x)
        except (ExportError, OSError):
            raise  # OSError: a failed write (disk full, read-only), which atomic_path reports as such
        except Exception as exc:  # noqa: BLE001 - exporter failures come in many types
            raise ExportError(f"{cfg.format} export of {run.meta.backbone} failed: {type(exc).__name__}: {exc}") from exc
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        if not (got.shape == ref.shape and np.allclose(got, ref, atol=cfg.atol, rtol=cfg.rtol)):
            raise ExportError(
                f"the {cfg.format} export differs from PyTorch by up to {diff:.3g} on {len(x)} sample inputs "
                f"(allowed {cfg.atol:g} + {cfg.rtol:g} x |value|); nothing was written",
                hint="report this with the backbone name; try the other --format meanwhile",
            )
    sidecar = sidecar_path(output)
    write_json(sidecar, describe_export(run, cfg, output, pre, diff, len(x), source))
    return ExportResult(output, sidecar, diff, len(x), source, time.perf_counter() - t0)


def describe_export(run: Run, cfg: ExportConfig, output: Path, pre: Preprocess, diff: float, n: int, source: str) -> dict:
    """The JSON written beside an export: everything needed to feed it and read its output."""
    s = pre.input_size
    return {
        "format": cfg.format,
        "file": output.name,
        "classes": run.classes,
        "backbone": run.meta.backbone,
        "preprocess": pre.to_dict(),
        "input": {
            "name": INPUT, "shape": ["batch", 3, s, s], "dtype": "float32", "layout": "NCHW, RGB",
            "recipe": "scale pixels to [0, 1]; resize the shorter side to resize_size; centre-crop input_size; "
                      "subtract mean and divide by std per channel",
        },
        "output": {"name": OUTPUT, "shape": ["batch", len(run.classes)],
                   "meaning": "logits; softmax gives probabilities in the order of classes"},
        "run": str(run.dir),
        "trained": run.meta.to_dict(),  # the whole RunMeta: evaluate reads the split from it
        "config": cfg.to_dict(),
        "check": {"max_abs_diff": diff, "n_samples": n, "inputs": source},
        "versions": versions(),
    }
