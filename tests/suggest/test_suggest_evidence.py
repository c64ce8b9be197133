"""`tl suggest` weighs the measured linear probe when the workspace has the dataset's features."""

from __future__ import annotations

import pytest

from tl_cli.suggest import NEAR_PERFECT, WEAK_PROBE, ProbeEvidence, recommend, suggest

FLOWERS_LIKE = {c: (460, 115) for c in "abcde"}  # the count alone says finetune
FEW = {c: (40, 10) for c in "abcde"}  # the count alone says extract


def test_near_perfect_probe_says_extract_is_enough():
    s = recommend(FLOWERS_LIKE, 50, probe=ProbeEvidence(0.99, 575))
    assert s.route == "extract" and s.freeze is None and s.command == "tl extract DATA"
    assert "0.990" in s.reasons[0] and "extract is enough" in s.reasons[1] and "would have said finetune" in s.reasons[1]


def test_weak_probe_with_enough_images_says_finetune_and_why():
    s = recommend(FLOWERS_LIKE, 50, probe=ProbeEvidence(0.75, 575))
    assert s.route == "finetune" and s.command.startswith("tl finetune DATA --freeze ")
    assert s.freeze == recommend(FLOWERS_LIKE, 50).freeze  # the depth follows the count
    assert f"below {WEAK_PROBE}" in s.reasons[-1] and "0.750" in s.reasons[-1]


def test_weak_probe_with_few_images_stays_extract_and_says_what_would_change_it():
    s = recommend(FEW, 50, probe=ProbeEvidence(0.70, 50))
    assert s.route == "extract" and "100+ per class" in s.reasons[-1]


def test_tiny_validation_set_is_not_evidence():
    s = recommend(FLOWERS_LIKE, 50, probe=ProbeEvidence(1.0, 6))
    assert s.route == "finetune" and "too few validation images" in s.reasons[-1]


def test_middle_probe_keeps_the_count_and_reports_it():
    s = recommend(FLOWERS_LIKE, 50, probe=ProbeEvidence((NEAR_PERFECT + WEAK_PROBE) / 2, 575))
    assert s.route == "finetune" and "scores" in s.reasons[-1]
    assert s.to_dict()["probe"] == {"val_accuracy": pytest.approx((NEAR_PERFECT + WEAK_PROBE) / 2), "n_val": 575}


def test_suggest_measures_the_probe_from_the_extract_cache(image_folder, tmp_path):
    from tl_cli.features.extract import ExtractConfig
    from tl_cli.head.small_data import train_small_data
    from tl_cli.runs.store import load_run
    from tl_cli.runs.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    before = suggest(image_folder, "lenet5", workspace=ws)
    assert before.probe is None and "no measured probe" in before.reasons[-1]  # nothing cached yet: the count alone
    res = train_small_data(image_folder, ExtractConfig(backbone="lenet5", pretrained=False, workers=0), workspace=ws)
    s = suggest(image_folder, "lenet5", workspace=ws)
    assert s.probe is not None
    # the same head tl extract fitted, on the same features and split: the same validation accuracy
    assert s.probe.val_accuracy == pytest.approx(load_run(res.run_dir).meta.metrics["val_accuracy"])
    assert s.probe.n_val == sum(c.val for c in s.counts)
