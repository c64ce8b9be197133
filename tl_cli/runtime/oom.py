"""Out-of-memory handling: recognise OOM errors, and retry a batch in halves instead of failing."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from tl_cli.errors import OutOfMemory

# How allocation failures read when they do not come as torch.OutOfMemoryError: cuBLAS and
# cuDNN report their own status codes (raised as RuntimeError), the CUDA runtime its error name,
# onnxruntime's arena "Failed to allocate memory".
_OOM_MESSAGES = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed",
                 "cudaerrormemoryallocation", "failed to allocate memory")


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error of CUDA, cuBLAS, cuDNN, or the CPU/MPS allocator.

    torch raises `torch.OutOfMemoryError` when its caching allocator fails; cuBLAS and cuDNN
    allocate their own workspaces and report failure as a RuntimeError naming their status
    (CUBLAS_STATUS_ALLOC_FAILED, CUDNN_STATUS_ALLOC_FAILED). Tests simulate OOM by raising these.
    """
    import sys

    torch = sys.modules.get("torch")  # not imported (onnxruntime path): it cannot be torch's OOM
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    if not isinstance(exc, (RuntimeError, MemoryError)):
        return False
    text = str(exc).lower()
    return any(m in text for m in _OOM_MESSAGES)


def free_memory() -> None:
    """Give cached accelerator memory back after an OOM (call outside the `except` block, so the
    failed attempt's tensors, held by the traceback until then, can be freed)."""
    gc.collect()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _concat(parts: list) -> Any:
    if len(parts) == 1:
        return parts[0]
    if hasattr(parts[0], "dim"):  # torch tensors
        import torch

        return torch.cat(parts)
    import numpy as np

    return np.concatenate(parts)


_OOM = object()  # what `_unless_oom` returns instead of a result


def _unless_oom(fn: Callable, arg):
    """fn(arg), or `_OOM` if it ran out of memory (any other error propagates)."""
    try:
        return fn(arg)
    except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
        if not is_oom(exc):
            raise
    return _OOM  # outside the except block, so the failed attempt's tensors can be freed


def _halve(size: int, message: str, on_halve: Callable[[int], None] | None) -> int:
    """Free memory and return half of `size`; OutOfMemory if `size` is already 1."""
    free_memory()
    if size <= 1:
        raise OutOfMemory(message, hint="use --device cpu or a smaller backbone, or free the GPU for other processes")
    if on_halve:
        on_halve(size // 2)
    return size // 2


class HalvingForward:
    """Wrap a batched function so that out-of-memory halves the batch and carries on.

    Rows already computed are kept: a batch of 32 that runs out of memory at 32 and 16 is done as
    16 + 16 (8 + 8 + ...), continuing from the first row not yet done. The smaller size is kept
    for every later call, so the OOM is paid once. `limit` is None until the first OOM.

    Args:
        fn: callable on a batch (tensor/array with rows along dim 0) returning rows along dim 0.
        on_halve: optional callback(new_size) to tell the user.

    Raises:
        OutOfMemory: even a single row does not fit.

    Example:
        >>> fwd = HalvingForward(engine)
        >>> feats = fwd(batch)      # same result as engine(batch), just maybe in pieces
    """

    def __init__(self, fn: Callable, on_halve: Callable[[int], None] | None = None):
        self.fn = fn
        self.on_halve = on_halve
        self.limit: int | None = None

    def __call__(self, x):
        n = x.shape[0]
        parts, start = [], 0
        while start < n:
            size = n - start if self.limit is None else min(self.limit, n - start)
            out = _unless_oom(self.fn, x[start : start + size])
            if out is not _OOM:
                parts.append(out)
                start += size
                continue
            self.limit = _halve(size, "out of memory even with a batch of one image", self.on_halve)
        return _concat(parts)


class HalvingStep:
    """Retry the forward/backward of a training step in smaller micro-batches after out-of-memory.

    `accumulate(micro)` must clear the gradients, then run the forward and backward passes of the
    whole batch in pieces of `micro` images (None = the whole batch), accumulating their gradients
    weighted by each piece's share, so the gradient does not depend on `micro` (up to batch-norm
    statistics of layers still training). On OOM it is run again from scratch with half the
    micro-batch; the smaller size is kept for later steps. The optimizer update is *not* part of
    it: the caller applies it once, after `accumulate` succeeded (`apply_update`), because an
    update interrupted by OOM cannot be redone (AdamW would re-apply its moments, or find its
    state half created).

    Raises:
        OutOfMemory: a micro-batch of one image does not fit.
    """

    def __init__(self, on_halve: Callable[[int], None] | None = None):
        self.on_halve = on_halve
        self.micro: int | None = None

    def __call__(self, accumulate: Callable[[int | None], Any], batch_size: int):
        while True:
            out = _unless_oom(accumulate, self.micro)
            if out is not _OOM:
                return out
            size = min(self.micro or batch_size, batch_size)
            self.micro = _halve(size, "out of memory while training, even with one image at a time", self.on_halve)


def apply_update(update: Callable[[], Any]):
    """Run the optimizer update once; out of memory there is an OutOfMemory error, never a retry.

    An optimizer step that ran out of memory has already changed part of its state (AdamW creates
    `exp_avg` before `exp_avg_sq`, and updates parameters one tensor group at a time), so running
    it again would fail (KeyError) or apply some moments twice. Its state is allocated at the
    first step and reused, so this can only happen at the first step of a run.
    """
    out = _unless_oom(lambda _: update(), None)
    if out is _OOM:
        free_memory()
        raise OutOfMemory("out of memory in the optimizer update (its state did not fit beside the model)",
                          hint="use a smaller --batch-size or backbone, --optimizer sgd (less state), or --device cpu")
    return out
