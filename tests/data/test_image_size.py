"""The training side: the backbone's input size, or the images' own shorter side when smaller (not below 128)."""

from __future__ import annotations

import pytest

from tests.helpers.images import write_image
from tl_cli.data.image_size import MIN_SIDE, at_side, training_side, typical_side
from tl_cli.data.preprocess import Preprocess


@pytest.mark.parametrize(("native", "input_size", "expected"), [
    (None, 224, 224),  # nothing readable: the backbone's size
    (500, 224, 224), (224, 224, 224),  # large photos: never above the backbone's size
    (200, 224, 224),  # 200 rounds up to 224
    (150, 224, 160), (128, 224, 128),  # small photos: their own size, in multiples of 32
    (100, 224, 128), (32, 224, 128),  # tiny ones: not below 128 (BiT's size for small images)
    (20, 32, 32), (64, 32, 32),  # a 32-px backbone (LeNet-5) is never raised to the floor
    (300, 384, 320),
])
def test_training_side(native, input_size, expected):
    assert training_side(native, input_size) == expected
    assert training_side(native, input_size) <= input_size
    assert MIN_SIDE == 128


def test_at_side_keeps_the_crop_ratio():
    pre = Preprocess(input_size=224, resize_size=256, interpolation="bicubic")
    small = at_side(pre, 128)
    assert (small.input_size, small.resize_size) == (128, 146)
    assert (small.mean, small.std, small.interpolation) == (pre.mean, pre.std, pre.interpolation)
    assert at_side(pre, 224) is pre
    squash = at_side(Preprocess(input_size=32, resize_size=32), 64)  # no crop stays no crop
    assert (squash.input_size, squash.resize_size) == (64, 64)


def test_typical_side_is_the_median_shorter_side_from_headers(tmp_path):
    sizes = [(300, 120), (90, 200), (130, 130), (640, 480), (100, 400)]  # shorter sides 120 90 130 480 100
    paths = [write_image(tmp_path / f"{i}.png", (10, 20, 30), size=s) for i, s in enumerate(sizes)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert typical_side(paths + [bad]) == 120  # the unreadable file is left out, not fatal
    assert typical_side([bad]) is None
    assert typical_side([]) is None


def test_typical_side_samples_evenly(tmp_path):
    paths = [write_image(tmp_path / f"{i:02d}.png", (1, 2, 3), size=(50 + i, 60 + i)) for i in range(20)]
    assert typical_side(paths, sample=5) == 50 + 8  # every 4th of 20: 0 4 8 12 16 -> median 8
