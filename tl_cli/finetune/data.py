"""Images and labels for fine-tuning: the same split as `tl extract`, augmented for training.

The split comes from `data.scan_dataset` (stable, hash-based), so a fine-tuned run and a
small-data run on the same folder are scored on the same validation images. Training images
get a random resized crop and a horizontal flip (`--no-augment` turns that off); validation
images get the backbone's plain preprocessing, exactly what prediction uses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tl_cli.data.image_size import training_side, typical_side
from tl_cli.data.preprocess import Preprocess, eval_transform, open_rgb, train_transform
from tl_cli.data.scan import Dataset, Sample
from tl_cli.errors import ImageError
from tl_cli.runtime.distributed import DistInfo, env_info

if TYPE_CHECKING:
    from tl_cli.finetune.config import FinetuneConfig


def with_image_size(cfg: FinetuneConfig, ds: Dataset, backbone_size: int) -> FinetuneConfig:
    """`cfg` with `image_size` decided from the training images when it is None (data/image_size.py)."""
    if cfg.image_size is not None:
        return cfg
    return replace(cfg, image_size=training_side(typical_side([ds.abspath(s) for s in ds.split("train")]), backbone_size))


def default_workers(device_type: str = "cpu") -> int:
    """DataLoader worker processes for training on a device of `device_type`.

    CPU: decoding is ~10x cheaper than the forward and backward passes there, so one worker per
    two cores keeps the network fed without stealing its threads, capped at 8 (each worker costs
    memory). CUDA: the GPU trains faster than a few cores decode, so every core but one (the
    training process's) decodes. Cores are those this process may use (`cpu_count`: affinity-aware,
    and shared by the node's LOCAL_WORLD_SIZE processes under torchrun).
    """
    from tl_cli.runtime.distributed import cpu_count

    n = cpu_count()
    if device_type == "cuda":
        return max(1, n - 1)
    return max(1, min(8, n // 2))


class LabelledImages:
    """Map-style dataset: index -> (tensor or None, label, error). Unreadable files don't stop training.

    `mode` is "augment" (training), "plain" (training with --no-augment) or "eval". The transform
    is built lazily in whichever process uses it: it closes over lambdas, which cannot be pickled
    to worker processes started with "spawn" (the default on macOS and Windows).
    """

    def __init__(self, root: Path, samples: list[Sample], pre: Preprocess, mode: str):
        self.root, self.samples, self.pre, self.mode = root, samples, pre, mode
        self._transform = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_transform": None}

    def transform(self, im):
        if self._transform is None:
            eval_mode = self.mode == "eval"
            self._transform = eval_transform(self.pre) if eval_mode else train_transform(self.pre, self.mode == "augment")
        return self._transform(im)

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            return self.transform(open_rgb(self.root / s.relpath, draft_size=self.pre.resize_size)), s.label, ""
        except ImageError as exc:
            return None, s.label, f"{s.relpath}: {str(exc).split(': ', 1)[-1]}"


def collate(items):
    """Stack readable images; returns (x or None, y or None, [errors])."""
    import torch

    good = [(t, y) for t, y, _ in items if t is not None]
    errors = [e for t, _, e in items if t is None]
    if not good:
        return None, None, errors
    return torch.stack([t for t, _ in good]), torch.tensor([y for _, y in good]), errors


@dataclass
class Loaders:
    train: object  # torch DataLoader
    val: object | None
    generator: object  # torch.Generator: the workers' seeds (augmentation)
    n_train: int
    n_val: int
    sampler: object = None  # the training DistributedSampler: set_epoch(e) before each epoch


def make_loaders(ds: Dataset, pre: Preprocess, batch_size: int, workers: int, augment: bool, seed: int,
                 pin_memory: bool = False, dist: DistInfo | None = None) -> Loaders:
    """DataLoaders over the dataset's train and val splits, this rank's share of them under torchrun.

    The training order is a DistributedSampler's (seed + epoch: a resumed run sees the same
    order) on any number of processes, so N ranks with batch_size/N each make the same steps
    as one process with batch_size (ddp.py). Validation is split over the ranks without padding;
    the caller sums the results over ranks. Worker processes derive their random state from
    `generator`, seeded per rank so that ranks augment differently.

    Raises:
        ConfigError: batch_size is not a multiple of the number of ranks.
    """
    import torch
    from torch.utils.data import DataLoader

    from tl_cli.finetune import ddp

    dist = dist or env_info()
    train_s, val_s = ds.split("train"), ds.split("val")
    gen = torch.Generator().manual_seed(seed + 7919 * dist.rank)
    common = dict(batch_size=ddp.local_batch_size(batch_size, dist), num_workers=workers, collate_fn=collate,
                  pin_memory=pin_memory, prefetch_factor=4 if workers > 0 else None, persistent_workers=False)
    train_images = LabelledImages(ds.root, train_s, pre, "augment" if augment else "plain")
    sampler = ddp.train_sampler(train_images, seed, dist)
    train = DataLoader(train_images, sampler=sampler, drop_last=False, generator=gen, **common)
    val = None
    if val_s:
        # Own generator: validation never draws from the global or training random streams.
        val = DataLoader(LabelledImages(ds.root, val_s, pre, "eval"),
                         sampler=ddp.eval_indices(len(val_s), dist),
                         generator=torch.Generator().manual_seed(seed), **common)
    return Loaders(train, val, gen, len(train_s), len(val_s), sampler)
