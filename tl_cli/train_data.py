"""Images and labels for fine-tuning: the same split as `tl extract`, augmented for training.

The split comes from `data.scan_dataset` (stable, hash-based), so a fine-tuned run and a
small-data run on the same folder are scored on the same validation images. Training images
get a random resized crop and a horizontal flip (`--no-augment` turns that off); validation
images get the backbone's plain preprocessing, exactly what prediction uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import Dataset, Sample
from .errors import ImageError
from .preprocess import Preprocess, eval_transform, open_rgb, train_transform


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
            self._transform = eval_transform(self.pre) if self.mode == "eval" else train_transform(self.pre, self.mode == "augment")
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
    generator: object  # torch.Generator: the training order and the workers' seeds
    n_train: int
    n_val: int


def make_loaders(ds: Dataset, pre: Preprocess, batch_size: int, workers: int, augment: bool, seed: int,
                 pin_memory: bool = False) -> Loaders:
    """DataLoaders over the dataset's train and val splits.

    The training loader shuffles with its own seeded generator (saved in checkpoints, so a
    resumed run sees the same order); worker processes derive their random state from it.
    """
    import torch
    from torch.utils.data import DataLoader

    train_s, val_s = ds.split("train"), ds.split("val")
    gen = torch.Generator().manual_seed(seed)
    common = dict(batch_size=batch_size, num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                  prefetch_factor=4 if workers > 0 else None, persistent_workers=False)
    train = DataLoader(LabelledImages(ds.root, train_s, pre, "augment" if augment else "plain"), shuffle=True,
                       drop_last=False, generator=gen, **common)
    val = None
    if val_s:
        # Own generator: validation never draws from the global or training random streams.
        val = DataLoader(LabelledImages(ds.root, val_s, pre, "eval"), shuffle=False,
                         generator=torch.Generator().manual_seed(seed), **common)
    return Loaders(train, val, gen, len(train_s), len(val_s))
