"""The pieces of DistributedDataParallel training: samplers, the model wrapper, agreeing ranks.

`--batch-size` is the *global* batch: each of N ranks takes batch/N images per step. Training
order comes from torch's DistributedSampler on any number of processes (one process is simply
N = 1): epoch e shuffles with seed + e and rank r takes positions r, r+N, r+2N, ... of that
permutation, so step k of N ranks sees together exactly the images of step k on one process.
With DDP averaging the ranks' gradients, N processes then compute the same steps as one process
with the same global batch, up to float rounding, when the number of training images is a
multiple of N (otherwise the sampler repeats a few images to give every rank the same count, as
DistributedSampler always does) and no trained layer depends on the batch (batch norm: use
--sync-bn on GPUs) or on per-rank random draws (dropout).
"""

from __future__ import annotations

from tl_cli.errors import ConfigError
from tl_cli.runtime.distributed import DistInfo, active, all_reduce_sum, env_info, my_shard


def local_batch_size(batch_size: int, info: DistInfo | None = None) -> int:
    """Images per step on this rank: the global batch divided by the number of ranks.

    Raises:
        ConfigError: the global batch is not a multiple of the world size.
    """
    info = info or env_info()
    if batch_size % info.world_size:
        raise ConfigError(
            f"--batch-size {batch_size} is the global batch and must be a multiple of the {info.world_size} processes",
            hint=f"use --batch-size {max(info.world_size, batch_size - batch_size % info.world_size)} "
                 f"or {batch_size + info.world_size - batch_size % info.world_size}",
        )
    return batch_size // info.world_size


def train_sampler(dataset, seed: int, info: DistInfo | None = None):
    """This rank's shuffled share of the training set; call `.set_epoch(e)` before every epoch."""
    from torch.utils.data.distributed import DistributedSampler

    info = info or env_info()
    return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed,
                              drop_last=False)


def eval_indices(n: int, info: DistInfo | None = None) -> list[int]:
    """This rank's share of n evaluation items: every N-th, no padding, so sums over ranks are exact."""
    return my_shard(n, 1, info or env_info())


def check_sync_bn(sync_bn: bool, device) -> None:
    """--sync-bn needs CUDA: torch's SyncBatchNorm has no CPU kernel (its forward refuses CPU tensors)."""
    if sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA GPUs: torch's SyncBatchNorm has no CPU implementation",
                          hint="drop --sync-bn on CPU (each process then normalises with its own batch)")


def wrap(model, device):
    """The module to train with: DistributedDataParallel around `model` under torchrun, else `model`.

    The optimizer, checkpoints and evaluation keep using `model` itself (DDP shares its parameter
    tensors); only the training forward goes through the wrapper, which averages the gradients
    over the ranks during backward. DDP also copies rank 0's weights and buffers to every rank at
    construction, so all ranks start from the same model even if their initialisation differed.
    Evaluation must not go through the wrapper: its forward synchronises buffers, a collective
    that would deadlock when ranks evaluate different numbers of batches.
    """
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def sum_over_ranks(*values: float) -> list[float]:
    """Sums of a few numbers over all ranks (the numbers themselves in one process)."""
    return all_reduce_sum([float(v) for v in values])


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any: ranks must agree on when to stop, or they deadlock."""
    if not active():
        return flag
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0
