"""Reading torch files without running code, and without torch's noise about them."""

from __future__ import annotations

import os
import warnings
from typing import Any


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
