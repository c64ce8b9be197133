"""Running an exported .onnx classifier (`tl export`) with the preprocessing from the JSON beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tl_cli.errors import ExportError, TLError
from tl_cli.head.softmax import softmax
from tl_cli.inference.base import BasePredictor
from tl_cli.runs.meta import RunMeta
from tl_cli.runtime.onnx import ort_session

INPUT, OUTPUT = "input", "logits"  # the tensor names of an exported classifier


def sidecar_path(model_path: str | Path) -> Path:
    """Where the JSON describing an exported model lives: `model.onnx` -> `model.onnx.json`."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


class OnnxPredictor(BasePredictor):
    """An exported .onnx classifier on onnxruntime, with the preprocessing from its JSON.

    Example:
        >>> OnnxPredictor(Path("model.onnx")).predict(["cat.jpg"])[0].labels
        ['cat']
    """

    def __init__(self, path: Path):
        path = Path(path)
        meta_path = sidecar_path(path)
        if not path.is_file():
            raise ExportError(f"no such ONNX file: {path}")
        if not meta_path.is_file():
            raise ExportError(f"{path} has no {meta_path.name} beside it (classes and preprocessing)",
                              hint="export with `tl export --format onnx`, which writes both")
        try:
            self.meta = json.loads(meta_path.read_text())
            self.trained = trained_meta(self.meta)
            self.classes = list(self.trained.classes)
            self.preprocess = self.trained.preprocess
        except (ValueError, KeyError, TypeError, TLError) as exc:
            raise ExportError(f"{meta_path}: unreadable export description ({exc})") from exc
        self.path = path
        self.source = str(path)
        self.notes = []
        try:
            session = ort_session(path)
        except TLError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime's InvalidProtobuf, Fail, ...: not a model it can run
            raise ExportError(f"cannot load model {path}: not a valid ONNX file ({type(exc).__name__})",
                              hint="export it again with `tl export`") from exc
        self.model = OnnxModel(session)


def trained_meta(description: dict) -> RunMeta:
    """The RunMeta in an export's JSON: its "trained" section (the whole RunMeta since schema 1;
    before that dataset, config, metrics and val_fraction only, completed from the export's keys)."""
    base = {k: description[k] for k in ("classes", "backbone", "preprocess")}
    return RunMeta.from_dict({**base, **description["trained"]})


class OnnxModel:
    """An exported classifier on onnxruntime: numpy inputs -> numpy probabilities."""

    def __init__(self, session):
        self.session = session

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0])
