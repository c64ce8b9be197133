"""Engines and the threaded loader give the features of eager float32 PyTorch on real images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.paths import REPO, SAMPLE_DATA
from tl_cli.backbones import create_backbone, get_spec, resolve_weights
from tl_cli.data.decode import iter_batches, load_crop
from tl_cli.data.preprocess import load_tensor, normalize, normalize_tensor
from tl_cli.errors import ConfigError
from tl_cli.features.engines import OnnxEngine, TorchEngine, choose_engine, make_engine, onnx_path
from tl_cli.features.extract import ExtractConfig, extract_features

pytest.importorskip("onnxruntime")

PHOTOS = SAMPLE_DATA / "photos"


def _photos() -> list[str]:
    return sorted(str(p.relative_to(PHOTOS)) for p in PHOTOS.rglob("*.jpg"))


def _eager(net, x: torch.Tensor) -> np.ndarray:
    """The reference: eager PyTorch, float32, NCHW."""
    with torch.no_grad():
        return net.forward_features(x).numpy()


def test_normalize_is_bit_identical_to_to_tensor():
    for name in ("lenet5", "efficientnet_lite0"):
        pre = get_spec(name).preprocess
        rels = _photos()[:6]
        u8 = np.stack([load_crop(PHOTOS / r, pre) for r in rels])
        ref = torch.stack([load_tensor(PHOTOS / r, pre) for r in rels]).numpy()
        np.testing.assert_array_equal(normalize(u8, pre), ref)  # a batch
        np.testing.assert_array_equal(np.stack([normalize(c, pre) for c in u8]), ref)  # one image at a time
        np.testing.assert_array_equal(normalize_tensor(torch.from_numpy(u8).permute(0, 3, 1, 2), pre).numpy(), ref)


def test_threaded_loader_equals_sequential_in_order_with_failures(tmp_path):
    pre = get_spec("efficientnet_lite0").preprocess
    rels = _photos()
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    root = tmp_path / "mix"
    root.mkdir()
    for r in rels:
        (root / Path(r).name).symlink_to(PHOTOS / r)
    (root / "zz_bad.jpg").symlink_to(tmp_path / "bad.jpg")
    names = sorted(p.name for p in root.iterdir())
    seq = list(iter_batches(root, names, pre, batch_size=7, threads=0))
    par = list(iter_batches(root, names, pre, batch_size=7, threads=3, prefetch=1))
    assert [b.index for b in seq] == [b.index for b in par]
    assert sum(len(b.index) for b in par) == len(names) - 1
    failed = [f for b in par for f in b.failed]
    assert failed == [f for b in seq for f in b.failed] and [i for i, _ in failed] == [names.index("zz_bad.jpg")]
    for a, b in zip(seq, par):
        np.testing.assert_array_equal(a.pixels, b.pixels)
    first = normalize(par[0].pixels, pre)
    ref = torch.stack([load_tensor(root / names[i], pre) for i in par[0].index]).numpy()
    np.testing.assert_array_equal(first, ref)
    # normalised in the decode threads: the exact network input of the sequential reference
    normed = list(iter_batches(root, names, pre, batch_size=7, threads=2, normalize=True))
    assert [b.index for b in normed] == [b.index for b in seq]
    np.testing.assert_array_equal(normed[0].pixels, ref)


@pytest.mark.slow
def test_onnx_equals_eager_float32_on_real_photos_with_default_backbone(tmp_path):
    spec = get_spec("efficientnet_lite0")
    net, choice = create_backbone(spec.name)
    built = []
    eng, notes = make_engine("onnx", spec, choice, "cpu", tmp_path / "engines", lambda: built.append(1) or net)
    assert isinstance(eng, OnnxEngine) and built == [1] and notes
    assert eng.path == onnx_path(tmp_path / "engines", spec, choice) and eng.path.is_file()
    x = torch.stack([load_tensor(PHOTOS / r, spec.preprocess) for r in _photos()])
    ref = _eager(net, x)
    got = eng(x.numpy())
    assert got.shape == ref.shape == (len(x), spec.feature_dim)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # channels_last eager (the CPU torch engine) is also within float32 tolerance
    np.testing.assert_allclose(TorchEngine(net, torch.device("cpu"))(x.numpy()), ref, rtol=1e-4, atol=1e-4)
    # the exported file is reused: the network is not built again
    again, notes = make_engine("auto", spec, choice, "cpu", tmp_path / "engines", lambda: pytest.fail("rebuilt"))
    assert isinstance(again, OnnxEngine) and not notes
    np.testing.assert_array_equal(again(x.numpy()[:3]), got[:3])


def test_extract_with_onnx_equals_torch_and_shares_the_cache(image_folder, tmp_path):
    base = dict(backbone="lenet5", pretrained=False, workers=2, batch_size=5)
    a = extract_features(image_folder, ExtractConfig(engine="onnx", **base))
    assert a.engine == "onnx" and a.n_extracted == 36
    net, _ = create_backbone("lenet5", pretrained=False)
    pre = get_spec("lenet5").preprocess
    ref = _eager(net, torch.stack([load_tensor(image_folder / r, pre) for r in a.relpaths]))
    np.testing.assert_allclose(a.features, ref, rtol=1e-4, atol=1e-5)
    # the engine is a speed choice, not a different feature: torch reuses the onnx rows
    b = extract_features(image_folder, ExtractConfig(engine="torch", **base))
    assert b.n_extracted == 0 and b.cache_key == a.cache_key
    from tl_cli.runs.workspace import Workspace

    ws = Workspace.open(tmp_path / "other")
    c = extract_features(image_folder, ExtractConfig(engine="torch", **base), workspace=ws)
    assert c.engine == "torch" and c.n_extracted == 36
    np.testing.assert_allclose(c.features, a.features, rtol=1e-4, atol=1e-5)


def test_engine_choice():
    assert choose_engine("auto", "cpu") == "onnx"
    assert choose_engine("auto", "cuda") == "torch"
    assert choose_engine("torch", "cpu") == "torch"
    with pytest.raises(ConfigError):
        choose_engine("tensorrt", "cpu")
    with pytest.raises(ConfigError):
        choose_engine("onnx", "cuda")
    with pytest.raises(ConfigError):
        ExtractConfig(engine="fast")


def test_a_cached_onnx_engine_does_not_import_torch(tmp_path):
    """Start-up: with the engine exported, a CPU extraction never pays for `import torch`."""
    import subprocess
    import sys

    spec = get_spec("lenet5")
    choice = resolve_weights(spec, pretrained=False)
    make_engine("onnx", spec, choice, "cpu", tmp_path, lambda: create_backbone("lenet5", pretrained=False)[0])
    code = (
        "import sys; from pathlib import Path; from tl_cli.backbones import get_spec, resolve_weights;"
        "from tl_cli.features.engines import make_engine; s = get_spec('lenet5');"
        f"e, _ = make_engine('auto', s, resolve_weights(s, pretrained=False), 'auto', Path({str(tmp_path)!r}), None);"
        "print(e.name, 'torch' in sys.modules)"
    )
    root = REPO
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["onnx", "False"], out.stderr


def test_predict_on_the_engine_equals_eager_torch_and_skips_torch(image_folder):
    import subprocess
    import sys

    from tl_cli.head.small_data import train_small_data
    from tl_cli.inference.predict import Predictor, _HeadOnEngine
    from tl_cli.runs.store import load_run
    from tl_cli.runs.workspace import Workspace

    res = train_small_data(image_folder, ExtractConfig(backbone="lenet5", pretrained=False, workers=0))
    files = sorted(str(p) for p in image_folder.rglob("*.jpg"))[::4]
    fast = Predictor.from_workspace()
    assert isinstance(fast.model, _HeadOnEngine)
    ref = Predictor(load_run(res.run_dir))  # no engines_dir: eager PyTorch
    pf, kf, _ = fast.probabilities(files)
    pr, kr, _ = ref.probabilities(files)
    assert kf == kr
    np.testing.assert_allclose(pf, pr, rtol=1e-4, atol=1e-5)
    assert [p.labels for p in fast.predict(files, topk=2)] == [p.labels for p in ref.predict(files, topk=2)]
    root = REPO
    code = ("import sys; from tl_cli.inference.predict import Predictor; from tl_cli.runs.workspace import Workspace;"
            f"p = Predictor.from_workspace(workspace=Workspace.open({str(Workspace.open().root)!r}));"
            f"print(p.predict([{files[0]!r}])[0].labels[0], 'torch' in sys.modules)")
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "TL_CACHE_DIR": os.environ["TL_CACHE_DIR"]}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env)
    assert out.stdout.split() == [fast.predict([files[0]])[0].labels[0], "False"], out.stderr
