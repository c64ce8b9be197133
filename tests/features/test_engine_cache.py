"""Exported ONNX engines live in the per-user cache: reused by new workspaces, exported once even
when two processes need them at the same moment, never left half-written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tl_cli.backbones import create_backbone, get_spec, resolve_weights
from tl_cli.errors import ExportError
from tl_cli.features.engines import export_once, make_engine, onnx_path
from tl_cli.features.extract import ExtractConfig, extract_features
from tl_cli.runtime import cache_dirs
from tl_cli.runtime.atomic import TMP_PREFIX

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[2]


def _lenet():
    spec = get_spec("lenet5")
    return spec, resolve_weights(spec, pretrained=False)


def test_cache_dir_follows_tl_cache_dir_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dirs.engines_dir() == tmp_path / "a" / "engines"
    monkeypatch.delenv("TL_CACHE_DIR")
    assert cache_dirs.engines_dir() == tmp_path / "x" / "tl" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dirs.user_cache_dir() == tmp_path / "home" / ".cache" / "tl"


def test_torch_checkpoints_dir_is_torch_hubs(monkeypatch, tmp_path):
    import torch.hub

    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"TORCH_HOME": None, "XDG_CACHE_HOME": str(tmp_path / "xdg")}):
        for k, v in env.items():
            monkeypatch.delenv(k, raising=False) if v is None else monkeypatch.setenv(k, v)
        assert cache_dirs.torch_checkpoints_dir() == Path(torch.hub.get_dir()) / "checkpoints"


def test_a_new_workspace_reuses_the_engine(image_folder, tmp_path, monkeypatch):
    cfg = ExtractConfig(backbone="lenet5", pretrained=False, workers=0, engine="onnx")
    first = extract_features(image_folder, cfg)
    assert any("exported" in n for n in first.notes)
    monkeypatch.setenv("TL_WORKSPACE", str(tmp_path / "second_ws"))
    second = extract_features(image_folder, cfg)
    assert not any("exported" in n for n in second.notes)
    engines = sorted(cache_dirs.engines_dir().glob("*.onnx"))
    assert [p.parent for p in engines] == [Path(os.environ["TL_CACHE_DIR"]) / "engines"]
    assert not (tmp_path / "second_ws" / "engines").exists() and not (tmp_path / "ws" / "engines").exists()


_EXPORTER = """
import sys, time
from pathlib import Path
from tl_cli.backbones import create_backbone, get_spec, resolve_weights
from tl_cli.features.engines import make_engine
start = Path(sys.argv[1])
while not start.exists():
    time.sleep(0.01)
s = get_spec("lenet5")
e, notes = make_engine("onnx", s, resolve_weights(s, pretrained=False), "cpu", Path(sys.argv[2]),
                       lambda: create_backbone("lenet5", pretrained=False)[0])
print("exported" if notes else "reused", e.path)
"""


def test_two_processes_exporting_the_same_engine_at_once(tmp_path):
    start, engines = tmp_path / "go", tmp_path / "engines"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _EXPORTER, str(start), str(engines)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(3)  # both imported and waiting
    start.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    words = sorted(o[0].split()[0] for o in outs)
    assert words == ["exported", "reused"]  # the lock: one exports, the other waits and reuses
    spec, choice = _lenet()
    path = onnx_path(engines, spec, choice)
    assert {o[0].split()[1] for o in outs} == {str(path)}
    assert [p.name for p in engines.iterdir() if not p.name.endswith(".lock")] == [path.name]
    eng, notes = make_engine("onnx", spec, choice, "cpu", engines, None)
    net, _ = create_backbone("lenet5", pretrained=False)
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    import torch

    with torch.no_grad():
        ref = net.forward_features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(eng(x), ref, rtol=1e-4, atol=1e-5)
    assert notes == []


def test_killed_exporters_temporary_is_removed_and_a_failed_check_leaves_nothing(tmp_path, monkeypatch):
    spec, choice = _lenet()
    path = onnx_path(tmp_path, spec, choice)
    stale = tmp_path / f"{TMP_PREFIX}{path.name}.abc123.onnx"
    stale.write_bytes(b"half an onnx file")
    from tl_cli.features import engines

    def wrong(net, size, f):
        raise ExportError("does not reproduce")

    build = lambda: create_backbone("lenet5", pretrained=False)[0]  # noqa: E731
    with monkeypatch.context() as m, pytest.raises(ExportError):
        m.setattr(engines, "_verify_export", wrong)
        export_once(build, spec.preprocess.input_size, path)
    assert not stale.exists() and not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [f".{path.name}.lock"]
    assert export_once(build, spec.preprocess.input_size, path) is True
    assert export_once(build, spec.preprocess.input_size, path) is False
