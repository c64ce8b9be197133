"""`tl suggest`: thresholds, the more-data-fewer-frozen rule, layer counts per backbone, errors."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from tests.helpers.images import make_folder
from tl_cli.backbones.describe import layer_count
from tl_cli.cli import app
from tl_cli.data.scan import scan_dataset
from tl_cli.errors import ConfigError, DataError
from tl_cli.suggest import EXTRACT_BELOW, RETRAIN_ABOVE, freeze_for, frozen_fraction, recommend, suggest

runner = CliRunner()


def two(n_small: int, n_big: int | None = None) -> dict:
    return {"a": (n_small, 5), "b": (n_big if n_big is not None else n_small, 5)}


def test_thresholds_pick_the_route():
    assert recommend(two(EXTRACT_BELOW - 1), 50).route == "extract"
    assert recommend(two(EXTRACT_BELOW), 50).route == "finetune"
    assert recommend(two(RETRAIN_ABOVE), 50).route == "finetune"
    r = recommend(two(RETRAIN_ABOVE + 1), 50)
    assert (r.route, r.freeze, r.frozen_layers) == ("retrain", 0, 0)
    e = recommend(two(10), 50)
    assert (e.freeze, e.frozen_layers) == (None, 49)  # everything but the replaced classifier
    assert e.command == "tl extract DATA"


def test_fraction_end_points_and_log_linear_middle():
    assert frozen_fraction(EXTRACT_BELOW) == pytest.approx(0.9)
    assert frozen_fraction(RETRAIN_ABOVE) == pytest.approx(0.3)
    geometric_mid = math.sqrt(EXTRACT_BELOW * RETRAIN_ABOVE)  # log-linear: halfway in log(n)
    assert frozen_fraction(geometric_mid) == pytest.approx(0.6)
    assert freeze_for(100, 50) == 45 and freeze_for(2000, 50) == 15
    # the documented example: 240 train images per class, efficientnet_lite0
    assert recommend(two(240), 50).freeze == 36


def test_decision_uses_the_smallest_class():
    assert recommend(two(50, 5000), 50).route == "extract"
    assert recommend({"a": (3000, 0), "b": (2500, 0), "c": (150, 0)}, 50).route == "finetune"


@pytest.mark.parametrize("n_layers", [5, 8, 16, 50, 54])
def test_more_data_never_freezes_more_layers(n_layers):
    sizes = list(range(0, 3000, 7)) + [EXTRACT_BELOW - 1, EXTRACT_BELOW, RETRAIN_ABOVE, RETRAIN_ABOVE + 1]
    frozen = [recommend(two(n), n_layers).frozen_layers for n in sorted(sizes)]
    assert all(a >= b for a, b in zip(frozen, frozen[1:])), frozen
    assert all(0 <= f <= n_layers - 1 for f in frozen)  # the head is always trained


def test_layer_counts_per_backbone():
    assert layer_count("efficientnet_lite0") == 50
    assert layer_count("vgg16") == 16
    assert layer_count("alexnet") == 8
    assert layer_count("lenet5") == 5
    # the same share of a different backbone's layers
    assert recommend(two(240), 16, backbone="vgg16").freeze == round(frozen_fraction(240) * 16)
    assert recommend(two(240), 16, backbone="vgg16").command == "tl finetune DATA --freeze 12 --backbone vgg16"


def test_warnings_imbalance_and_too_few():
    r = recommend({"a": (400, 100), "b": (120, 30)}, 50)
    assert any("imbalanced" in w and "3.3x" in w for w in r.warnings)
    assert not recommend({"a": (300, 0), "b": (100, 0)}, 50).warnings  # ratio exactly 3: fine
    r = recommend({"a": (7, 1), "b": (50, 10)}, 50)
    assert any("very few images in a (8)" in w for w in r.warnings)


def test_counts_match_the_extract_split(image_folder):
    s = suggest(image_folder, backbone="lenet5")
    ds = scan_dataset(image_folder)
    for c in s.counts:
        i = ds.classes.index(c.name)
        assert c.train == sum(1 for x in ds.split("train") if x.label == i)
        assert c.val == sum(1 for x in ds.split("val") if x.label == i)
    assert s.route == "extract" and s.n_layers == 5


def test_errors_on_empty_and_single_class(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        suggest(tmp_path / "empty")
    with pytest.raises(DataError, match="only one class"):
        suggest(make_folder(tmp_path / "one", 3, classes=("red",)))
    with pytest.raises(ConfigError):
        recommend({"a": (100, 0)}, 50)


def test_cli_table_json_and_errors(image_folder, tmp_path):
    r = runner.invoke(app, ["suggest", str(image_folder), "--backbone", "lenet5"])
    assert r.exit_code == 0, r.output
    assert "route: extract" in r.output and "run:  tl extract" in r.output
    r = runner.invoke(app, ["suggest", str(image_folder), "--backbone", "lenet5", "--format", "json"])
    d = json.loads(r.stdout)
    assert d["route"] == "extract" and set(d["counts"]) == {"red", "green", "blue"}
    assert sum(v["train"] + v["val"] for v in d["counts"].values()) == 36
    r = runner.invoke(app, ["suggest", str(image_folder), "--backbone", "nosuchnet"])
    assert r.exit_code == 2 and "nosuchnet" in r.output
    r = runner.invoke(app, ["suggest", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "dataset folder not found" in r.output and "Traceback" not in r.output


def test_cli_defaults_to_the_last_dataset(image_folder):
    r = runner.invoke(app, ["suggest"])
    assert r.exit_code == 2 and "no dataset given" in r.output
    from tl_cli.runs.workspace import Workspace

    Workspace.open().remember(last_dataset=image_folder)
    r = runner.invoke(app, ["suggest", "--backbone", "lenet5", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert sum(v["train"] + v["val"] for v in json.loads(r.stdout)["counts"].values()) == 36


def test_real_catsdogs(shared_data):
    s = suggest(shared_data / "catsdogs")
    assert (s.route, s.freeze, s.n_layers) == ("finetune", 36, 50)


def test_suggest_never_downloads_weights_to_look_for_cached_features(image_folder, tmp_path, monkeypatch):
    """Features can only be cached where the weights are: with none here, `tl suggest -b resnet18`
    counts images and asks no server for 45 MB of weights (nor waits on one)."""
    from tests.helpers.weights_server import weights_server

    monkeypatch.delenv("TL_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    with weights_server() as srv:
        monkeypatch.setenv("TL_WEIGHTS_MIRROR", srv.url + "/mirror")
        r = CliRunner().invoke(app, ["suggest", str(image_folder), "--backbone", "resnet18"])
        assert r.exit_code == 0, r.output
        assert srv.requests == [], srv.requests
    assert "resnet18" in r.output
