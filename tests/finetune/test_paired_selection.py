"""The best-epoch rule compares two epochs image by image when it can (state.is_better): the
noise of a difference between two models scored on the same images is in the images they
disagree on (McNemar), less than the single-proportion error when they agree on most."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_cli.backbones import create_backbone, get_spec
from tl_cli.data.scan import scan_dataset
from tl_cli.finetune.config import FinetuneConfig
from tl_cli.finetune.data import make_loaders
from tl_cli.finetune.epoch import validate
from tl_cli.finetune.model import FinetuneModel
from tl_cli.finetune.state import TrainState, best_numbers, is_better, pack_correct, paired_counts, unpack_correct

N = 859  # flowers' validation split


def _vectors(n_both: int, gained: int, lost: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """(best epoch's per-image results, later epoch's): both right on n_both, then the disagreements."""
    before, after = np.zeros(n, bool), np.zeros(n, bool)
    before[:n_both] = after[:n_both] = True
    after[n_both:n_both + gained] = True
    before[n_both + gained:n_both + gained + lost] = True
    return before, after


def _row(epoch: int, correct: np.ndarray, loss: float = 0.6) -> dict:
    return {"epoch": epoch, "val_accuracy": float(correct.mean()), "val_loss": loss, "val_correct": correct,
            "train_loss": 0.5, "train_accuracy": 0.8}


@pytest.mark.parametrize("gained, lost, expected", [
    (25, 16, True),   # 9 images net, 41 disagreements: sqrt(41) = 6.4 images of noise
    (50, 41, False),  # the same 9 net, 91 disagreements: sqrt(91) = 9.5, within noise
    (1, 0, False),    # one image is never enough (sqrt(1) = 1, not more)
    (2, 0, True),     # two images gained and none lost: 2 > sqrt(2)
    (16, 25, False),  # lower
])
def test_paired_rule(gained, lost, expected):
    before, after = _vectors(690, gained, lost)
    best = {"epoch": 11, "val_accuracy": float(before.mean()), "val_loss": 0.6, "val_correct": pack_correct(before)}
    assert is_better(_row(16, after), best, N) is expected


def test_paired_rule_keeps_a_later_epoch_the_unpaired_one_holds_back():
    # As in section 12: 9 images better on 859 (0.8172 -> 0.8277) is within one single-proportion
    # standard error (0.013 = 11 images), but not within the paired noise if they disagree on 41.
    before, after = _vectors(690, 25, 16)
    numbers = {"epoch": 11, "val_accuracy": float(before.mean()), "val_loss": 0.6}
    later = _row(16, after)
    assert not is_better({k: v for k, v in later.items() if k != "val_correct"}, numbers, N)  # unpaired
    assert is_better(later, {**numbers, "val_correct": pack_correct(before)}, N)  # paired


def test_without_both_vectors_the_rule_falls_back_to_the_unpaired_one():
    before, after = _vectors(690, 25, 16)
    best = {"epoch": 11, "val_accuracy": float(before.mean()), "val_loss": 0.6, "val_correct": pack_correct(before)}
    assert paired_counts(None, best["val_correct"]) is None  # an unreadable validation image: no vector
    assert paired_counts(after[:-1], best["val_correct"]) is None  # different images
    assert paired_counts(after, None) is None  # a checkpoint from before the rule
    assert not is_better({**_row(16, after), "val_correct": None}, best, N)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 859])
def test_pack_round_trip(n):
    bits = np.random.default_rng(n).random(n) < 0.5
    packed = pack_correct(bits)
    assert isinstance(packed, str) and np.array_equal(unpack_correct(packed), bits)


def test_record_keeps_the_vector_with_the_best_epoch_only():
    cfg = FinetuneConfig(backbone="lenet5", pretrained=False, freeze=1, epochs=5, patience=0)
    state = TrainState()
    before, after = _vectors(690, 25, 16)
    assert state.record(_row(0, before), cfg, N)
    assert state.record(_row(1, after), cfg, N)
    assert all("val_correct" not in h for h in state.history)  # history.csv and the checkpoint keep numbers
    assert np.array_equal(unpack_correct(state.best["val_correct"]), after)
    assert "val_correct" not in best_numbers(state.best) and best_numbers(state.best)["epoch"] == 1


def _model_and_loader(folder, batch_size):
    ds = scan_dataset(folder)
    torch.manual_seed(0)
    model = FinetuneModel(create_backbone("lenet5", pretrained=False)[0], 3, 2, 32, 0.0)
    loaders = make_loaders(ds, get_spec("lenet5").preprocess, batch_size, 0, False, 0)
    return model, loaders.val


def test_validate_reports_each_image_in_split_order(image_folder):
    model, val = _model_and_loader(image_folder, batch_size=3)  # several batches, the last one short
    v = validate(model, val, torch.device("cpu"))
    model.eval()
    with torch.no_grad():  # one image at a time, in the validation split's order
        expected = [bool(model(x[None]).argmax(1).item() == y) for x, y, _ in (val.dataset[i] for i in range(len(val.dataset)))]
    assert v.correct is not None and v.correct.tolist() == expected
    assert v.accuracy == pytest.approx(float(np.mean(expected)))
    assert 0 < sum(expected) < len(expected)  # an untrained net: some right, some wrong, so order matters


def test_an_unreadable_validation_image_turns_the_vector_off(image_folder):
    model, val = _model_and_loader(image_folder, batch_size=3)
    first = val.dataset.root / val.dataset.samples[0].relpath
    first.write_bytes(b"not an image")
    v = validate(model, val, torch.device("cpu"))
    assert v.correct is None  # positions after it would not line up
    assert v.accuracy is not None and 0 <= v.accuracy <= 1  # the numbers are still measured


def test_a_non_finite_training_loss_ends_the_run_and_keeps_the_best_before_it():
    # Weights that went NaN never come back; the run used to go on to its last epoch, "all epochs done".
    cfg = FinetuneConfig(backbone="lenet5", pretrained=False, freeze=1, epochs=10, patience=0)
    state = TrainState()
    good, _ = _vectors(690, 25, 16)
    assert state.record(_row(0, good), cfg, N)
    state.record({**_row(1, good), "train_loss": float("nan"), "val_loss": float("nan")}, cfg, N)
    assert state.finished and state.stop_reason == "diverged" and state.best["epoch"] == 0
