"""Files from outside are loaded without running code; names and stored paths can't point elsewhere."""

from __future__ import annotations

import builtins
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.helpers.paths import PACKAGE
from tl_cli.backbones import get_spec, load_state_dict_file
from tl_cli.cli import app
from tl_cli.data.scan import is_safe_relpath, resolve_inside
from tl_cli.errors import DataError, RunError, UnknownBackbone, UnsafeFile
from tl_cli.features.extract import ExtractConfig, extract_features
from tl_cli.head.small_data import train_small_data
from tl_cli.inference.predict import Predictor

LENET = ExtractConfig(backbone="lenet5", pretrained=False, workers=0, batch_size=8)
runner = CliRunner()
PKG = PACKAGE


class Evil:
    """Unpickling this creates the file `marker` (stands in for any code an attacker would run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def plant(path: Path, marker: Path, style: str) -> Path:
    """A weights-looking file whose loading with plain pickle would create `marker`."""
    payload = {"conv.weight": torch.zeros(2), "x": Evil(marker)}
    if style == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


@pytest.mark.parametrize("style", ["torch", "pickle"])
def test_planted_pickle_really_runs_code_when_unpickled(tmp_path, style):
    # The control: the planted file IS dangerous, so the refusals below mean something.
    marker = tmp_path / "pwned"
    f = plant(tmp_path / "evil.pth", marker, style)
    if style == "torch":
        torch.load(f, weights_only=False)
    else:
        pickle.loads(f.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("style", ["torch", "pickle"])
def test_malicious_weights_file_is_refused(tmp_path, image_folder, style):
    marker = tmp_path / "pwned"
    f = plant(tmp_path / "evil.pth", marker, style)
    with pytest.raises(UnsafeFile, match="refusing to load"):
        load_state_dict_file(f)
    r = runner.invoke(app, ["extract", str(image_folder), "--backbone", "resnet18", "--weights", str(f),
                            "--workers", "0"])
    assert r.exit_code == 2 and r.output.startswith("error:") and "refusing to load" in r.output
    assert not marker.exists()


def test_malicious_run_weights_are_refused(tmp_path, image_folder):
    res = train_small_data(image_folder, LENET)
    marker = tmp_path / "pwned"
    plant(res.run_dir / "model.safetensors", marker, "torch")
    with pytest.raises(RunError, match="unreadable weights"):
        Predictor.from_workspace(str(res.run_dir))
    from tl_cli.runs.store import load_arrays, load_tensors

    for load in (load_tensors, load_arrays):  # both readers say the same thing
        with pytest.raises(RunError, match="unreadable weights"):
            load(res.run_dir / "model.safetensors")
    r = runner.invoke(app, ["predict", str(image_folder / "red" / "red_000.jpg")])
    assert r.exit_code == 2 and "unreadable weights" in r.output
    assert not marker.exists()


def test_malicious_cache_file_is_discarded_and_rebuilt(tmp_path, image_folder):
    first = extract_features(image_folder, LENET)
    marker = tmp_path / "pwned"
    plant(first.cache_dir / "features.h5", marker, "pickle")
    again = extract_features(image_folder, LENET)
    assert not marker.exists()
    assert again.n_extracted == 36 and any("features.h5 was unreadable" in n for n in again.notes)
    np.testing.assert_array_equal(again.features, first.features)


def test_no_unsafe_loading_anywhere_in_the_package():
    """Every torch.load passes weights_only=True; nothing unpickles or falls back to it."""
    for py in PKG.rglob("*.py"):
        src = py.read_text()
        assert not re.search(r"weights_only\s*=\s*False", src), py
        assert not re.search(r"\bpickle\.loads?\(|allow_pickle\s*=\s*True|\bdill\b|\bjoblib\.load", src), py
        for call in re.finditer(r"torch\.load\(", src):
            args = _call_args(src, call.end())
            assert re.search(r"weights_only\s*=\s*True", args), (py, args)


def _call_args(src: str, start: int) -> str:
    """The text of a call's arguments, from just after its "(" to the matching ")"."""
    depth = 1
    for i in range(start, len(src)):
        depth += {"(": 1, ")": -1}.get(src[i], 0)
        if depth == 0:
            return src[start:i]
    return src[start:]


@pytest.mark.parametrize("name", ["./evil.py", "evil.py", "/tmp/x", "a/b", "..\\evil", "model.pth", ".hidden"])
def test_backbone_name_that_looks_like_a_path_is_an_error(tmp_path, image_folder, name):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(UnknownBackbone, match="looks like a file path"):
        get_spec(name)
    r = runner.invoke(app, ["extract", str(image_folder), "--backbone", name])
    assert r.exit_code == 2 and "looks like a file path" in r.output
    assert not marker.exists()


@pytest.mark.parametrize("rel, ok", [
    ("red/a.jpg", True), ("猫 cat/photo 1.jpg", True), ("a..b/c", True),
    ("../../etc/passwd", False), ("/etc/passwd", False), ("red/../../x", False), ("", False),
    ("red//a.jpg", False), ("./a.jpg", False), ("a\0b", False),
])
def test_safe_relpaths(rel, ok, tmp_path):
    assert is_safe_relpath(rel) is ok
    if ok:
        assert resolve_inside(tmp_path, rel) == tmp_path / rel
    else:
        with pytest.raises(DataError):
            resolve_inside(tmp_path, rel)


@pytest.mark.parametrize("evil", ["../../etc/passwd", "/etc/passwd"])
def test_cache_with_paths_outside_the_dataset_is_rejected_and_rebuilt(image_folder, evil):
    first = extract_features(image_folder, LENET)
    import h5py

    with h5py.File(first.cache_dir / "features.h5", "r+") as f:
        rel = f["relpath"][:]
        rel[0] = evil.encode()
        del f["relpath"]
        f.create_dataset("relpath", data=rel, dtype=h5py.string_dtype())
    again = extract_features(image_folder, LENET)
    assert any("not inside the dataset folder" in n for n in again.notes), again.notes
    assert again.n_extracted == 36 and evil not in again.relpaths
    np.testing.assert_array_equal(again.features, first.features)


def test_refusal_comes_without_torch_warnings(tmp_path):
    # torch notes "Detected pickle protocol ..." for files pickled by plain `pickle`; printed above
    # tl's one-line error it is noise (the CLI shows Python warnings), so the loader keeps it quiet.
    import warnings

    evil = plant(tmp_path / "evil.pth", tmp_path / "pwned", "pickle")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(UnsafeFile, match="refusing to load"):
            load_state_dict_file(evil)
    assert not [str(w.message) for w in seen if "pickle protocol" in str(w.message)]
    assert not (tmp_path / "pwned").exists()
