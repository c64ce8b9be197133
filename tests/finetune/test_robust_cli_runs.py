"""A fine-tuning run's folder under trouble: a full disk at the checkpoint, Ctrl-C before the first
checkpoint, a second `--resume` of the same run, a config.json edited to another network, and
metrics that are not numbers (NaN) in the JSON files."""

from __future__ import annotations

import json
import os
from collections import namedtuple
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tl_cli.cli import app
from tl_cli.errors import InterruptedBeforeCheckpoint, WorkspaceError
from tl_cli.finetune import checkpoint, trainer
from tl_cli.finetune.checkpoint import CHECKPOINT, save_checkpoint
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.runs.lock import run_lock
from tl_cli.runs.workspace import Workspace
from tl_cli.runtime.progress import Reporter

runner = CliRunner()
LENET = ["--backbone", "lenet5", "--no-pretrained", "--workers", "0", "--freeze", "2", "--batch-size", "8"]
# What torch's zip writer raises when the disk fills mid-save (torch 2.x, inline_container.cc).
TORCH_DISK_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 1536 vs 1430"
DiskUsage = namedtuple("DiskUsage", "total used free")


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def cfg(**kw) -> FinetuneConfig:
    base = dict(backbone="lenet5", pretrained=False, freeze=2, epochs=1, batch_size=8, workers=0, head_init="random")
    return FinetuneConfig(**{**base, **kw})


def failing_save(message: str):
    def save(obj, f, *a, **kw):
        Path(f).write_bytes(b"PK partial")  # torch has written part of the file when the write fails
        raise RuntimeError(message)

    return save


def usage(free: int):
    """shutil.disk_usage as on a disk with `free` bytes left."""
    return lambda path: DiskUsage(100 * 2**30, 100 * 2**30 - free, free)


def test_disk_full_while_checkpointing_is_a_workspace_error(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.torch, "save", failing_save(TORCH_DISK_FULL))
    monkeypatch.setattr("shutil.disk_usage", usage(4096))
    run = tmp_path / "run"
    with pytest.raises(WorkspaceError, match=f"disk full while writing {run / CHECKPOINT}"):
        save_checkpoint(run, {"model": {}})
    assert list(run.iterdir()) == []  # the partial temporary is gone


def test_failed_checkpoint_write_with_space_left_is_not_called_disk_full(tmp_path, monkeypatch):
    failed = "PytorchStreamWriter failed writing file data/0: file write failed"
    monkeypatch.setattr(checkpoint.torch, "save", failing_save(failed))
    monkeypatch.setattr("shutil.disk_usage", usage(50 * 2**30))
    with pytest.raises(WorkspaceError, match="cannot write .*the write failed") as e:
        save_checkpoint(tmp_path, {"model": {}})
    assert "disk full" not in e.value.message
    # Any other RuntimeError is a bug, not the user's to fix: it goes on as it is.
    monkeypatch.setattr(checkpoint.torch, "save", failing_save("something else"))
    with pytest.raises(RuntimeError, match="something else"):
        save_checkpoint(tmp_path, {"model": {}})


def test_cli_reports_a_full_disk_in_one_line_and_leaves_no_dead_run(image_folder, monkeypatch):
    monkeypatch.setattr(checkpoint.torch, "save", failing_save(TORCH_DISK_FULL))
    monkeypatch.setattr("shutil.disk_usage", usage(0))
    r = tl("finetune", image_folder, *LENET, "--epochs", "1")
    assert r.exit_code == 2, r.output
    assert "error: disk full while writing" in r.output and "internal error" not in r.output
    assert list((Path("ws") / "runs").iterdir()) == []  # no checkpoint was written: nothing to resume


class InterruptAt(Reporter):
    """Ctrl-C when the run logs a line starting with `prefix`."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def log(self, message: str) -> None:
        if message.startswith(self.prefix):
            raise KeyboardInterrupt


def test_interrupt_before_the_first_checkpoint_removes_the_run_folder(image_folder):
    ws = Workspace.open()
    first = trainer.start(image_folder, cfg(), ws)  # the run --resume would continue before the next one
    with pytest.raises(InterruptedBeforeCheckpoint):
        trainer.start(image_folder, cfg(), ws, InterruptAt("finetune: lenet5"))  # logged before epoch 1
    assert [p.name for p in ws.runs.iterdir()] == [first.run_dir.name]
    assert ws.state()["training_run"] == str(first.run_dir)  # what --resume continues is unchanged


def test_interrupt_after_a_checkpoint_keeps_the_run(image_folder):
    ws = Workspace.open()
    with pytest.raises(KeyboardInterrupt) as e:
        trainer.start(image_folder, cfg(epochs=3), ws, InterruptAt("epoch   1 "))
    assert not isinstance(e.value, InterruptedBeforeCheckpoint)
    (run,) = ws.runs.iterdir()
    assert (run / CHECKPOINT).is_file() and ws.state()["training_run"] == str(run)


def test_cli_says_nothing_to_resume_when_interrupted_before_the_first_epoch(image_folder, monkeypatch):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_train", interrupted)
    r = tl("finetune", image_folder, *LENET)
    assert r.exit_code == 130, r.output
    assert "interrupted before the first epoch finished; nothing to resume" in " ".join(r.output.split())
    assert "--resume continues" not in r.output
    assert list((Path("ws") / "runs").iterdir()) == []
    assert "training_run" not in Workspace.open().state()


def test_a_user_file_in_the_run_folder_is_kept(tmp_path):
    from tl_cli.finetune.run_folder import discard_unstarted

    run = tmp_path / "run"
    run.mkdir()
    cfg().save(run)
    (run / "notes.txt").write_text("mine")
    assert discard_unstarted(run, Workspace.open(), None)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


def interrupted_run(image_folder) -> Path:
    """A run stopped after epoch 1 of 2 (checkpointed: --resume continues it)."""
    ws = Workspace.open()
    with pytest.raises(KeyboardInterrupt):
        trainer.start(image_folder, cfg(epochs=2), ws, InterruptAt("epoch   1 "))
    return Path(ws.state()["training_run"])


def test_second_resume_of_a_run_in_use_fails_at_once(image_folder):
    run = interrupted_run(image_folder)
    with run_lock(run):  # as another `tl finetune --resume` holds it
        r = tl("finetune", "--resume", "--run", run)
    assert r.exit_code == 2, r.output
    assert f"is in use by pid {os.getpid()}" in " ".join(r.output.split())
    r = tl("finetune", "--resume", "--run", run)  # released: it goes on
    assert r.exit_code == 0, r.output
    assert ".lock" not in tl("info", run, "--no-layers").output  # not one of the run's files


def test_config_edited_to_another_network_is_a_damaged_config(image_folder):
    run = interrupted_run(image_folder)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "backbone": "efficientnet_lite0"}))
    r = tl("finetune", "--resume")
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())
    assert "error: damaged run config" in out and "keys missing" in out and "internal error" not in out


def test_nan_metrics_are_written_as_null_and_read_back(image_folder):
    ws = Workspace.open()
    res = trainer.start(image_folder, cfg(lr=1e30, head_lr=1e30), ws)  # diverges: val loss NaN
    assert res.history[-1]["val_loss"] != res.history[-1]["val_loss"]  # NaN
    for name in ("meta.json", "config.json", "source.json"):
        text = (res.run_dir / name).read_text()
        assert "NaN" not in text and "Infinity" not in text, name
        json.loads(text, parse_constant=pytest.fail)  # NaN, Infinity: not JSON
    assert json.loads((res.run_dir / "meta.json").read_text())["metrics"]["val_loss"] is None
    r = tl("info", "--no-layers", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["metrics"]["val_loss"] is None


def test_resume_on_changed_images_says_so(image_folder):
    run = interrupted_run(image_folder)
    r = tl("finetune", "--resume", "--run", run)
    assert r.exit_code == 0 and "changed since the run started" not in r.output, r.output
    run = interrupted_run(image_folder)
    victims = sorted((image_folder / "red").glob("*.jpg"))[:3]
    for p in victims:
        p.unlink()
    r = tl("finetune", "--resume", "--run", run)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "changed since the run started" in out and "not what an uninterrupted run would have made" in out
