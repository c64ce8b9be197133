"""The side, in pixels, that fine-tuning feeds the network: the backbone's, or the images' own when smaller.

A backbone declares the input size its weights were trained at (224 for efficientnet_lite0).
Photos smaller than that gain no detail from being upsampled to it, while a training step costs
about the square of the side: 128-px images trained at 224 px pay 3x the compute for the same
pixels. So fine-tuning trains (and the run then predicts) at the images' typical shorter side,
rounded up to a multiple of 32, never below `MIN_SIDE` and never above the backbone's size.

`MIN_SIDE` = 128 follows BiT's rule for small images (Kolesnikov et al., "Big Transfer", ECCV
2020: images under 96 x 96 are fine-tuned at 128 px): far below it the network's 32x downsampling
leaves a final feature map of 1-2 cells. Measured on ../shared flowers (128-px photos,
benchmarks/finetune_study.md section 11): the probe scores 0.759 at 128 px against 0.754 at
224, and a fine-tuning epoch takes 37 s instead of 125 s with the same accuracy per epoch.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tl_cli.data.preprocess import Preprocess

MIN_SIDE = 128
SAMPLE = 200  # headers read to find the typical size: evenly spaced, so the result is deterministic


def typical_side(paths: Sequence[Path], sample: int = SAMPLE) -> int | None:
    """Median shorter side of up to `sample` evenly spaced images (headers only); None if none is readable."""
    from PIL import Image

    step = max(1, len(paths) // sample)
    sides = []
    for path in list(paths)[::step][:sample]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # size only: bomb checks happen when the image is decoded
                with Image.open(path) as im:  # lazy: reads the header, decodes nothing
                    sides.append(min(im.size))
        except Exception:  # noqa: BLE001 - an unreadable file is reported when it is loaded, not here
            continue
    return int(statistics.median(sides)) if sides else None


def training_side(native: int | None, input_size: int) -> int:
    """The side to train at for images whose typical shorter side is `native` (None: unknown)."""
    if native is None or native >= input_size:
        return input_size
    rounded = -(-native // 32) * 32
    return min(input_size, max(MIN_SIDE, rounded))


def at_side(pre: Preprocess, side: int) -> Preprocess:
    """`pre` scaled to feed `side`-px crops: the resize keeps the backbone's crop ratio (224/256 -> 128/146)."""
    if side == pre.input_size:
        return pre
    return replace(pre, input_size=side, resize_size=max(side, round(side * pre.resize_size / pre.input_size)))
