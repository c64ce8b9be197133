"""Threaded image decoding: files -> batches of uint8 crops, in order, with bounded memory.

Pillow releases the GIL while it decodes, resizes and crops, so threads decode in parallel
with each other and with the network (onnxruntime and torch release it too). Threads instead
of processes: no start-up cost, no pickling of pixels, and features are identical to the
sequential path. At most `prefetch` batches are decoded ahead, so memory does not grow with the
number of images. Large JPEGs are downscaled by the decoder itself (`Image.draft`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tl_cli.data import preprocess
from tl_cli.data.preprocess import Preprocess, open_rgb, resize_crop
from tl_cli.errors import ImageError


@dataclass
class Batch:
    """Crops of the readable images of one batch and the failures among them.

    pixels: (n, S, S, 3) uint8 crops, or (n, 3, S, S) float32 network input with `normalize`;
        None when no image of the batch could be read.
    index: positions (in the input list) of the rows of `pixels`.
    failed: (position, reason) for unreadable images.
    n_cpu_decoded: images a GPU decoder left to the CPU (gpu_decode.py); 0 on the CPU path.
    """

    pixels: np.ndarray | None
    index: list[int]
    failed: list[tuple[int, str]]
    n_cpu_decoded: int = 0


def load_crop(path: str | Path, pre: Preprocess) -> np.ndarray:
    """One file -> (S, S, 3) uint8 crop, exactly the pixels `preprocess.load_tensor` normalises."""
    return np.asarray(resize_crop(open_rgb(path, draft_size=pre.resize_size), pre), dtype=np.uint8)


def _try_crop(path: Path, pre: Preprocess, normalize: bool = False) -> np.ndarray | str:
    try:
        crop = load_crop(path, pre)
    except ImageError as exc:
        return str(exc).split(": ", 1)[-1]
    return preprocess.normalize(crop, pre) if normalize else crop


def _assemble(start: int, results: list[np.ndarray | str]) -> Batch:
    good = [(start + j, r) for j, r in enumerate(results) if not isinstance(r, str)]
    failed = [(start + j, r) for j, r in enumerate(results) if isinstance(r, str)]
    pixels = np.stack([r for _, r in good]) if good else None
    return Batch(pixels, [i for i, _ in good], failed)


def iter_batches(root: Path, relpaths: list[str], pre: Preprocess, batch_size: int, threads: int,
                 prefetch: int = 2, normalize: bool = False) -> Iterator[Batch]:
    """Yield `Batch`es of `batch_size` consecutive files of `relpaths` (under `root`), in order.

    Args:
        threads: decoding threads; 0 decodes in the calling thread (no overlap).
        prefetch: batches decoded ahead of the consumer (memory bound: prefetch+1 batches of crops).
        normalize: yield float32 NCHW network input (normalised in the decode threads, off the
            network's critical path) instead of uint8 crops.
    """
    root = Path(root)
    starts = range(0, len(relpaths), batch_size)
    if threads <= 0:
        for s in starts:
            yield _assemble(s, [_try_crop(root / r, pre, normalize) for r in relpaths[s:s + batch_size]])
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tl-decode") as pool:
        pending: deque = deque()
        it = iter(starts)

        def submit_next() -> None:
            s = next(it, None)
            if s is not None:
                pending.append((s, [pool.submit(_try_crop, root / r, pre, normalize)
                                    for r in relpaths[s:s + batch_size]]))

        try:
            for _ in range(prefetch + 1):
                submit_next()
            while pending:
                s, futures = pending.popleft()
                submit_next()
                yield _assemble(s, [f.result() for f in futures])
        finally:  # consumer stopped early (error, Ctrl-C): drop queued work, don't decode it
            for _, futures in pending:
                for f in futures:
                    f.cancel()


def default_threads() -> int:
    """Decoding threads: one per core this process may use (its share of the node under torchrun).

    On a CPU, decoding is much cheaper than the forward pass (benchmarks/README.md), so these threads mostly fill the
    gaps the network leaves; on a GPU the network is fast and decoding is the limit, so every
    core is worth having (a 16-core GPU machine gets 16, not a fixed cap).
    """
    from tl_cli.runtime.distributed import cpu_count

    return cpu_count()
