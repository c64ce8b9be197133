"""Class and file names are the user's text, never rich markup: "[x]" is shown as written and a
"[/" in a path does not crash the table (it raised MarkupError, an internal error, before)."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from tests.helpers.images import make_folder
from tl_cli.cli import app

runner = CliRunner()
LENET = ["--backbone", "lenet5", "--no-pretrained", "--workers", "0"]


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_bracketed_names_are_printed_as_written(tmp_path):
    data = make_folder(tmp_path / "data", n_per_class=8)
    (data / "green").rename(data / "green [x]")
    odd = data / "red" / "sub[" / "]x.jpg"  # the path reads "sub[/]x.jpg"
    odd.parent.mkdir()
    shutil.copyfile(next((data / "red").glob("*.jpg")), odd)
    r = tl("extract", data, *LENET)
    assert r.exit_code == 0, r.output
    assert "green [x]" in r.output
    r = tl("predict", odd, "--topk", "3")
    assert r.exit_code == 0, r.output
    assert "sub[/]x.jpg" in r.output and "green [x]" in r.output
    labels = json.loads(tl("predict", odd, "--topk", "3", "--format", "json").stdout)[0]["labels"]
    assert "green [x]" in labels
    r = tl("evaluate", data)
    assert r.exit_code == 0, r.output
    assert "green [x]" in r.output
