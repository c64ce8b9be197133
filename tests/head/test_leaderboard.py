"""`tl extract DATA --backbone a,b,c`: one cache and one run per backbone, a ranked table, the best kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tl_cli.cli import app
from tl_cli.errors import ConfigError, UnknownBackbone
from tl_cli.head.leaderboard import Entry, parse_backbones
from tl_cli.runs.store import load_run
from tl_cli.runs.workspace import Workspace

runner = CliRunner()
FAST = ["--no-pretrained", "--workers", "0", "--batch-size", "8"]  # seeded random weights: no downloads


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_leaderboard_ranks_keeps_best_and_reuses_caches(image_folder):
    r = tl("extract", image_folder, "--backbone", "lenet5,timm/test_resnet.r160_in1k", *FAST)
    assert r.exit_code == 0, r.output
    ws = Workspace.open()
    board = json.loads((ws.root / "leaderboard.json").read_text())["entries"]
    assert [e["backbone"] for e in board] != [] and len(board) == 2
    # The ranking is the runs' own validation scores: accuracy first, then lower loss.
    metrics = {e["backbone"]: load_run(Path(e["run_dir"])).meta.metrics for e in board}
    keys = [(-metrics[e["backbone"]]["val_accuracy"], metrics[e["backbone"]]["val_loss"]) for e in board]
    assert keys == sorted(keys)
    assert Path(ws.latest_run()) == Path(board[0]["run_dir"])  # the best is the latest run
    for e in board:  # every backbone has its own run, with its own backbone and preprocessing
        assert load_run(Path(e["run_dir"])).meta.backbone == e["backbone"]
        assert e["n_extracted"] == 36 and e["backbone"] in r.stdout
    assert {e["feature_dim"] for e in board} == {84, 96}
    from tl_cli.backbones import create_backbone

    net, _ = create_backbone("lenet5", pretrained=False)
    body = sum(p.numel() for p in net.net.parameters())  # without its classifier (fc3)
    assert next(e for e in board if e["backbone"] == "lenet5")["params"] == body < sum(p.numel() for p in net.parameters())

    # Adding a backbone later extracts only that one; the others come from their caches.
    r = tl("extract", image_folder, "--backbone", "lenet5,timm/test_resnet.r160_in1k,timm/test_vit.r160_in1k", *FAST)
    assert r.exit_code == 0, r.output
    board = json.loads((ws.root / "leaderboard.json").read_text())["entries"]
    extracted = {e["backbone"]: e["n_extracted"] for e in board}
    assert extracted == {"lenet5": 0, "timm/test_resnet.r160_in1k": 0, "timm/test_vit.r160_in1k": 36}
    assert r.stdout.count("cached") == 2
    assert Path(ws.latest_run()) == Path(board[0]["run_dir"])
    assert len(list(ws.runs.iterdir())) == 5  # every run is kept


def test_ties_go_to_the_lower_validation_loss():
    mk = lambda name, acc, loss: Entry(name, acc, loss, 8, 1, None, 0, name)  # noqa: E731
    rows = [mk("a", 0.9, 0.5), mk("b", 0.95, 0.9), mk("c", 0.9, 0.3), mk("d", None, None)]
    assert [e.backbone for e in sorted(rows, key=Entry.rank_key)] == ["b", "c", "a", "d"]


def test_bad_lists_fail_before_extracting(image_folder):
    with pytest.raises(UnknownBackbone):
        parse_backbones("lenet5,resnet5O")
    with pytest.raises(ConfigError, match="more than once"):
        parse_backbones("lenet5,lenet5")
    with pytest.raises(ConfigError, match="empty"):
        parse_backbones("lenet5,")
    r = tl("extract", image_folder, "--backbone", "lenet5,timm/nope_net", *FAST)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert not Workspace.open().runs.exists() or not any(Workspace.open().runs.iterdir())


def test_leaderboard_under_torchrun_matches_one_process(tmp_path, image_folder):
    """Two gloo ranks share each extraction (a timm model among them); rank 0 ranks the same way."""
    from tests.helpers.torchrun import torchrun

    args = ["extract", str(image_folder), "--backbone", "lenet5,timm/test_resnet.r160_in1k", *FAST]
    r = torchrun(args, tmp_path / "ws2", timeout=300)
    assert r.returncode == 0, "\n".join(line for line in r.stderr.splitlines() if "rror" in line)[-3000:]
    assert r.stdout.count("best first") == 1 and r.stderr.count("leaderboard 2/2") == 1  # rank 0 alone prints
    two = json.loads((tmp_path / "ws2" / "leaderboard.json").read_text())["entries"]
    assert tl(*args).exit_code == 0
    one = json.loads((Workspace.open().root / "leaderboard.json").read_text())["entries"]
    assert [(e["backbone"], e["val_accuracy"]) for e in two] == [(e["backbone"], e["val_accuracy"]) for e in one]
    for a, b in zip(two, one):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-6)


def test_a_folder_name_with_brackets_is_printed_not_parsed_as_markup(image_folder, tmp_path):
    import shutil

    data = tmp_path / "a[/b] [bold]c"
    shutil.copytree(image_folder, data)
    r = tl("extract", data, "--backbone", "lenet5,timm/test_resnet.r160_in1k", *FAST)
    assert r.exit_code == 0, r.output
    assert "a[/b] [bold]c" in r.stdout and "backbones, best first" in r.stdout


def test_missing_weights_of_a_later_backbone_fail_before_any_extraction(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))  # resnet18's weights are nowhere
    r = tl("extract", image_folder, "--backbone", "lenet5,resnet18", "--workers", "0")
    assert r.exit_code == 2, r.output
    assert "resnet18" in r.output and "Traceback" not in r.output
    ws = Workspace.open()
    assert not (ws.runs.exists() and any(ws.runs.iterdir())) and not (ws.caches.exists() and any(ws.caches.iterdir()))
