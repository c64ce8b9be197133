"""LP-FT: start fine-tuning from a linear probe instead of a random head.

Kumar et al. (ICLR 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution") show that a random head sends large, arbitrary gradients into the
pretrained layers in the first steps; fitting the head on the frozen features first (linear
probing) and fine-tuning from there keeps the features and ends at least as accurate. Here the
probe is exactly the head `tl extract` trains (tl_cli/head.py, L2 chosen on the validation
split) on the penultimate features of the network as it is before epoch 1, in eval mode, with
the backbone's plain preprocessing. The probe consumes no random numbers (own loader
generators, eval-mode dropout, deterministic L-BFGS), so the training streams after it are
those of a run without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from tl_cli.data.scan import Dataset
from tl_cli.head.softmax import cross_entropy, train_head
from tl_cli.data.preprocess import Preprocess
from tl_cli.finetune.data import LabelledImages, collate


@dataclass
class Probe:
    """The fitted head (Linear weight (C, D) and bias (C,)) and how it was obtained."""

    weight: np.ndarray
    bias: np.ndarray
    l2: float
    train_loss: float
    train_accuracy: float
    val_accuracy: float | None
    n_train: int
    seconds: float
    source: str  # "cache" (the features of `tl extract`) or "model" (computed here)


@torch.no_grad()
def penultimate_features(net: nn.Module, root, samples, pre: Preprocess, batch_size: int, workers: int,
                         device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of `samples`: the input of `net.classifier`, in eval mode, plain preprocessing.

    Unreadable images are left out (training skips them too).
    """
    from torch.utils.data import DataLoader

    # Own generator: iterating a DataLoader otherwise draws its worker seed from the global stream.
    loader = DataLoader(LabelledImages(root, samples, pre, "eval"), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate, generator=torch.Generator().manual_seed(0))
    captured: list[torch.Tensor] = []
    hook = net.classifier.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].float().cpu()))
    was_training = net.training
    net.eval()
    labels = []
    try:
        for x, y, _ in loader:
            if x is None:
                continue
            net(x.to(device).contiguous(memory_format=torch.channels_last))
            labels.append(y)
    finally:
        hook.remove()
        net.train(was_training)
    if not captured:
        return np.empty((0, 0), np.float32), np.empty(0, np.int64)
    return torch.cat(captured).numpy(), torch.cat(labels).numpy()


def cached_features(ws, ds: Dataset, spec, weights_id: str) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """[(features, labels) of train, of val] from the workspace's `tl extract` cache, read once;
    None unless every image of both splits is in it."""
    from tl_cli.features.cache import FeatureCache, stat_files
    from tl_cli.errors import CacheError
    from tl_cli.features.extract import cache_identity

    cache = FeatureCache(ws.caches, cache_identity(spec, weights_id, ds.root))
    if not cache.main.is_file():
        return None
    train, val = ds.split("train"), ds.split("val")
    rel = [s.relpath for s in train + val]
    stats = stat_files(ds.root, rel)
    try:
        with cache:
            if len(cache.lookup(stats)) < len(stats):
                return None
            feats = np.asarray(cache.read(rel), np.float32)
    except CacheError:  # in use by a running `tl extract`, or unreadable: compute the features instead
        return None
    labels = np.array([s.label for s in train + val], np.int64)
    n = len(train)
    return [(feats[:n], labels[:n]), (feats[n:], labels[n:])]


def fit_probe(net: nn.Module, ds: Dataset, spec, weights_id: str, ws, batch_size: int, workers: int,
              device: torch.device, use_cache: bool) -> Probe:
    """Fit the softmax head on the frozen features of `net` (train split; L2 chosen on val)."""
    t = time.perf_counter()
    splits = cached_features(ws, ds, spec, weights_id) if use_cache else None
    source = "cache" if splits else "model"
    if splits is None:
        splits = [penultimate_features(net, ds.root, ds.split(s), spec.preprocess, batch_size, workers, device)
                  for s in ("train", "val")]
    (xt, yt), (xv, yv) = splits
    has_val = len(yv) > 0
    head = train_head(xt, yt, xv if has_val else None, yv if has_val else None, len(ds.classes))
    train_loss = cross_entropy(head.logits(xt), yt)
    return Probe(head.weight, head.bias, head.l2, train_loss, head.train_accuracy, head.val_accuracy, len(yt),
                 time.perf_counter() - t, source)


def load_into(model_net: nn.Module, probe: Probe) -> None:
    """Copy the probe into the Linear after the dropout (attach_head's layout: Dropout, Linear)."""
    linear = model_net.classifier[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(probe.weight))
        linear.bias.copy_(torch.from_numpy(probe.bias))
