"""`tl suggest`: which route (extract / finetune --freeze N / retrain) fits a dataset.

The rule: the more data, the fewer layers stay frozen. The decision uses the number of
*training* images of the *smallest* class after the same split `tl extract` makes, because
that class is where a trained network overfits first, and validation images are never trained on.

    train images of the smallest class    route
    < 100                                 extract (backbone frozen, softmax head on cached features)
    100 .. 2000                           finetune --freeze N, N = f(n) * layers of the backbone,
                                          f going log-linearly from 0.9 at 100 to 0.3 at 2000
    > 2000                                retrain (freeze 0)

Log-linear because what each extra image adds shrinks as data grows: doubling 100 -> 200
images changes as much as 1000 -> 2000. The README explains where 100, 2000, 0.9 and 0.3 come from.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from tl_cli.backbones import DEFAULT_BACKBONE
from tl_cli.errors import ConfigError

EXTRACT_BELOW = 100  # train images per class below which only a head is trained
RETRAIN_ABOVE = 2000  # above this, every layer is trained from the pretrained weights
FROZEN_AT_LOW = 0.9  # fraction of layers frozen at EXTRACT_BELOW images per class
FROZEN_AT_HIGH = 0.3  # ... and at RETRAIN_ABOVE
IMBALANCE_RATIO = 3.0  # largest/smallest class above this gets a warning
TOO_FEW = 10  # fewer images (train + val) than this in a class gets a warning


@dataclass(frozen=True)
class ClassCount:
    name: str
    train: int
    val: int


@dataclass(frozen=True)
class Suggestion:
    """A recommended route and why.

    Attributes:
        route: "extract", "finetune" or "retrain".
        freeze: layers kept frozen by `--freeze` (finetune), 0 (retrain), None (extract: the
            whole backbone stays frozen and no layer is trained but the new head).
        n_layers: the backbone's layer count (`tl layers`), the classifier included.
        min_train: train images of the smallest class, the number the decision is made on.
        reasons: why this route, in sentences.
        warnings: class imbalance, classes with very few images.
        counts: per-class train/val image counts.
        command: the command line to run.
    """

    route: str
    freeze: int | None
    backbone: str
    n_layers: int
    min_train: int
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    counts: tuple[ClassCount, ...]
    command: str

    @property
    def frozen_layers(self) -> int:
        """Layers that keep their pretrained weights (extract: all but the replaced classifier)."""
        return self.n_layers - 1 if self.freeze is None else self.freeze

    def to_dict(self) -> dict:
        d = asdict(self)
        d["counts"] = {c.name: {"train": c.train, "val": c.val} for c in self.counts}
        d["reasons"], d["warnings"] = list(self.reasons), list(self.warnings)
        d["frozen_layers"] = self.frozen_layers
        return d


def frozen_fraction(n_train: int) -> float:
    """Share of layers to freeze for `n_train` images in the smallest class (clamped to 0.9..0.3)."""
    n = min(max(n_train, EXTRACT_BELOW), RETRAIN_ABOVE)
    t = math.log(n / EXTRACT_BELOW) / math.log(RETRAIN_ABOVE / EXTRACT_BELOW)  # 0 at 100, 1 at 2000
    return FROZEN_AT_LOW + t * (FROZEN_AT_HIGH - FROZEN_AT_LOW)


def freeze_for(n_train: int, n_layers: int) -> int:
    """`--freeze N` for the finetune route; rounded half up, at most n_layers - 1 (the head trains)."""
    return min(n_layers - 1, math.floor(frozen_fraction(n_train) * n_layers + 0.5))


def recommend(
    counts: Mapping[str, tuple[int, int]],
    n_layers: int,
    backbone: str = DEFAULT_BACKBONE,
    data_arg: str = "DATA",
) -> Suggestion:
    """Pick a route from per-class (train, val) image counts and the backbone's layer count.

    Pure: no files are read. Raises ConfigError with fewer than two classes or no layers.

    Example:
        >>> recommend({"cats": (240, 60), "dogs": (240, 60)}, 50).command
        'tl finetune DATA --freeze 36'
    """
    if len(counts) < 2:
        raise ConfigError(f"a classifier needs at least two classes, got {len(counts)}")
    if n_layers < 2:
        raise ConfigError(f"backbone {backbone} has {n_layers} layer(s); need at least 2")
    cc = tuple(ClassCount(name, int(tr), int(va)) for name, (tr, va) in counts.items())
    smallest = min(cc, key=lambda c: c.train)
    largest = max(cc, key=lambda c: c.train)
    n = smallest.train
    basis = f"the smallest class ({smallest.name}) has {n} training images"
    opt = "" if backbone == DEFAULT_BACKBONE else f" --backbone {backbone}"
    if n < EXTRACT_BELOW:
        route, freeze = "extract", None
        reasons = (
            f"{basis}, fewer than {EXTRACT_BELOW}: too few to train convolution layers without overfitting",
            f"so keep all {n_layers - 1} layers of {backbone} frozen and train only a softmax head on its "
            "cached features (fast, and the strongest choice with little data)",
        )
        command = f"tl extract {data_arg}{opt}"
    elif n > RETRAIN_ABOVE:
        route, freeze = "retrain", 0
        reasons = (
            f"{basis}, more than {RETRAIN_ABOVE}: enough to adapt every layer to your images",
            f"so train all {n_layers} layers of {backbone}, starting from the pretrained weights",
        )
        command = f"tl retrain {data_arg}{opt}"
    else:
        route, freeze = "finetune", freeze_for(n, n_layers)
        frac = frozen_fraction(n)
        reasons = (
            f"{basis}, between {EXTRACT_BELOW} and {RETRAIN_ABOVE}: enough to adapt the later, task-specific "
            "layers, not enough for the early, generic ones",
            f"freeze {frac:.0%} of the layers (90% at {EXTRACT_BELOW} images, 30% at {RETRAIN_ABOVE}, "
            f"log-linear between): layers 1..{freeze} of {backbone}'s {n_layers} keep their pretrained weights, "
            f"layers {freeze + 1}..{n_layers} are trained (the last one is the new head)",
        )
        command = f"tl finetune {data_arg} --freeze {freeze}{opt}"
    warnings: list[str] = []
    if n > 0 and largest.train / n > IMBALANCE_RATIO:
        warnings.append(
            f"classes are imbalanced: {largest.name} has {largest.train / n:.1f}x the training images of "
            f"{smallest.name}; the route follows the smallest class (collect more of it"
            + (", or use `tl extract --balanced`)" if route == "extract" else ")")
        )
    few = [c for c in cc if c.train + c.val < TOO_FEW]
    if few:
        warnings.append(
            "very few images in " + ", ".join(f"{c.name} ({c.train + c.val})" for c in few)
            + f": with under {TOO_FEW} per class, accuracy on that class is mostly luck; collect more"
        )
    return Suggestion(route, freeze, backbone, n_layers, n, reasons, tuple(warnings), cc, command)


def suggest(data_dir: str | os.PathLike, backbone: str = DEFAULT_BACKBONE, val_fraction: float = 0.2) -> Suggestion:
    """Count a dataset's images per class with `tl extract`'s split and recommend a route.

    Raises:
        DataError: missing or empty folder, a class without images, a single class.
        UnknownBackbone: `backbone` is not registered.

    Example:
        >>> suggest("photos").route
        'extract'
    """
    from tl_cli.backbones.describe import layer_count
    from tl_cli.data.scan import scan_dataset

    ds = scan_dataset(data_dir, val_fraction)
    counts = {c: [0, 0] for c in ds.classes}
    for s in ds.samples:
        counts[ds.classes[s.label]][0 if s.split == "train" else 1] += 1
    return recommend({c: (tr, va) for c, (tr, va) in counts.items()}, layer_count(backbone),
                     backbone, shlex.quote(str(data_dir)))
