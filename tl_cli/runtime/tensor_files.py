"""Reading torch files without running code, and without torch's noise about them."""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, BinaryIO

# torch names the class or function it refused: "Unsupported global: GLOBAL posix.system ..." or
# "Trying to load unsupported GLOBAL posix.system whose module ...".
_TORCH_NAMES_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")
_DOTTED_NAME = re.compile(r"[A-Za-z_][\w.]*")
_LINE_LIMIT = 1 << 16  # a GLOBAL's module or name is one short text line; longer means not a pickle


def load_tensors_only(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True) onto the CPU: tensors and plain containers, never code.

    torch warns when a file was pickled with a protocol other than its default (any file saved by
    plain `pickle`, including the hostile ones it then refuses). The note tells a user nothing they
    can act on and would print above tl's one-line error, so it is silenced here; whether the file
    loads, or is refused, is what the caller reports.
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def code_refused(path: str | os.PathLike, exc: BaseException) -> str | None:
    """Why `load_tensors_only(path)` raised `exc`: the class or function the file would have made
    Python import and call ('posix.system'), or None when the file is damaged or not a pickle.

    Callers tell "refused, it holds code" from "damaged" with this, so both kinds of file get the
    right message. torch's own error does not say: a plain `pickle.dump` of a hostile object stops
    its restricted unpickler at the protocol-4 FRAME opcode with "Unsupported operand 149", the same
    words random bytes get. So the pickle is parsed here, opcode by opcode, never executed.
    """
    import pickle  # here, not at the top: only a refused or damaged file needs these, and the
    import zipfile  # module is imported by every tl command at start-up

    if not isinstance(exc, pickle.UnpicklingError):  # truncated zip, EOF, I/O: damaged
        return None
    named = _TORCH_NAMES_GLOBAL.search(str(exc))
    if named:
        return named.group(1)
    try:
        if zipfile.is_zipfile(path):  # torch's format: the object graph is the archive's data.pkl
            with zipfile.ZipFile(path) as archive:
                inner = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if inner is None:
                    return None
                with archive.open(inner) as f:
                    return first_import(f, archive.getinfo(inner).file_size)
        with open(path, "rb") as f:
            return first_import(f, os.fstat(f.fileno()).st_size)
    except (OSError, zipfile.BadZipFile):
        return None


def first_import(f: BinaryIO, size: int) -> str | None:
    """The first 'module.name' a pickle stream imports (GLOBAL, INST or STACK_GLOBAL), read
    without unpickling; None if it imports nothing before STOP or is not a well-formed pickle."""
    import pickletools

    strings: list[str] = []  # the last strings pushed: STACK_GLOBAL takes its module and name from them
    try:
        for op, arg, _ in pickletools.genops(_Bounded(f, size)):
            if op.name in ("GLOBAL", "INST", "STACK_GLOBAL"):
                if op.name != "STACK_GLOBAL":
                    name = str(arg).replace(" ", ".", 1)  # the argument is "module name"
                elif len(strings) < 2:  # module and name came from the memo: unknown, still code
                    return "a global"
                else:
                    name = ".".join(strings[-2:])
                return name if _DOTTED_NAME.fullmatch(name) else None
            if isinstance(arg, str):
                strings = [*strings[-1:], arg]
    except (ValueError, UnicodeDecodeError, EOFError):  # not a pickle: random bytes, a truncated file
        return None
    return None


class _Bounded:
    """A file view for pickletools that cannot be made to allocate more than the file holds: a
    damaged length field (BINBYTES8 says 2**62) reads what is there and fails, instead of asking
    for memory."""

    def __init__(self, f: BinaryIO, size: int):
        self._f, self._size, self._pos = f, size, 0

    def read(self, n: int = -1) -> bytes:
        n = self._size - self._pos if n < 0 else min(n, self._size - self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readline(self) -> bytes:
        line = self._f.readline(_LINE_LIMIT)
        self._pos += len(line)
        return line

    def tell(self) -> int:
        return self._pos
