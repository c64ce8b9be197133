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

Evidence first: when the workspace holds `tl extract` features of this dataset (same backbone,
weights and images), the softmax head is fitted on them (a few seconds) and its validation
accuracy overrides the count where it says more: a probe at or above NEAR_PERFECT means the
pretrained features already separate the classes, so extract is enough whatever the count; a
probe below WEAK_PROBE means the features must adapt, which fine-tuning does once the count
allows it (the depth still follows the count). Measured in benchmarks/finetune_study.md.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from tl_cli.backbones import DEFAULT_BACKBONE
from tl_cli.errors import ConfigError
from tl_cli.finetune.config import SGD_AFTER_PROBE

EXTRACT_BELOW = 100  # train images per class below which only a head is trained
RETRAIN_ABOVE = 2000  # above this, every layer is trained from the pretrained weights
FROZEN_AT_LOW = 0.9  # fraction of layers frozen at EXTRACT_BELOW images per class
FROZEN_AT_HIGH = 0.3  # ... and at RETRAIN_ABOVE
IMBALANCE_RATIO = 3.0  # largest/smallest class above this gets a warning
TOO_FEW = 10  # fewer images (train + val) than this in a class gets a warning
# Probe validation accuracy from which fine-tuning has nothing left to win; the same level at
# which `--optimizer auto` fine-tunes with SGD, so it is defined once, there.
NEAR_PERFECT = SGD_AFTER_PROBE
WEAK_PROBE = 0.9  # below this the pretrained features do not fit the data: fine-tune when the count allows
MIN_EVIDENCE_VAL = 20  # fewer validation images than this are not evidence either way


@dataclass(frozen=True)
class ProbeEvidence:
    """The linear probe on this dataset's cached features: validation accuracy on n_val images."""

    val_accuracy: float
    n_val: int


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
        probe: the measured linear probe the decision used, if the workspace had the features.
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
    probe: ProbeEvidence | None = None

    @property
    def frozen_layers(self) -> int:
        """Layers that keep their pretrained weights (extract: all but the replaced classifier)."""
        return self.n_layers - 1 if self.freeze is None else self.freeze

    def to_dict(self) -> dict:
        d = asdict(self)
        d["counts"] = {c.name: {"train": c.train, "val": c.val} for c in self.counts}
        d["reasons"], d["warnings"] = list(self.reasons), list(self.warnings)
        d["frozen_layers"] = self.frozen_layers
        d["probe"] = None if self.probe is None else asdict(self.probe)
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
    probe: ProbeEvidence | None = None,
) -> Suggestion:
    """Pick a route from per-class (train, val) image counts and the backbone's layer count, and
    from the measured linear probe when there is one (see the module docstring).

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
    if probe is not None:
        route, freeze, reasons, command = _weigh_probe(probe, route, freeze, reasons, command, n, n_layers, backbone,
                                                       data_arg, opt)
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
    return Suggestion(route, freeze, backbone, n_layers, n, reasons, tuple(warnings), cc, command, probe)


def _weigh_probe(probe: ProbeEvidence, route, freeze, reasons, command, n, n_layers, backbone, data_arg, opt):
    """The count's decision, revised by the measured probe: (route, freeze, reasons, command)."""
    wrong = round((1 - probe.val_accuracy) * probe.n_val)
    seen = (f"the linear probe on the cached features of {backbone} scores {probe.val_accuracy:.3f} "
            f"on {probe.n_val} validation images ({wrong} wrong)")
    if probe.n_val < MIN_EVIDENCE_VAL:
        return route, freeze, reasons + (f"{seen}: too few validation images to weigh, so the count decides",), command
    if probe.val_accuracy >= NEAR_PERFECT and route != "extract":
        return "extract", None, (
            f"{seen}, at or above {NEAR_PERFECT}: the pretrained features already separate your classes",
            f"so extract is enough: fine-tuning could win at most {wrong} images and costs far more time "
            f"(the count alone, {n} training images in the smallest class, would have said {route})",
        ), f"tl extract {data_arg}{opt}"
    if probe.val_accuracy < WEAK_PROBE and route != "extract":
        return route, freeze, reasons + (
            f"{seen}, below {WEAK_PROBE}: the pretrained features do not fit your images well, so training "
            "the later layers is where the accuracy is; fine-tuning starts from this probe (epoch 0) and "
            "keeps it unless an epoch beats it",), command
    if probe.val_accuracy < WEAK_PROBE:
        return route, freeze, reasons + (
            f"{seen}, below {WEAK_PROBE}: the features would need to adapt, but with {n} training images in "
            f"the smallest class fine-tuning overfits; with {EXTRACT_BELOW}+ per class, `tl finetune` is the route",
        ), command
    return route, freeze, reasons + (f"{seen}",), command


def measured_probe(ds, backbone: str, workspace) -> ProbeEvidence | None:
    """The probe's validation accuracy from the workspace's `tl extract` features of `ds`, or None
    (no such features, no pretrained weights here, or no validation split). Fits a head: seconds."""
    from tl_cli.backbones import get_spec
    from tl_cli.backbones.registry import resolve_weights
    from tl_cli.backbones.weights import no_downloads
    from tl_cli.errors import TLError
    from tl_cli.finetune.probe import cached_features
    from tl_cli.head.softmax import train_head

    spec = get_spec(backbone)
    try:
        with no_downloads():  # features can only have been cached where the weights are
            identity = resolve_weights(spec).identity
        splits = cached_features(workspace, ds, spec, identity)
    except TLError:
        return None
    if splits is None or len(splits[1][1]) == 0:
        return None
    (xt, yt), (xv, yv) = splits
    head = train_head(xt, yt, xv, yv, len(ds.classes))
    return ProbeEvidence(float(head.val_accuracy), len(yv))


def suggest(data_dir: str | os.PathLike, backbone: str = DEFAULT_BACKBONE, val_fraction: float = 0.2,
            workspace=None) -> Suggestion:
    """Count a dataset's images per class with `tl extract`'s split and recommend a route, using
    the linear probe on `workspace`'s cached features of the dataset when it has them.

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
    probe = measured_probe(ds, backbone, workspace) if workspace is not None else None
    data_arg = shlex.quote(str(data_dir))
    s = recommend({c: (tr, va) for c, (tr, va) in counts.items()}, layer_count(backbone), backbone, data_arg, probe)
    if probe is None and workspace is not None:
        s = replace(s, reasons=s.reasons + (f"no measured probe: after `tl extract {data_arg}` (features cached in this "
                                            "workspace) tl suggest also weighs how well the pretrained features fit",))
    return s
