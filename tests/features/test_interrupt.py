"""Interrupted and concurrent `tl extract` (real subprocesses), and stale or corrupt caches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers.images import COLOURS, make_folder, write_image
from tests.helpers.paths import REPO
from tl_cli.cli import app
from tl_cli.features.extract import ExtractConfig, extract_features
from tl_cli.runs.workspace import Workspace

LENET = ExtractConfig(backbone="lenet5", pretrained=False, workers=0, batch_size=4)
SLOW_TL = REPO / "tests" / "helpers" / "slow_tl.py"
runner = CliRunner()


def start_slow(data: Path, ws: Path, log: Path, chunk: int, delay: float = 0.3, hold: Path | None = None,
               hold_after: int = 1) -> subprocess.Popen:
    env = {**os.environ, "TL_WORKSPACE": str(ws), "SLOW_TL_LOG": str(log), "SLOW_TL_CHUNK": str(chunk),
           "SLOW_TL_DELAY": str(delay), "OMP_NUM_THREADS": "1", "SLOW_TL_HOLD": str(hold or ""),
           "SLOW_TL_HOLD_AFTER": str(hold_after)}
    return subprocess.Popen([sys.executable, str(SLOW_TL), "extract", str(data), "--backbone", "lenet5",
                             "--no-pretrained", "--workers", "0", "--batch-size", "4"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as in a terminal


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"tl exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the extraction to make progress")
        time.sleep(0.05)


def batches_done(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def chunks(cache_dir: Path) -> list[Path]:
    """Complete chunk files (not the temporary of one being written, which pathlib's * also matches)."""
    return [p for p in (cache_dir / "pending").glob("*.h5") if not p.name.startswith(".tmp-")]


def pending_rows(cache_dir: Path) -> int:
    n = 0
    for p in chunks(cache_dir):
        with h5py.File(p, "r") as f:
            n += f["features"].shape[0]
    return n


def temporaries(ws: Path) -> list[Path]:
    return [p for p in ws.rglob("*") if p.name.startswith(".tmp-")]


@pytest.fixture
def grown(tmp_path, isolated_workspace):
    """A folder extracted once (24 images, the 'earlier cache'), then grown by 48 new images.

    Returns (data, cache_dir, earlier features by relpath, reference features for all 72)."""
    data = make_folder(tmp_path / "data", 8)
    first = extract_features(data, LENET)
    earlier = dict(zip(first.relpaths, first.features))
    for c in COLOURS:
        for i in range(8, 24):
            write_image(data / c / f"{c}_{i:03d}.jpg", COLOURS[c], seed=1000 + i)
    ref = extract_features(data, LENET, Workspace.open(tmp_path / "ws_reference"))
    return data, first.cache_dir, earlier, dict(zip(ref.relpaths, ref.features))


def assert_earlier_cache_intact(cache_dir: Path, earlier: dict) -> None:
    with h5py.File(cache_dir / "features.h5", "r") as f:
        rel = [r.decode() for r in f["relpath"][:]]
        feats = f["features"][:]
    assert sorted(rel) == sorted(earlier)
    for r, row in zip(rel, feats):
        np.testing.assert_array_equal(row, earlier[r])


def resume_and_check(data: Path, ws: Path, saved: int, reference: dict) -> None:
    r = extract_features(data, LENET)
    assert r.n_extracted == 48 - saved and r.n_cached == 24 + saved  # nothing already saved is redone
    for rel, row in zip(r.relpaths, r.features):
        np.testing.assert_allclose(row, reference[rel], rtol=1e-5, atol=1e-6)
    assert len(r.relpaths) == 72
    assert not temporaries(ws) and not list((r.cache_dir / "pending").iterdir())


def test_ctrl_c_saves_finished_rows_and_the_next_run_resumes(grown, isolated_workspace, tmp_path):
    data, cache_dir, earlier, reference = grown
    log = tmp_path / "progress.log"
    # Chunks bigger than the whole job: whatever is saved was saved by the Ctrl-C handling itself.
    # After 3 batches the 4th waits while `hold` exists, so the Ctrl-C always lands mid-extraction
    # however slowly this test process is scheduled (on a busy machine the job could finish first).
    hold = tmp_path / "hold"
    hold.touch()
    proc = start_slow(data, isolated_workspace, log, chunk=10_000, hold=hold, hold_after=3)
    wait_for(lambda: batches_done(log) >= 3, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    # The Ctrl-C has landed mid-extraction: release the held forward pass, which may be the one the
    # interrupted process waits for (CI once timed out here with the hold still in place).
    hold.unlink()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    saved = pending_rows(cache_dir)
    assert saved >= 12 and saved % 4 == 0
    assert_earlier_cache_intact(cache_dir, earlier)
    resume_and_check(data, isolated_workspace, saved, reference)


def test_sigkill_keeps_written_chunks_and_the_next_run_resumes(grown, isolated_workspace, tmp_path):
    data, cache_dir, earlier, reference = grown
    log = tmp_path / "progress.log"
    proc = start_slow(data, isolated_workspace, log, chunk=4)
    wait_for(lambda: len(chunks(cache_dir)) >= 3, proc)
    proc.kill()
    proc.wait(timeout=60)
    saved = pending_rows(cache_dir)
    assert 12 <= saved < 48
    assert_earlier_cache_intact(cache_dir, earlier)
    # What a kill in the middle of a write leaves behind: temporaries that must not be read.
    (cache_dir / "pending" / ".tmp-chunk-deadbeef.h5.x1y2.h5").write_bytes(b"\x89HDF\r\n\x1a\n half")
    (cache_dir / ".tmp-features.h5.a1b2.h5").write_bytes(b"")
    resume_and_check(data, isolated_workspace, saved, reference)


def test_a_second_extract_on_the_same_workspace_stops_with_a_clear_message(grown, isolated_workspace, tmp_path):
    data, cache_dir, _, reference = grown
    log = tmp_path / "progress.log"
    hold = tmp_path / "hold"  # keeps the first process mid-extraction until the second has tried
    hold.touch()
    proc = start_slow(data, isolated_workspace, log, chunk=4, delay=0.05, hold=hold)
    wait_for(lambda: batches_done(log) >= 1, proc)
    r = runner.invoke(app, ["extract", str(data), "--backbone", "lenet5", "--no-pretrained", "--workers", "0"])
    hold.unlink()
    assert r.exit_code == 2 and r.output.startswith("error: the feature cache") and f"pid {proc.pid}" in r.output
    assert "Traceback" not in r.output
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err  # the first one was not disturbed
    again = extract_features(data, LENET)
    assert again.n_extracted == 0 and len(again.relpaths) == 72
    for rel, row in zip(again.relpaths, again.features):
        np.testing.assert_allclose(row, reference[rel], rtol=1e-5, atol=1e-6)
    assert (cache_dir / "lock").read_text() == ""  # released, not left claiming a dead pid


def test_garbage_cache_is_reported_and_rebuilt(image_folder):
    first = extract_features(image_folder, LENET)
    (first.cache_dir / "features.h5").write_bytes(os.urandom(4096))
    r = runner.invoke(app, ["extract", str(image_folder), "--backbone", "lenet5", "--no-pretrained",
                            "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "note: features.h5 was unreadable" in " ".join(r.output.split()) and "36 extracted" in r.output
    again = extract_features(image_folder, LENET)
    assert again.n_extracted == 0 and not again.notes
    np.testing.assert_allclose(again.features, first.features, rtol=1e-6, atol=1e-6)


def test_garbage_pending_chunk_is_discarded(image_folder):
    first = extract_features(image_folder, LENET)
    (first.cache_dir / "pending" / "chunk-0123456789ab.h5").write_bytes(b"not hdf5 at all")
    r = extract_features(image_folder, LENET)
    assert any("chunk-0123456789ab.h5 was unreadable" in n for n in r.notes)
    assert r.n_extracted == 0 and not list((first.cache_dir / "pending").iterdir())


def test_cache_from_an_older_format_is_reported_and_rebuilt(image_folder):
    first = extract_features(image_folder, LENET)
    with h5py.File(first.cache_dir / "features.h5", "r+") as f:
        f.attrs["format_version"] = 1
    r = extract_features(image_folder, LENET)
    assert any("cache format 1, expected" in n for n in r.notes), r.notes
    assert r.n_extracted == 36
    np.testing.assert_allclose(r.features, first.features, rtol=1e-6, atol=1e-6)


def test_cache_with_wrong_shapes_is_reported_and_rebuilt(image_folder):
    first = extract_features(image_folder, LENET)
    with h5py.File(first.cache_dir / "features.h5", "r+") as f:
        del f["size"]
        f.create_dataset("size", data=np.zeros(3, dtype=np.int64))
    r = extract_features(image_folder, LENET)
    assert any("different lengths" in n for n in r.notes) and r.n_extracted == 36


def test_concurrent_state_updates_keep_every_key(isolated_workspace, monkeypatch):
    """Two processes finishing at once (say `tl extract` and `tl finetune`) both update state.json."""
    import threading

    import tl_cli.runs.workspace as workspace_module

    ws = Workspace.open()
    ws.ensure()
    real_write = workspace_module.write_json

    def slow_write(path, obj):  # widens the read-modify-write window to make a lost update certain
        time.sleep(0.3)
        real_write(path, obj)

    monkeypatch.setattr(workspace_module, "write_json", slow_write)
    values = {"latest_run": str(ws.runs / "r1"), "last_dataset": str(isolated_workspace.parent / "data")}
    threads = [threading.Thread(target=ws.remember, kwargs={k: v}) for k, v in values.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ws.state() == values


def test_tl_check_says_too_that_a_garbage_cache_was_rebuilt(image_folder):
    first = extract_features(image_folder, LENET)
    (first.cache_dir / "features.h5").write_bytes(os.urandom(4096))
    r = runner.invoke(app, ["check", str(image_folder), "--backbone", "lenet5", "--no-pretrained", "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "note: features.h5 was unreadable" in " ".join(r.output.split()), r.output
