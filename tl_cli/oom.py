"""Recognising out-of-memory errors, so callers can halve the batch and go on."""

from __future__ import annotations


def is_oom(exc: BaseException) -> bool:
    """True for a CUDA (or MPS/CPU allocator) out-of-memory error.

    torch raises `torch.OutOfMemoryError` on CUDA; older builds and other allocators raise a
    RuntimeError whose message says "out of memory". Tests simulate OOM by raising either.
    """
    try:
        import torch

        if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
            return True
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()
