"""state.json with values of the wrong type, a latest run that is gone, a meta.json whose classes do
not match the model's outputs, and --weights that are a folder or of another network: one line each."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers.images import write_image
from tl_cli.cli import app
from tl_cli.errors import RunError
from tl_cli.runs.store import load_run, scan_runs
from tl_cli.runs.workspace import Workspace

FIXTURES = Path(__file__).resolve().parent / "fixtures"
runner = CliRunner()


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def two_runs(ws: Workspace) -> tuple[Path, Path]:
    """An older and a newer readable run (lenet5 heads over blue, green, red; stamps in their names)."""
    runs = []
    for name in ("20260101-100000-extract-a", "20260102-100000-extract-b"):
        shutil.copytree(FIXTURES / "meta_v0_extract", ws.runs / name)
        (ws.runs / name / "expected_predictions.json").unlink()
        runs.append(ws.runs / name)
    return runs[0], runs[1]


def one_line(output: str) -> str:
    return " ".join(output.split())


def test_state_values_of_the_wrong_type_are_a_note_and_a_fallback(tmp_path):
    ws = Workspace.open()
    a, b = two_runs(ws)
    ws.state_file.write_text(json.dumps({"latest_run": 5, "last_dataset": 7, "training_run": [1]}))
    with pytest.warns(UserWarning, match=r"state.json is damaged \(last_dataset, latest_run, training_run: not a path\)"):
        assert ws.latest_run() == b
    img = write_image(tmp_path / "x.jpg", (220, 40, 40))
    r = tl("predict", img)
    assert r.exit_code == 0, r.output
    assert "note: " in r.output and "state.json is damaged" in r.output and b.name in r.output
    r = tl("runs")
    assert r.exit_code == 0, r.output
    r = tl("finetune", "--freeze", "2", "--backbone", "lenet5")  # no DATA_DIR: the last dataset is unknown
    assert r.exit_code == 2 and "no dataset given" in r.output and "state.json is damaged" in r.output, r.output
    r = tl("finetune", "--resume")
    assert r.exit_code == 2 and "no fine-tuning run to resume" in r.output, r.output
    assert "internal error" not in r.output
    ws.remember(latest_run=a)  # remembering repairs the file, keeping what was readable
    assert ws.state() == {"latest_run": str(a)}


@pytest.mark.parametrize("latest", ["gone", "/etc"])
def test_latest_run_gone_or_not_a_run_falls_back_to_the_newest(tmp_path, latest):
    ws = Workspace.open()
    a, b = two_runs(ws)
    if latest == "gone":
        shutil.rmtree(b)
        latest, expected, why = str(b), a, "is gone"
    else:
        expected, why = b, "is not a complete tl run"
    ws.state_file.write_text(json.dumps({"latest_run": latest}))
    with pytest.warns(UserWarning, match=f"the latest run {latest} {why}; using the newest readable run, {expected.name}"):
        assert ws.latest_run() == expected
    for cmd in (("info", "--no-layers"), ("predict", write_image(tmp_path / "x.jpg", (220, 40, 40)))):
        r = tl(*cmd)
        assert r.exit_code == 0, r.output
        assert f"note: the latest run {latest} {why}" in one_line(r.output)
    for run in (a, b):
        shutil.rmtree(run, ignore_errors=True)
    with pytest.raises(RunError, match=f"no trained model .*the latest run {latest} {why}"), warnings.catch_warnings():
        warnings.simplefilter("error")
        ws.latest_run()


@pytest.mark.parametrize("classes", [["blue", "green"], ["blue", "green", "red", "violet"]])
def test_classes_that_do_not_match_the_outputs_are_a_damaged_run(tmp_path, classes):
    ws = Workspace.open()
    a, b = two_runs(ws)
    meta = json.loads((b / "meta.json").read_text())
    (b / "meta.json").write_text(json.dumps({**meta, "classes": classes}))
    why = f"meta.json lists {len(classes)} classes, the model has 3 outputs"
    with pytest.raises(RunError, match=f"damaged run {b}: {why}"):
        load_run(b)
    r = tl("predict", write_image(tmp_path / "x.jpg", (220, 40, 40)), "--model", b)
    assert r.exit_code == 2, r.output
    assert f"error: damaged run {b}: {why}" in one_line(r.output) and "internal error" not in r.output
    assert [d.dir for d in scan_runs(ws.runs)[1]] == [b]  # `tl runs` lists it as damaged


def test_full_run_class_count_is_checked_too(tmp_path):
    from tests.helpers.tiny_run import full_run

    run = full_run(tmp_path / "run", ["a", "b", "c"])
    meta = json.loads((run.dir / "meta.json").read_text())
    (run.dir / "meta.json").write_text(json.dumps({**meta, "classes": ["a", "b"]}))
    with pytest.raises(RunError, match="meta.json lists 2 classes, the model has 3 outputs"):
        load_run(run.dir)


def test_weights_folder_and_wrong_network_are_said_plainly(tmp_path, image_folder):
    import torch

    (tmp_path / "wdir").mkdir()
    r = tl("finetune", image_folder, "--freeze", "2", "--backbone", "lenet5", "--weights", tmp_path / "wdir")
    assert r.exit_code == 2, r.output
    assert f"--weights {tmp_path / 'wdir'} is a directory, not a weights file" in one_line(r.output)
    torch.save({"foo": torch.zeros(1), "net.fc1.weight": torch.zeros(3)}, tmp_path / "other.pth")
    r = tl("finetune", image_folder, "--freeze", "2", "--backbone", "lenet5", "--weights", tmp_path / "other.pth")
    assert r.exit_code == 2, r.output
    out = one_line(r.output)
    assert "does not match the lenet5 architecture" in out
    assert "hint: 17 keys missing (net.features.0.weight, net.features.0.bias, net.features.1.weight, ...); " \
           "1 key unexpected (foo); 1 key with another shape (net.fc1.weight)" in out


def test_info_and_runs_json_stay_standard_for_runs_saved_with_nan():
    ws = Workspace.open()
    a, _ = two_runs(ws)
    meta = json.loads((a / "meta.json").read_text())
    meta["metrics"] = {**meta["metrics"], "val_loss": float("nan"), "val_accuracy": float("inf")}
    (a / "meta.json").write_text(json.dumps(meta))  # as tl wrote it before: NaN, Infinity
    for cmd in (("info", a, "--no-layers", "--format", "json"), ("runs", "--format", "json")):
        r = tl(*cmd)
        assert r.exit_code == 0, r.output
        json.loads(r.stdout, parse_constant=pytest.fail)  # NaN, Infinity: not JSON
    assert json.loads(tl("info", a, "--no-layers", "--format", "json").stdout)["metrics"]["val_loss"] is None


def test_a_copied_or_moved_workspace_names_its_own_runs(tmp_path):
    """state.json keeps the runs relative to the workspace: a copy predicts with its own runs, not the
    original's (which still exist), and a moved one finds its latest run without a note."""
    ws = Workspace.open(tmp_path / "one" / ".tl")
    a, _ = two_runs(ws)  # the older one is the latest: the newest-run fallback would pick the other
    ws.remember(latest_run=a, training_run=a, last_dataset=tmp_path / "data")
    saved = json.loads(ws.state_file.read_text())
    assert saved == {"latest_run": f"runs/{a.name}", "training_run": f"runs/{a.name}",
                     "last_dataset": str(tmp_path / "data")}
    assert ws.state()["latest_run"] == str(a)
    copy = Workspace.open(tmp_path / "two" / ".tl")
    shutil.copytree(ws.root, copy.root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert copy.latest_run() == copy.runs / a.name
    r = tl("predict", write_image(tmp_path / "x.jpg", (220, 40, 40)), "--workspace", copy.root)
    assert r.exit_code == 0 and "note:" not in r.output, r.output
    assert f"model: {copy.runs / a.name}" in one_line(r.output)
    moved = Workspace.open(tmp_path / "three" / ".tl")
    shutil.move(ws.root, moved.root)
    assert moved.latest_run() == moved.runs / a.name
    ws.root.mkdir(parents=True)  # state.json written before this change (absolute paths) still reads
    (ws.root / "state.json").write_text(json.dumps({"latest_run": str(moved.runs / a.name)}))
    assert ws.state() == {"latest_run": str(moved.runs / a.name)}
