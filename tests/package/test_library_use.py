"""tl used from Python, as a library caller would: one path is one image, the caller's random
streams are its own, and wrong types or values in configs and arguments are one ConfigError."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tl_cli.errors import ConfigError, RunError
from tl_cli.features.extract import ExtractConfig
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.head.softmax import HeadConfig
from tl_cli.inference.export import ExportConfig


def random_streams() -> tuple:
    return torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate()


def same_streams(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_finetuning_and_loading_the_run_leave_the_callers_random_streams_alone(image_folder):
    from tl_cli.finetune.trainer import resume, start
    from tl_cli.inference.predict import load_predictor

    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    before = random_streams()
    cfg = FinetuneConfig(backbone="lenet5", pretrained=False, freeze=2, epochs=2, workers=0, head_init="random")
    res = start(image_folder, cfg)
    assert same_streams(before, random_streams())  # training seeded (cfg.seed) and drew from them
    predictor = load_predictor(res.run_dir)  # a new head, initialised and then overwritten
    assert same_streams(before, random_streams())
    one = predictor.predict(str(next(image_folder.glob("red/*.jpg"))))  # one path: one image, not its characters
    assert len(one) == 1 and one[0].labels == predictor.predict([next(image_folder.glob("red/*.jpg"))])[0].labels
    with pytest.raises(ConfigError, match="workers"):
        predictor.predict([next(image_folder.glob("red/*.jpg"))], workers=-1)

    with pytest.raises(ConfigError, match="unknown setting.*bogus"):
        resume(res.run_dir, overrides={"bogus": 1})
    with pytest.raises(RunError, match="run folder not found"):
        resume(image_folder.parent / "no_such_run")


@pytest.mark.parametrize("make, field", [
    (lambda: FinetuneConfig(backbone="lenet5", epochs=2.5), "FinetuneConfig.epochs"),
    (lambda: FinetuneConfig(backbone="lenet5", epochs="3"), "FinetuneConfig.epochs"),
    (lambda: FinetuneConfig(backbone="lenet5", lr="0.1"), "FinetuneConfig.lr"),
    (lambda: FinetuneConfig(backbone="lenet5", augment="yes"), "FinetuneConfig.augment"),
    (lambda: FinetuneConfig(backbone="lenet5", freeze=True), "FinetuneConfig.freeze"),
    (lambda: ExtractConfig(batch_size="32"), "ExtractConfig.batch_size"),
    (lambda: HeadConfig(patience=-1), "patience"),
    (lambda: HeadConfig(check_every=0), "check_every"),
    (lambda: ExportConfig(opset=3), "opset"),
    (lambda: ExportConfig(atol=-1.0), "atol"),
])
def test_wrong_types_and_values_in_configs_are_one_config_error(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


def test_numpy_numbers_and_none_where_allowed_are_accepted():
    cfg = FinetuneConfig(backbone="lenet5", epochs=np.int64(3), lr=np.float32(0.01), time_budget=None)
    assert cfg.epochs == 3 and FinetuneConfig(backbone="lenet5", lr=1).lr == 1  # an int is a float


def test_an_opset_the_exporter_cannot_write_is_refused_not_mislabelled(tmp_path):
    from tl_cli.runtime.onnx import export_onnx

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="cannot write opset 30"):  # torch wrote 18 instead, silently
        export_onnx(net.eval(), (3, 8, 8), tmp_path / "m.onnx", "x", "y", opset=30)
    assert not (tmp_path / "m.onnx").exists()


def test_the_readmes_python_example_runs(tmp_path, monkeypatch):
    """The README's "Using tl from Python" block, run as written on small folders, with LeNet-5
    (random weights) in place of the pretrained backbone so it takes seconds."""
    import re
    import shutil

    from tests.helpers.images import make_folder
    from tests.helpers.paths import REPO

    text = (REPO / "README.md").read_text().split("## Using tl from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    tiny = {'ExtractConfig()': 'ExtractConfig(backbone="lenet5", pretrained=False, workers=0)',
            'backbone="efficientnet_lite0", freeze=36': 'backbone="lenet5", pretrained=False, freeze=2, workers=0'}
    for real, small in tiny.items():
        assert real in code
        code = code.replace(real, small)
    monkeypatch.chdir(tmp_path)
    make_folder(tmp_path / "photos")
    make_folder(tmp_path / "photos_test", 3)
    shutil.copy(next((tmp_path / "photos_test" / "red").iterdir()), tmp_path / "new.jpg")
    printed = []
    exec(compile(code, "README.md", "exec"), {"print": lambda *a: printed.append(a)})
    assert len(printed) == 4 and printed[2][0] == "new.jpg" and printed[2][3] is None, printed
    assert 0 <= printed[3][0] <= 1


def test_folders_are_accepted_where_a_workspace_or_run_object_is(image_folder, tmp_path):
    """The CLI takes paths; so does the library: a workspace folder for `workspace=`, a run folder for export."""
    from tl_cli.features.extract import extract_features
    from tl_cli.head.small_data import train_small_data
    from tl_cli.inference.export import export_run
    from tl_cli.runs.workspace import Workspace

    cfg = ExtractConfig(backbone="lenet5", pretrained=False, workers=0)
    res = train_small_data(image_folder, cfg, workspace=str(tmp_path / "ws"))
    assert res.run_dir.parent == tmp_path / "ws" / "runs"
    assert extract_features(image_folder, cfg, tmp_path / "ws").n_cached == 36  # the same cache, by folder
    ws = Workspace.open(tmp_path / "ws")
    assert Workspace.open(ws) is ws
    out = export_run(str(res.run_dir), output=tmp_path / "m.onnx")
    assert out.path.is_file() and out.max_abs_diff < 1e-4
