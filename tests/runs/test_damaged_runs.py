"""Damaged runs and a damaged state.json: said what is damaged, listed as damaged, the newest readable run used."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tl_cli.cli import app
from tl_cli.errors import RunError
from tl_cli.runs.workspace import Workspace

FIXTURES = Path(__file__).resolve().parent / "fixtures"
runner = CliRunner()


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def old_run(dest: Path) -> Path:
    """A readable run (a tl extract run as written before the meta schema; see fixtures/README.md)."""
    shutil.copytree(FIXTURES / "meta_v0_extract", dest)
    (dest / "expected_predictions.json").unlink()
    return dest


def two_runs(ws: Workspace) -> tuple[Path, Path]:
    """An older and a newer readable run in the workspace (stamps in their names)."""
    a = old_run(ws.runs / "20260101-100000-extract-a")
    b = old_run(ws.runs / "20260102-100000-extract-b")
    return a, b


def test_damaged_meta_is_listed_as_damaged_and_info_says_why():
    ws = Workspace.open()
    a, b = two_runs(ws)
    (b / "meta.json").write_text('{"route": "extract", "classes": [')  # cut short
    res = tl("runs")
    assert res.exit_code == 0, res.output
    assert f"damaged {b.name}: " in res.output and "not valid JSON" in res.output
    rows = json.loads(tl("runs", "--format", "json").stdout)
    assert [(r["name"], bool(r["damaged"])) for r in rows] == [(b.name, True), (a.name, False)]
    res = tl("info", b.name)
    assert res.exit_code == 2 and "damaged run" in res.output and "not valid JSON" in res.output
    assert "Traceback" not in res.output
    shutil.rmtree(a)  # only damaged runs left: listed, not "no runs"
    res = tl("runs")
    assert res.exit_code == 0 and "no runs" not in res.output and f"damaged {b.name}: " in res.output
    (b / "meta.json").write_text(json.dumps({"classes": ["a"], "backbone": "lenet5", "schema": 1, "kind": "x",
                                             "route": "extract"}))
    assert "kind must be one of head, full" in tl("runs").output  # valid JSON, not a run: says which value


def test_damaged_state_falls_back_to_the_newest_readable_run():
    ws = Workspace.open()
    a, b = two_runs(ws)
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.state_file.write_text('{"latest_run": "')
    with pytest.warns(UserWarning, match=r"state.json is damaged .*newest readable run, 20260102-100000-extract-b"):
        assert ws.latest_run() == b
    res = tl("info", "--no-layers")
    assert res.exit_code == 0, res.output
    assert "note: " in res.output and "state.json is damaged" in res.output and b.name in res.output
    # state.json names a run whose meta.json is damaged: the newest readable one is used, and said why
    ws.state_file.write_text(json.dumps({"latest_run": str(b)}))
    (b / "meta.json").write_text("[]")
    with pytest.warns(UserWarning, match=rf"damaged run {b}: .*JSON object.*newest readable run, {a.name}"):
        assert ws.latest_run() == a
    shutil.rmtree(a)  # nothing readable: the old error, saying what is damaged
    with pytest.raises(RunError, match="no trained model.*damaged run"), warnings.catch_warnings():
        warnings.simplefilter("error")
        ws.latest_run()


def test_an_unfinished_fine_tuning_run_points_to_resume(tmp_path):
    from tl_cli.runs.store import load_run

    run = tmp_path / "runs" / "20260101-100000-finetune-data"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"")  # killed after an epoch: a checkpoint, no meta.json
    with pytest.raises(RunError, match="unfinished fine-tuning run") as got:
        load_run(run)
    assert "tl finetune --resume --run" in got.value.hint
