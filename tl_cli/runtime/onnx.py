"""ONNX in one place: exporting a torch module to an .onnx file, and opening one in onnxruntime.

Used by the backbone engine (features/engines.py: `forward_features` only, cached per backbone)
and by `tl export` (inference/export.py: the whole classifier). Both use the torch.export-based
exporter at one opset, with a dynamic batch dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tl_cli.errors import ExportError

OPSET = 18  # what the torch.export-based exporter targets; onnxruntime >= 1.14 runs it


def export_onnx(module, input_shape: tuple[int, ...], path: Path, input_name: str, output_name: str,
                opset: int = OPSET, check: Callable[[Path], None] | None = None) -> Path:
    """Export `module` (in eval mode, float32) to one ONNX file at `path` (atomic), batch dimension dynamic.

    `input_shape` is one input's shape without the batch, e.g. (3, 224, 224). `check(tmp)` may
    raise to reject the written file before it is renamed into place. The torch.export-based
    exporter is used: its graph runs faster in onnxruntime than the legacy TorchScript exporter's
    (benchmarks/README.md, "Measurements the design relies on").
    """
    import contextlib
    import io
    import warnings

    import torch

    from tl_cli.runtime.atomic import atomic_path

    x = torch.zeros(2, *input_shape)  # batch 2: batch 1 would be specialised away
    batch = torch.export.Dim("batch", min=1, max=65536)
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(tmp), input_names=[input_name], output_names=[output_name],
                          opset_version=opset, dynamo=True, dynamic_shapes=({0: batch},), external_data=False,
                          verbose=False)
        _check_opset(Path(tmp), opset)
        if check is not None:
            check(Path(tmp))
    return path


def _check_opset(path: Path, opset: int) -> None:
    """The exporter writes opset 18 when it cannot honour the one asked for (below 18, or newer than
    it knows) without saying so; the file's own opset must be the one requested and recorded."""
    import onnx

    from tl_cli.errors import ConfigError

    wrote = [o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")]
    if wrote != [opset]:
        raise ConfigError(f"the ONNX exporter cannot write opset {opset} (it wrote {', '.join(map(str, wrote))})",
                          hint=f"use an opset from {OPSET} up to what this torch supports (the default is {OPSET})")


def session_options(threads: int | None = None):
    """onnxruntime options for throughput: all graph optimisations, one intra-op thread per core,
    threads that sleep rather than spin when idle."""
    import onnxruntime as ort

    from tl_cli.runtime.distributed import cpu_count

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # a CNN is a chain; parallel mode only adds overhead
    so.intra_op_num_threads = threads or cpu_count()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: the CLI's output is ours
    # No busy-waiting between operators: the decode threads need those cores while the network
    # runs (extraction is faster without spinning: benchmarks/README.md).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def ort_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session over the file at `path` (see `session_options`).

    Raises:
        ExportError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError("running ONNX models needs onnxruntime", hint="pip install onnxruntime") from exc
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
