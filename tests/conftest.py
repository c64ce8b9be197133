"""Shared fixtures: tiny image folders written per test, and an isolated workspace."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.helpers.images import make_folder
from tests.helpers.paths import SHARED_DATA

GPU_TESTS = Path(__file__).resolve().parent / "gpu"


def _selects_gpu(markexpr: str) -> bool:
    """True when `-m` asks for the gpu tests (`-m gpu`, `-m "gpu and not slow"`), not `not gpu`."""
    words = markexpr.replace("(", " ").replace(")", " ").split()
    return any(w == "gpu" and (i == 0 or words[i - 1] != "not") for i, w in enumerate(words))


def pytest_configure(config):
    """Pin the normal suite to the CPU, so that it passes on a GPU machine too.

    Its tests compare with CPU float32 references and run torchrun with CPU assumptions; on a GPU
    machine `--device auto` would otherwise pick CUDA. CUDA_VISIBLE_DEVICES="" hides every GPU
    from this process and the tl processes it starts; it is set before any test imports torch.
    `pytest -m gpu` (tests/gpu/) keeps the GPUs.
    """
    if not _selects_gpu(config.getoption("markexpr", "") or ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_collection_modifyitems(config, items):
    for item in items:  # everything under tests/gpu/ is a gpu test, whatever its file says
        if GPU_TESTS in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def lenet5_engine(tmp_path_factory) -> Path | None:
    """LeNet-5's ONNX engine, exported once per session: the export costs seconds, and most tests
    extract with LeNet-5 on the default engine. None when it cannot be exported here."""
    from tl_cli.backbones import create_backbone, get_spec, resolve_weights
    from tl_cli.features.engines import export_once, onnx_path, onnxruntime_available

    if not onnxruntime_available():
        return None
    spec = get_spec("lenet5")
    path = onnx_path(tmp_path_factory.mktemp("engines"), spec, resolve_weights(spec, None, False))
    export_once(lambda: create_backbone("lenet5", pretrained=False)[0], spec.preprocess.input_size, path)
    return path


@pytest.fixture(autouse=True)
def isolated_workspace(tmp_path, monkeypatch, request):
    """Every test gets its own workspace (TL_WORKSPACE) and runs in its own folder.

    The per-user caches (TL_CACHE_DIR for ONNX engines, TORCH_HOME for downloaded weights) point
    into the test's tmp dir (the engine cache holding a copy of LeNet-5's, see `lenet5_engine`),
    so the suite never writes to the real home, and TL_OFFLINE=1 so no test reaches the
    internet; download tests unset it and serve files from 127.0.0.1.
    """
    ws = tmp_path / "ws"
    monkeypatch.setenv("TL_WORKSPACE", str(ws))
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "user_cache"))
    if request.node.get_closest_marker("fresh_engines") is None:
        # A copy of the session's LeNet-5 engine, as if an earlier run had exported it; tests
        # about exporting are marked fresh_engines and start from an empty cache.
        engine = request.getfixturevalue("lenet5_engine")
        if engine is not None:
            (tmp_path / "user_cache" / "engines").mkdir(parents=True)
            shutil.copyfile(engine, tmp_path / "user_cache" / "engines" / engine.name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("TL_OFFLINE", "1")
    monkeypatch.delenv("TL_WEIGHTS_MIRROR", raising=False)
    monkeypatch.delenv("TL_DOWNLOAD_TIMEOUT", raising=False)
    monkeypatch.delenv("TL_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    return ws


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """tmp/data/{red,green,blue}/*.jpg, 12 images each."""
    return make_folder(tmp_path / "data")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def alarm():
    """Fail (instead of hanging) if the test takes longer than 60 s: a FIFO opened for reading, or
    a symlink loop followed, would wait or recurse forever."""

    def boom(*_):
        raise TimeoutError("did not terminate")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
