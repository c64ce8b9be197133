"""`RunMeta`: the schema of a run's meta.json, its one writer (`to_dict`) and its one reader (`from_dict`).

Every route builds a `RunMeta` and `runs.store.save_run` writes it; everyone who reads a run's
metadata (predict, evaluate, export, `tl info`, `tl runs`) gets one from `runs.store.load_run`.
The file keeps the flat shape tl has always written (route, kind, classes, backbone, weights,
preprocess, dataset, config, metrics, versions; the fine-tuned routes add freeze ... precision),
plus `schema` and `created`. Files without `schema` were written before it existed (version 0,
two shapes: `tl extract` kept val_fraction in config["extract"], fine-tuned runs at the top);
`_from_v0` reads them, tolerating the keys such files lack.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tl_cli.data.preprocess import Preprocess
from tl_cli.errors import RunError, TLError

SCHEMA = 1
KINDS = ("head", "full")  # head: a new head on the unchanged backbone; full: every tensor of the network
ROUTES = ("extract", "finetune", "retrain")
DEFAULT_VAL_FRACTION = 0.2


class MetaError(RunError):
    """A meta.json that does not describe a run (damaged, or written by a newer tl)."""


@dataclass(frozen=True)
class WeightsRef:
    """The backbone weights a run started from: digest, absolute file path (None: the default source)."""

    id: str | None = None
    file: str | None = None
    pretrained: bool = True


@dataclass(frozen=True)
class DatasetRef:
    """The data a run was trained on, as found at training time."""

    root: str | None = None
    layout: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    fingerprint: str | None = None  # tl extract: the exact files (cache.dataset_fingerprint)
    cache_key: str | None = None  # tl extract: the feature cache used
    # Which image was in which class and split (Dataset.split_digest): `tl evaluate --split` says
    # when the folder's split is no longer the run's (images added or moved, groups file changed).
    split_digest: str | None = None


@dataclass(frozen=True)
class RunMeta:
    """What a run is and how it was made; validated on construction (raises MetaError).

    Attributes:
        route: "extract", "finetune" or "retrain" (None only in files older than the schema).
        kind: "head" (model.safetensors holds head.weight/head.bias) or "full" (the whole network).
        classes: class names, in the order of the model's outputs.
        backbone, weights: the registry name and the weights it started from.
        preprocess: the input recipe prediction must reuse (None only in old hand-made files).
        val_fraction: the validation share of the split the run was scored on.
        config: the route's settings as saved ({"extract": ..., "head": ...} or {"finetune": ...}).
        metrics: the run's scores (val_accuracy, val_loss, ...; tl extract adds l2 and l2_search).
        freeze ... finished: fine-tuned runs only (None for tl extract).
        precision: fine-tuned runs: {"train": dtype, "validation": "float32"}.
        created: ISO 8601 local time of the save. versions: tl, python, torch, ... at save time.

    Example:
        >>> m = RunMeta.from_dict(json.loads(Path("meta.json").read_text()))
        >>> m.classes, m.val_fraction, m.to_dict()["schema"]
        (('cat', 'dog'), 0.2, 1)
    """

    route: str | None
    kind: str
    classes: tuple[str, ...]
    backbone: str
    weights: WeightsRef = WeightsRef()
    preprocess: Preprocess | None = None
    dataset: DatasetRef = DatasetRef()
    val_fraction: float = DEFAULT_VAL_FRACTION
    config: dict[str, dict] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    freeze: int | None = None
    layers: int | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    stop_reason: str | None = None
    finished: bool | None = None
    precision: dict[str, str] | None = None
    created: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        checks = [
            (isinstance(self.schema, int) and 0 <= self.schema <= SCHEMA,
             f"schema {self.schema!r} is newer than this tl reads ({SCHEMA}): upgrade tl"),
            (self.route is None or self.route in ROUTES, f"unknown route {self.route!r}"),
            (self.kind in KINDS, f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}"),
            (bool(self.classes) and all(isinstance(c, str) and c for c in self.classes),
             "classes must be a non-empty list of names"),
            (len(set(self.classes)) == len(self.classes), "classes has duplicate names"),
            (isinstance(self.backbone, str) and bool(self.backbone), "backbone must be a name"),
            (isinstance(self.weights, WeightsRef), "weights must be an object"),
            (self.preprocess is None or isinstance(self.preprocess, Preprocess), "preprocess must be an object"),
            (isinstance(self.dataset, DatasetRef), "dataset must be an object"),
            (_number(self.val_fraction) and 0 <= self.val_fraction < 1,
             f"val_fraction must be in [0, 1), got {self.val_fraction!r}"),
            (isinstance(self.config, dict) and all(isinstance(v, dict) for v in self.config.values()),
             "config must map names to objects"),
            (isinstance(self.metrics, dict), "metrics must be an object"),
            (self.val_accuracy is not None or self.metrics.get("val_accuracy") is None, "metrics.val_accuracy must be a number"),
            (all(_int_or_none(getattr(self, k)) for k in ("freeze", "layers", "epochs", "best_epoch")),
             "freeze, layers, epochs and best_epoch must be whole numbers"),
            (self.stop_reason is None or isinstance(self.stop_reason, str), "stop_reason must be text"),
        ]
        for ok, message in checks:
            if not ok:
                raise MetaError(message)
        # Written files name the weights by absolute path: a relative one breaks from another folder.
        if self.schema >= 1 and self.weights.file is not None and not Path(self.weights.file).is_absolute():
            raise MetaError(f"weights.file must be an absolute path, got {self.weights.file!r}")

    @property
    def val_accuracy(self) -> float | None:
        v = self.metrics.get("val_accuracy")
        return float(v) if _number(v) else None

    @property
    def grouping(self):
        """The split grouping (data/groups.py) the run was trained with, or None: `tl evaluate
        --split val` must select the same images as training did."""
        from tl_cli.data.groups import make_grouping

        for section in self.config.values():  # {"extract": {...}} or {"finetune": {...}}
            if section.get("group_pattern") or section.get("groups"):
                return make_grouping(section.get("group_pattern"), section.get("groups"))
        return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as meta.json (keys of fine-tuned runs only where set)."""
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["preprocess"] = self.preprocess.to_dict() if self.preprocess is not None else None
        for k in ("freeze", "layers", "epochs", "best_epoch", "stop_reason", "finished", "precision", "created"):
            if d[k] is None:
                del d[k]
        return json.loads(json.dumps(d))  # exactly what reads back from the file (lists, not tuples)

    @classmethod
    def from_dict(cls, d: Any) -> RunMeta:
        """Read a meta.json object of any schema this tl knows. Raises MetaError saying what is wrong."""
        if not isinstance(d, dict):
            raise MetaError(f"expected a JSON object, got {type(d).__name__}")
        if "schema" not in d:
            return _from_v0(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown and isinstance(d.get("schema"), int) and d["schema"] <= SCHEMA:
            raise MetaError(f"unknown keys {', '.join(unknown)}")
        try:
            return cls(**{k: _decode(k, v) for k, v in d.items() if k in known})
        except (TypeError, ValueError) as exc:
            raise MetaError(f"malformed ({exc})") from exc
        except TLError as exc:  # Preprocess refusing its values
            raise MetaError(exc.message) from exc

    def stamped(self, created: str, versions: dict[str, str]) -> RunMeta:
        """This meta as saved now (runs.store.save_run)."""
        return replace(self, created=created, versions=dict(versions), schema=SCHEMA)


def read_meta(path: Path) -> RunMeta:
    """The RunMeta in the file `path`. Raises MetaError (message names the file and what is wrong)."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise MetaError(f"{path}: unreadable ({exc.strerror})") from exc
    except ValueError as exc:  # also UnicodeDecodeError
        raise MetaError(f"{path}: not valid JSON ({exc})") from exc
    try:
        return RunMeta.from_dict(raw)
    except MetaError as exc:
        raise MetaError(f"{path}: {exc.message}") from exc


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _decode(key: str, v: Any) -> Any:
    if key == "weights":
        return WeightsRef(**v) if isinstance(v, dict) else v
    if key == "dataset":
        # Keys of a later tl (this section only grows) are left out, not fatal.
        return DatasetRef(**{f.name: v[f.name] for f in fields(DatasetRef) if f.name in v}) if isinstance(v, dict) else v
    if key == "preprocess":
        return Preprocess.from_dict(v) if isinstance(v, dict) else v
    return v


def _lenient_int(v: Any) -> int | None:
    try:
        return int(v) if v is not None and not isinstance(v, bool) else None
    except (TypeError, ValueError):
        return None


def _v0_val_fraction(d: dict) -> float:
    """Where the two pre-schema shapes kept the validation share (fine-tuned: top; tl extract: config)."""
    if _number(d.get("val_fraction")):
        return float(d["val_fraction"])
    ds = d.get("dataset")
    if isinstance(ds, dict) and _number(ds.get("val_fraction")):
        return float(ds["val_fraction"])
    config = d.get("config")
    for section in config.values() if isinstance(config, dict) else ():
        if isinstance(section, dict) and _number(section.get("val_fraction")):
            return float(section["val_fraction"])
    return DEFAULT_VAL_FRACTION


def _from_v0(d: dict) -> RunMeta:
    """A meta.json from before the schema: today's two shapes, and hand-made files lacking keys.

    Only classes and backbone are required; optional values of the wrong type read as unknown
    (None), as `tl info` always showed them ("-").
    """
    def obj(key: str) -> dict:
        return d[key] if isinstance(d.get(key), dict) else {}

    w, ds = obj("weights"), obj("dataset")
    classes = d.get("classes")
    if not isinstance(classes, list):
        raise MetaError("no list of classes")
    pre = d.get("preprocess")
    try:
        return RunMeta(
            schema=0,
            route=d["route"] if d.get("route") in ROUTES else None,
            kind=d["kind"] if d.get("kind") in KINDS else "full",  # what predict assumed without "kind"
            classes=tuple(classes),
            backbone=d.get("backbone"),
            weights=WeightsRef(w.get("id"), w.get("file"), bool(w.get("pretrained", True))),
            preprocess=Preprocess.from_dict(pre) if isinstance(pre, dict) else None,
            dataset=DatasetRef(**{f.name: ds[f.name] for f in fields(DatasetRef) if f.name in ds}),
            val_fraction=_v0_val_fraction(d),
            config={k: v for k, v in obj("config").items() if isinstance(v, dict)},
            metrics=obj("metrics"),
            freeze=_lenient_int(d.get("freeze")),
            layers=_lenient_int(d.get("layers")),
            epochs=_lenient_int(d.get("epochs")),
            best_epoch=_lenient_int(d.get("best_epoch")),
            stop_reason=d["stop_reason"] if isinstance(d.get("stop_reason"), str) else None,
            finished=d["finished"] if isinstance(d.get("finished"), bool) else None,
            precision=obj("precision") or None,
            created=d["created"] if isinstance(d.get("created"), str) else None,
            versions=obj("versions"),
        )
    except TLError as exc:
        raise MetaError(exc.message) from exc
    except (TypeError, ValueError) as exc:
        raise MetaError(f"malformed ({exc})") from exc
