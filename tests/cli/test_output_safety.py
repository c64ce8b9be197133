"""`--output` never costs the user data: no folder of theirs is replaced, no photo overwritten,
nothing written inside the data folder. Each case was a silent loss (exit 0) before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers.images import make_folder
from tl_cli.cli import app
from tl_cli.errors import ConfigError
from tl_cli.runtime.outputs import check_output_dir, check_output_file

runner = CliRunner()
LENET = ["--backbone", "lenet5", "--no-pretrained", "--workers", "0"]


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its digest: what must not change."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def trained(image_folder):
    r = tl("extract", image_folder, *LENET)
    assert r.exit_code == 0, r.output
    return image_folder


def refused(r, *words):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    for w in words:
        assert w in r.output, r.output


# -- the library rules ---------------------------------------------------------------------------

def test_output_dir_rules(tmp_path):
    names = ("metrics.json", "report.html")
    assert check_output_dir(tmp_path / "new", names) == tmp_path / "new"  # a new folder
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", names)  # an empty one
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "metrics.json").write_text("{}")
    (earlier / ".tmp-report.html.x").write_text("")  # a killed write's leftover is tl's own
    check_output_dir(earlier, names)  # an earlier output of the same kind is replaced
    (earlier / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        check_output_dir(earlier, names)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_output_dir(tmp_path / "file", names)
    data = tmp_path / "data"
    data.mkdir()
    for bad in (data, data / "sub" / "out"):
        with pytest.raises(ConfigError, match="inside the data"):
            check_output_dir(bad, names, [data])


def test_output_file_rules(tmp_path):
    check_output_file(tmp_path / "new.jpg", (".csv",))  # a new file may have any name
    (tmp_path / "old.csv").write_text("a")
    check_output_file(tmp_path / "old.csv", (".csv",))  # an earlier result is overwritten
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ConfigError, match="not a .csv file"):
        check_output_file(tmp_path / "photo.jpg", (".csv",))
    with pytest.raises(ConfigError, match="is a folder"):
        check_output_file(tmp_path, (".csv",))
    with pytest.raises(ConfigError, match="inside the data"):
        check_output_file(tmp_path / "x" / "new.onnx", (".onnx",), [tmp_path / "x"])


# -- the commands --------------------------------------------------------------------------------

def test_evaluate_refuses_to_replace_the_dataset_or_a_users_folder(trained, tmp_path):
    before = snapshot(trained)
    refused(tl("evaluate", trained, "-o", trained), "inside the data")
    refused(tl("evaluate", trained, "-o", trained / "red" / "new"), "inside the data")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    refused(tl("evaluate", trained, "-o", mine), "notes.txt")
    (tmp_path / "f.txt").write_text("hi")
    refused(tl("evaluate", trained, "-o", tmp_path / "f.txt"), "is a file")
    assert snapshot(trained) == before
    assert (mine / "notes.txt").read_text() == "precious" and (tmp_path / "f.txt").read_text() == "hi"
    # An earlier evaluation is still replaced in place: the same -o twice works.
    out = tmp_path / "eval"
    for _ in range(2):
        r = tl("evaluate", trained, "-o", out, "--format", "json")
        assert r.exit_code == 0, r.output
    assert json.loads((out / "metrics.json").read_text())["n"] == 36


def test_evaluate_refuses_the_run_folder(trained, isolated_workspace):
    run_dir = next((isolated_workspace / "runs").iterdir())
    before = snapshot(run_dir)
    refused(tl("evaluate", trained, "-o", run_dir), "tl did not write there")
    assert snapshot(run_dir) == before
    assert tl("predict", trained / "red").exit_code == 0


def test_check_refuses_to_replace_the_dataset(image_folder):
    before = snapshot(image_folder)
    refused(tl("check", image_folder, *LENET, "-o", image_folder), "inside the data")
    assert snapshot(image_folder) == before


def test_predict_and_export_do_not_overwrite_a_photo(trained, tmp_path):
    photo = sorted((trained / "red").glob("*.jpg"))[0]
    before = snapshot(trained)
    refused(tl("predict", trained / "red", "-o", photo), "inside the data folder")
    refused(tl("predict", photo, "--format", "json", "-o", photo), "inside the data file")
    refused(tl("predict", photo, "-o", tmp_path), "is a folder")
    refused(tl("export", "-o", photo), "inside the data")
    assert snapshot(trained) == before
    elsewhere = tmp_path / "photo.jpg"
    elsewhere.write_bytes(photo.read_bytes())
    refused(tl("export", "-o", elsewhere), "not a .onnx file")
    assert elsewhere.read_bytes() == photo.read_bytes()


def test_export_keeps_a_users_file_where_its_description_would_go(trained, tmp_path):
    mine = tmp_path / "m.onnx.json"
    mine.write_text('{"mine": true}')
    refused(tl("export", "-o", tmp_path / "m.onnx"), "not a tl export description")
    assert mine.read_text() == '{"mine": true}' and not (tmp_path / "m.onnx").exists()
    (tmp_path / "d.onnx.json").mkdir()
    refused(tl("export", "-o", tmp_path / "d.onnx"), "is a folder")
    refused(tl("export", "--format", "torchscript", "-o", tmp_path / "x.onnx"), "named as onnx but --format is torchscript")
    for _ in range(2):  # an earlier export and its description are replaced
        r = tl("export", "-o", tmp_path / "ok.onnx")
        assert r.exit_code == 0, r.output


def test_predict_writes_the_format_its_output_is_named_for(trained, tmp_path):
    folder = trained / "red"
    for _ in range(2):  # the second run replaces the first one's file
        r = tl("predict", folder, "-o", tmp_path / "p.json")
        assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "p.json").read_text())) == 12
    r = tl("predict", folder, "-o", tmp_path / "p.tsv")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p.tsv").read_text().splitlines()[0] == "path\tlabel1\tprob1\terror"
    refused(tl("predict", folder, "--format", "json", "-o", tmp_path / "p.csv"), "named as csv but --format is json")
    for extra in ([], ["--format", "json"]):  # .jsonl is JSON Lines: one object a line
        r = tl("predict", folder, *extra, "-o", tmp_path / "p.jsonl")
        assert r.exit_code == 0, r.output
        lines = (tmp_path / "p.jsonl").read_text().splitlines()
        assert len(lines) == 12 and all(json.loads(x)["labels"] == ["red"] for x in lines)


def test_outputs_never_land_in_the_folder_the_model_was_trained_on(trained, tmp_path):
    """Reading another folder does not open the training data to writes: an evaluation or check
    folder there would be a new class the next time it is trained on."""
    other = make_folder(tmp_path / "other", 2)
    before = snapshot(trained)
    refused(tl("evaluate", other, "-o", trained / "evalout"), "inside the data folder", str(trained))
    refused(tl("check", other, *LENET, "-o", trained / "checkout"), "inside the data folder")
    refused(tl("predict", other, "-o", trained / "preds.csv"), "inside the data folder")
    assert snapshot(trained) == before and not (trained / "evalout").exists()
    r = tl("evaluate", other, "-o", tmp_path / "evalout")  # elsewhere: fine
    assert r.exit_code == 0, r.output


def test_predict_never_writes_into_a_folder_it_reads_nor_onto_an_image_it_found(trained, tmp_path):
    """An image named scan.csv is an input (images are found by content): -o must not turn it into CSV."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo = sorted((trained / "red").glob("*.jpg"))[0]
    (inbox / "a.jpg").write_bytes(photo.read_bytes())
    (inbox / "scan.csv").write_bytes(photo.read_bytes())
    before = snapshot(inbox)
    refused(tl("predict", inbox, "-o", inbox / "scan.csv"), "inside the data folder")
    refused(tl("predict", inbox, "-o", inbox / "preds.csv"), "inside the data folder")
    refused(tl("predict", str(inbox / "*.csv"), "-o", inbox / "scan.csv"), "inside the data file")
    assert snapshot(inbox) == before
