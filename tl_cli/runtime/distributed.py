"""torch.distributed, the way torchrun sets it up: nothing here launches processes.

`torchrun --nproc-per-node N -m tl_cli finetune ...` starts N copies of tl with RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set; multi-node works the same with
torchrun's rendezvous arguments. tl only reads those variables: without them it is a single
process and every function here is a no-op (or the identity).

Conventions every distributed code path in tl follows:
    - rank 0 is the only process that writes (caches, runs, checkpoints, logs, progress bars);
    - every rank reads the dataset itself, so the data must be at the same path on every node
      (a shared filesystem or identical copies);
    - rank r uses cuda:LOCAL_RANK on a GPU machine (choose GPUs with CUDA_VISIBLE_DEVICES),
      NCCL between GPUs, gloo between CPU processes;
    - every decision that ends a loop (deadline, unreadable batch) is agreed on by all ranks,
      or the ranks would wait for each other forever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from tl_cli.errors import ConfigError

TIMEOUT_ENV = "TL_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 30.0


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank and world size from torchrun's environment variables (1 process without them)."""
    try:
        ws = int(os.environ.get("WORLD_SIZE", "1"))
        return DistInfo(
            int(os.environ.get("RANK", "0")), ws, int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        )
    except ValueError as exc:
        raise ConfigError(f"malformed torchrun environment variable: {exc}", hint="launch tl with torchrun") from None


def is_main() -> bool:
    """True in a single process and on rank 0: the process that writes files and prints."""
    return env_info().is_main


def timeout() -> timedelta:
    """How long a collective may wait for the slowest rank (TL_DIST_TIMEOUT_MIN, minutes)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        minutes = float(raw) if raw.strip() else DEFAULT_TIMEOUT_MIN
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of minutes, got {raw!r}")
    return timedelta(minutes=minutes)


def rank_device(name: str = "auto"):
    """The torch.device this process computes on, made its current CUDA device.

    Single process: `device.resolve_device(name)`. Under torchrun: cuda:LOCAL_RANK for "auto"
    (when CUDA is present) and "cuda", the CPU for "cpu"; an explicit "cuda:N" is refused because
    every rank would pick the same GPU. A launcher that gives each rank a GPU of its own (SLURM
    `--gpus-per-task=1`, per-rank CUDA_VISIBLE_DEVICES) leaves one GPU visible per process: the
    rank then uses cuda:0, whatever its LOCAL_RANK.

    Raises:
        ConfigError: cuda:N under torchrun, or more local ranks than visible GPUs (with several visible).
    """
    import torch

    from tl_cli.runtime.device import bind, resolve_device

    info = env_info()
    if not info.enabled:
        return resolve_device(name)
    if name not in (None, "", "auto", "cuda", "cpu"):
        raise ConfigError(
            f"--device {name} under torchrun: every process would use the same GPU",
            hint="use --device cuda (each process takes cuda:LOCAL_RANK); pick GPUs with CUDA_VISIBLE_DEVICES",
        )
    if name == "cpu" or not torch.cuda.is_available():
        return resolve_device(name)  # the CPU, or the one-line "no CUDA" error for "cuda"
    n = torch.cuda.device_count()
    index = 0 if n == 1 else info.local_rank
    if index >= n:
        raise ConfigError(
            f"LOCAL_RANK {info.local_rank} but only {n} GPU(s) visible on this node",
            hint="use --nproc-per-node at most the number of GPUs",
        )
    dev = torch.device("cuda", index)
    bind(dev)
    return dev


def init(device_type: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun. Idempotent.

    On a machine with CUDA (and `device_type` not "cpu") the group gets two backends, NCCL for
    CUDA tensors (gradients) and gloo for CPU ones (small objects, metrics), and this process is
    bound to its GPU (`rank_device`); elsewhere gloo alone. NCCL connects lazily, on the first
    CUDA collective, so a CPU run in such a group never touches it. The timeout of every
    collective comes from TL_DIST_TIMEOUT_MIN (default 30 minutes).
    """
    info = env_info()
    if not info.enabled:
        return info
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "gloo"
        if device_type != "cpu" and torch.cuda.is_available():
            backend = "cpu:gloo,cuda:nccl"
            rank_device("cuda")
        dist.init_process_group(backend=backend, timeout=timeout())
        global _joined
        _joined = True
    return info


_joined = False  # this process joined a process group (see exit_process)


def exit_process(code: int) -> None:
    """End a process that joined a process group: flush stdout/stderr and leave without Python's
    finalization (os._exit), with `code`. Returns (does nothing) in a process that never joined one.

    Why: gloo's worker threads release the tensors of finished collectives (Python objects) a
    moment after the caller has moved on, and torch keeps the group alive until exit once DDP has
    wrapped a model. A worker that needs the GIL while Python finalizes aborts the whole process
    ("terminate called without an active exception", SIGABRT on a rank whose run was saved, and
    torchrun reports the job failed): measured on this CPU under load, 3 of 5 runs of the DDP
    tests. Everything tl writes is closed and renamed into place before this point.
    """
    if not _joined:
        return
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said anyway
            pass
    os._exit(code)


def active() -> bool:
    import sys

    if "torch.distributed" not in sys.modules:
        return False  # nothing imported it, so no process group exists (and torch stays unimported)
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    """Wait for every rank, then leave the process group (call once, at the end of a command)."""
    if active():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device=None) -> list[float]:
    """Sum a few numbers over all ranks (identity in a single process)."""
    import torch
    import torch.distributed as dist

    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank (picklable objects; identity in a single process)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank ([obj] in a single process)."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def my_shard(n: int, batch_size: int = 1, info: DistInfo | None = None) -> list[int]:
    """The indices of `range(n)` this rank handles: whole batches, dealt round-robin.

    Batch b (items b*batch_size ... b*batch_size + batch_size - 1, the same batches a single
    process makes) goes to rank b % world_size. Keeping batches whole means every image is run in
    exactly the batch it would be in on one process, so results do not depend on the number of
    ranks; dealing them round-robin keeps the ranks within one batch of each other.

    Example:
        >>> my_shard(10, 2, DistInfo(rank=1, world_size=2))
        [2, 3, 6, 7]
    """
    info = info or env_info()
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    out: list[int] = []
    for start in range(info.rank * batch_size, n, info.world_size * batch_size):
        out.extend(range(start, min(start + batch_size, n)))
    return out


def cpu_count() -> int:
    """Cores this process may use (affinity-aware, unlike os.cpu_count).

    Under torchrun the node's cores are shared by its LOCAL_WORLD_SIZE processes, so each rank
    sizes its decode threads and onnxruntime pool to its share instead of oversubscribing.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, env_info().local_world_size))
