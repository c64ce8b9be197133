"""A file torch will not load is either refused (it holds code) or damaged, and the weights loader
and the checkpoint reader tell the two apart the same way."""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch

from tl_cli.backbones import load_state_dict_file
from tl_cli.errors import RunError, UnsafeFile, WeightsNotFound
from tl_cli.finetune.checkpoint import CHECKPOINT, load_checkpoint
from tl_cli.runtime.tensor_files import code_refused, first_import, load_tensors_only


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def zip_with_protocol4_pickle() -> bytes:
    """torch's zip layout, but its data.pkl written by plain pickle at protocol 4 (FRAME opcodes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Hostile()}, protocol=4))
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


HOSTILE = {  # each would run os.system if unpickled; torch refuses them with differing messages
    "torch.save": lambda: torch_bytes({"w": Hostile()}),
    "pickle protocol 0": lambda: pickle.dumps({"w": Hostile()}, protocol=0),
    "pickle protocol 2": lambda: pickle.dumps({"w": Hostile()}, protocol=2),
    "pickle protocol 4": lambda: pickle.dumps({"w": Hostile()}, protocol=4),
    "pickle protocol 5": lambda: pickle.dumps({"w": Hostile()}, protocol=5),
    "zip, protocol-4 data.pkl": zip_with_protocol4_pickle,
}
DAMAGED = {
    "random bytes": lambda: random.Random(0).randbytes(4096),
    "truncated torch file": lambda: torch_bytes({"w": torch.ones(100)})[:300],
    "text": lambda: b"not a weights file\n" * 20,
    "empty": lambda: b"",
    "length field of 2**62": lambda: b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"xx",
}
SYSTEM = f"{os.system.__module__}.system"  # posix.system or nt.system


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_files_are_refused_by_both_readers_naming_the_code(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    data = HOSTILE[kind]()
    (tmp_path / "w.pth").write_bytes(data)
    (tmp_path / CHECKPOINT).write_bytes(data)
    with pytest.raises(UnsafeFile, match=rf"refusing to load.*\({SYSTEM}\)"):
        load_state_dict_file(tmp_path / "w.pth")
    with pytest.raises(UnsafeFile, match=rf"refusing to load.*\({SYSTEM}\)"):
        load_checkpoint(tmp_path)
    assert not (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize("kind", DAMAGED)
def test_damaged_files_are_damaged_not_refused(tmp_path, kind):
    data = DAMAGED[kind]()
    (tmp_path / "w.pth").write_bytes(data)
    (tmp_path / CHECKPOINT).write_bytes(data)
    with pytest.raises(WeightsNotFound, match="not a readable weights file"):
        load_state_dict_file(tmp_path / "w.pth")
    with pytest.raises(RunError, match="damaged checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("seed", range(30))
def test_random_bytes_never_read_as_code(tmp_path, seed):
    f = tmp_path / "r.pth"
    f.write_bytes(random.Random(seed).randbytes(random.Random(seed).randint(1, 20000)))
    with pytest.raises(Exception) as caught:
        load_tensors_only(f)
    assert code_refused(f, caught.value) is None


def test_plain_pickle_of_tensors_is_refused_as_code_it_needs(tmp_path):
    # A state dict written by plain pickle rebuilds its tensors by calling torch functions, which
    # torch's restricted loader cannot do for this format: refused, and the name says why.
    f = tmp_path / "sd.pth"
    f.write_bytes(pickle.dumps({"w": torch.ones(2)}))
    with pytest.raises(UnsafeFile, match=r"\(torch\."):
        load_state_dict_file(f)


def test_first_import_reads_each_global_opcode_without_running_it(tmp_path):
    for protocol in range(6):  # GLOBAL at 0-3, STACK_GLOBAL from 4
        assert first_import(io.BytesIO(p := pickle.dumps(Hostile(), protocol=protocol)), len(p)) == SYSTEM
    plain = pickle.dumps({"a": [1, 2.0, "x"]}, protocol=4)
    assert first_import(io.BytesIO(plain), len(plain)) is None
    assert not Path("pwned.txt").exists()
