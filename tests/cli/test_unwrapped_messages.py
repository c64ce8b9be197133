"""Errors and hints are never hard-wrapped when they go to a file or a pipe (a log gets whole lines)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import tl_cli
from tl_cli.cli import app

runner = CliRunner()
LONG = "a-folder-name-long-enough-that-the-error-line-is-far-wider-than-eighty-columns-" * 2


def test_long_error_is_one_line_through_clirunner(tmp_path):
    missing = tmp_path / LONG
    r = runner.invoke(app, ["info", str(missing)])
    assert r.exit_code == 2
    lines = r.output.splitlines()
    assert any(line.startswith(f"error: no run {missing} (not a folder, nor a run in ") for line in lines), r.output
    assert "hint: `tl runs` lists them" in lines


def test_long_error_is_one_line_through_a_pipe(tmp_path):
    missing = tmp_path / LONG
    env = {**os.environ, "COLUMNS": "80", "TL_WORKSPACE": str(tmp_path / "ws"),
           "PYTHONPATH": str(Path(tl_cli.__file__).parents[1])}  # this tree's tl_cli
    p = subprocess.run([sys.executable, "-m", "tl_cli", "info", str(missing)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert lines[0].startswith(f"error: no run {missing} (not a folder, nor a run in {tmp_path / 'ws' / 'runs'})"), p.stderr
    assert lines[1:] == ["hint: `tl runs` lists them"]


def test_read_only_filesystem_message_stays_whole_with_a_long_workspace_path(image_folder, tmp_path, monkeypatch):
    """The reproduction of the flaky test_read_only_filesystem: the temp path's length decided the wrap."""
    import tl_cli.runtime.atomic as atomic

    ws = tmp_path / LONG / "ws"
    monkeypatch.setenv("TL_WORKSPACE", str(ws))

    def erofs(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", erofs)
    r = runner.invoke(app, ["extract", str(image_folder), "--backbone", "lenet5", "--no-pretrained", "--workers", "0"])
    assert r.exit_code == 2
    assert any(line.startswith(f"error: cannot write {ws}") and line.endswith(": Read-only file system")
               for line in r.output.splitlines()), r.output
    assert "hint: choose a writable workspace with --workspace or TL_WORKSPACE" in r.output.splitlines()
