"""`tl export`."""

from __future__ import annotations

from rich.markup import escape

from tl_cli.cli.app import command, err, out, workspace
from tl_cli.cli.options import FormatOpt, ModelOpt, OutputOpt, WorkspaceOpt


@command("export", epilog="Examples:  tl export --format onnx   tl export --model .tl/runs/RUN --format torchscript -o clf.pt   "
                          "tl predict cat.jpg --model .tl/runs/RUN/model.onnx")
def export_cmd(
    fmt: FormatOpt = "onnx",
    model: ModelOpt = None,
    output: OutputOpt = None,
    ws_path: WorkspaceOpt = None,
) -> None:
    """Export a run's whole classifier (backbone + head) to ONNX or TorchScript.

    The preprocessing goes in JSON beside it; the export is checked against PyTorch on sample
    images before it is kept.
    """
    from tl_cli.inference.export import ExportConfig, export_run
    from tl_cli.runs.store import load_run

    cfg = ExportConfig(format=fmt)
    run = load_run(model or workspace(ws_path).latest_run())
    err.print(f"[dim]model: {escape(str(run.dir))}[/]")
    res = export_run(run, cfg, output)
    out.print(f"wrote {res.path}", markup=False, highlight=False)
    out.print(f"  and {res.sidecar} (classes, preprocessing, input/output names)", markup=False, highlight=False)
    out.print(f"  checked on {res.n_samples} {res.sample_source}: max |logit difference| vs PyTorch "
              f"{res.max_abs_diff:.2e} (allowed {cfg.atol:g} + {cfg.rtol:g} x |value|)", markup=False, highlight=False)
