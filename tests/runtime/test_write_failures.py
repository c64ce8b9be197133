"""Disk full and read-only workspaces: one clear error, no temporary files, no run marked complete."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers.images import make_folder
from tl_cli.cli import app
from tl_cli.errors import WorkspaceError
from tl_cli.features.extract import ExtractConfig
from tl_cli.head.small_data import train_small_data
from tl_cli.runs.workspace import Workspace
from tl_cli.runtime.atomic import write_bytes

LENET = ExtractConfig(backbone="lenet5", pretrained=False, workers=0, batch_size=8)
LENET_ARGS = ["--backbone", "lenet5", "--no-pretrained", "--workers", "0"]
runner = CliRunner()


def temporaries(ws: Path) -> list[Path]:
    return [p for p in ws.rglob("*") if p.name.startswith(".tmp-")]


def complete_runs(ws: Path) -> list[Path]:
    return sorted(p.parent for p in (ws / "runs").glob("*/meta.json"))


def enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_the_cache(image_folder, isolated_workspace, monkeypatch):
    import h5py

    real = h5py.Group.create_dataset

    def fill_then_fail(self, name, *a, **k):
        real(self, name, *a, **k)  # something reaches the temporary file first
        if name == "relpath":
            enospc()

    with monkeypatch.context() as m:
        m.setattr(h5py.Group, "create_dataset", fill_then_fail)
        with pytest.raises(WorkspaceError, match="disk full"):
            train_small_data(image_folder, LENET)
        r = runner.invoke(app, ["extract", str(image_folder), *LENET_ARGS])
    assert r.exit_code == 2 and r.output.startswith("error: disk full while writing") and "Traceback" not in r.output
    assert not temporaries(isolated_workspace)
    assert not list(isolated_workspace.glob("caches/*/features.h5"))
    assert not list(isolated_workspace.glob("caches/*/pending/*.h5"))
    assert not complete_runs(isolated_workspace) and "latest_run" not in Workspace.open().state()
    r = runner.invoke(app, ["extract", str(image_folder), *LENET_ARGS])  # space is back: it just works
    assert r.exit_code == 0 and len(complete_runs(isolated_workspace)) == 1


def test_disk_full_while_saving_the_run(image_folder, isolated_workspace, monkeypatch):
    first = train_small_data(image_folder, LENET)
    import safetensors.numpy
    import safetensors.torch

    def partial_then_fail(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"\x00" * 100)
        enospc()

    for module in (safetensors.torch, safetensors.numpy):  # whichever the run is saved with
        monkeypatch.setattr(module, "save_file", partial_then_fail)
    with pytest.raises(WorkspaceError, match="disk full"):
        train_small_data(image_folder, LENET)
    assert complete_runs(isolated_workspace) == [first.run_dir]
    assert [p for p in (isolated_workspace / "runs").iterdir()] == [first.run_dir]  # no half run folder
    assert Workspace.open().latest_run() == first.run_dir
    assert not temporaries(isolated_workspace)


def test_read_only_filesystem(image_folder, isolated_workspace, monkeypatch):
    """EROFS from the filesystem (works as root too, unlike chmod)."""
    train_small_data(image_folder, LENET, train=False)
    import tl_cli.runtime.atomic as atomic

    def erofs(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", erofs)
    r = runner.invoke(app, ["extract", str(image_folder), *LENET_ARGS])
    assert r.exit_code == 2 and "Read-only file system" in r.output and "hint: choose a writable workspace" in r.output
    assert not complete_runs(isolated_workspace) and not temporaries(isolated_workspace)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_workspace_chmod(image_folder, isolated_workspace):
    isolated_workspace.mkdir()
    isolated_workspace.chmod(0o555)
    try:
        r = runner.invoke(app, ["extract", str(image_folder), *LENET_ARGS])
    finally:
        isolated_workspace.chmod(0o755)
    assert r.exit_code == 2 and "is not writable" in r.output


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_read_only_workspace_as_unprivileged_user(tmp_path, image_folder):
    """A real permission failure: `tl extract` as user `nobody` against a workspace it can't write.

    A forked child drops to nobody and runs the CLI in the already-loaded interpreter (nobody may
    not be able to exec this Python); it reports the exit code and output through a pipe.
    """
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    runner.invoke(app, ["extract", str(image_folder), *LENET_ARGS, "--no-train"])  # load every module first
    top = Path(tempfile.mkdtemp(prefix="tl-ro-", dir="/tmp"))
    try:
        top.chmod(0o755)
        data = make_folder(top / "data", 3, ("red", "blue"))
        for p in [data, *data.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        ws = top / "ws"
        ws.mkdir(mode=0o755)  # owned by root: nobody may read but not write
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 99
            signal.alarm(120)  # a child forked from a threaded parent can deadlock: never hang the suite
            try:
                os.close(rfd)
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                r = runner.invoke(app, ["extract", str(data), *LENET_ARGS, "--workspace", str(ws)])
                os.write(wfd, json.dumps({"code": r.exit_code, "out": r.output}).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as fh:
            blob = fh.read()
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM:
            # Known issue: fork() after the parent's worker threads started can leave a lock held in
            # the child. The permission failure itself is also covered by test_read_only_filesystem.
            pytest.skip("the forked child deadlocked (fork after threads); see the issue notes")
        assert os.WEXITSTATUS(status) == 0, blob
        got = json.loads(blob)
        assert got["code"] == 2, got["out"]
        assert got["out"].startswith(f"error: workspace {ws} is not writable") and "Traceback" not in got["out"]
        assert list(ws.iterdir()) == []
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("umask, mode", [(0o027, 0o640), (0o022, 0o644), (0o077, 0o600)])
def test_atomic_files_get_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == mode
    assert not temporaries(tmp_path)


def test_saved_weights_get_the_umask_mode_too(tmp_path):
    # safetensors replaces the temporary with a private file of its own; the weights of a run
    # must be as readable as its meta.json.
    import numpy as np

    from tl_cli.runs.store import save_tensors

    old = os.umask(0o022)
    try:
        save_tensors(tmp_path / "model.safetensors", {"w": np.zeros(3, np.float32)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o644


def test_interrupted_atomic_write_leaves_old_file(tmp_path):
    target = tmp_path / "meta.json"
    target.write_text(json.dumps({"old": True}))
    with pytest.raises(WorkspaceError):
        from tl_cli.runtime.atomic import atomic_path

        with atomic_path(target) as tmp:
            tmp.write_text("{half")
            enospc()
    assert json.loads(target.read_text()) == {"old": True} and not temporaries(tmp_path)


def test_disk_full_while_exporting_torchscript(image_folder, isolated_workspace, tmp_path, monkeypatch):
    # torch.jit.save's own file writer aborts the process (C++ terminate) on a full disk; the
    # export is saved to memory and written by Python, so a full disk is one line like elsewhere.
    assert runner.invoke(app, ["extract", str(image_folder), *LENET_ARGS]).exit_code == 0
    real = Path.write_bytes
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: enospc() if ".tmp-clf.pt" in self.name else real(self, data))
    r = runner.invoke(app, ["export", "--format", "torchscript", "-o", str(tmp_path / "out" / "clf.pt")])
    assert r.exit_code == 2, r.output
    assert "disk full while writing" in r.output
    assert list((tmp_path / "out").iterdir()) == []


def test_disk_full_as_safetensors_reports_it_is_one_line(image_folder, isolated_workspace, monkeypatch):
    """safetensors raises its own error type with the OS error as text (found by filling a 600 KiB
    tmpfs): still 'disk full', not an internal error."""
    import safetensors
    import safetensors.numpy
    import safetensors.torch

    def full(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"\x00" * 100)
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    for module in (safetensors.torch, safetensors.numpy):
        monkeypatch.setattr(module, "save_file", full)
    r = runner.invoke(app, ["extract", str(image_folder), *LENET_ARGS])
    assert r.exit_code == 2 and "disk full while writing" in r.output and "internal error" not in r.output, r.output
    assert not temporaries(isolated_workspace)
