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

from tl_cli.data.preprocess import Preprocess
from tl_cli.data.scan import Dataset
from tl_cli.finetune.data import LabelledImages, collate
from tl_cli.head.softmax import cross_entropy, train_head


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
def feature_batches(net: nn.Module, root, samples, pre: Preprocess, batch_size: int, workers: int,
                    device: torch.device, on_halve=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(features, labels)] per batch of `batch_size` consecutive samples: the input of
    `net.classifier`, in eval mode, plain preprocessing; unreadable images left out (a batch of
    them only gives empty arrays, so batch b is always entry b).

    float32 on every device, as `tl extract` computes features and as prediction runs (see the
    precision policy in runtime/device.py). Out of memory halves the batch and goes on (the
    extraction fallback).
    """
    from torch.utils.data import DataLoader

    from tl_cli.runtime.oom import HalvingForward

    # Own generator: iterating a DataLoader otherwise draws its worker seed from the global stream.
    loader = DataLoader(LabelledImages(root, samples, pre, "eval"), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate, generator=torch.Generator().manual_seed(0),
                        pin_memory=device.type == "cuda")
    captured: list[torch.Tensor] = []
    hook = net.classifier.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].float()))

    def features(x: torch.Tensor) -> torch.Tensor:
        captured.clear()
        net(x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))
        return captured[0].cpu()

    forward = HalvingForward(features, on_halve)
    was_training = net.training
    net.eval()
    out = []
    try:
        for x, y, _ in loader:
            if x is None:
                out.append((np.empty((0, 0), np.float32), np.empty(0, np.int64)))
                continue
            out.append((forward(x).numpy(), y.numpy()))
    finally:
        hook.remove()
        net.train(was_training)
    return out


def _join(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    batches = [b for b in batches if len(b[1])]
    if not batches:
        return np.empty((0, 0), np.float32), np.empty(0, np.int64)
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def penultimate_features(net: nn.Module, root, samples, pre: Preprocess, batch_size: int, workers: int,
                         device: torch.device, on_halve=None) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of `samples`, in order: `feature_batches` put together."""
    return _join(feature_batches(net, root, samples, pre, batch_size, workers, device, on_halve))


def cached_features(ws, ds: Dataset, spec, weights_id: str,
                    device_type: str = "cpu") -> list[tuple[np.ndarray, np.ndarray]] | None:
    """[(features, labels) of train, of val] from the workspace's `tl extract` cache, read once;
    None unless every image of both splits is in it.

    Looked up under every identity `tl extract` makes on this kind of device (on a GPU: the
    nvJPEG-decoded features first, then the Pillow-decoded ones a CPU or `--decoder cpu` made).
    """
    from tl_cli.errors import CacheError
    from tl_cli.features.cache import FeatureCache, stat_files
    from tl_cli.features.extract import identities_for_device

    train, val = ds.split("train"), ds.split("val")
    rel = [s.relpath for s in train + val]
    stats = None
    for identity in identities_for_device(spec, weights_id, ds.root, device_type):
        cache = FeatureCache(ws.caches, identity)
        if not cache.main.is_file():
            continue
        stats = stats or stat_files(ds.root, rel)
        try:
            with cache:
                if len(cache.lookup(stats)) < len(stats):
                    continue
                feats = np.asarray(cache.read(rel), np.float32)
        except CacheError:  # in use by a running `tl extract`, or unreadable: try the next, or compute
            continue
        labels = np.array([s.label for s in train + val], np.int64)
        n = len(train)
        return [(feats[:n], labels[:n]), (feats[n:], labels[n:])]
    return None


def _sharded_features(net: nn.Module, ds: Dataset, split: str, pre: Preprocess, batch_size: int, workers: int,
                      device: torch.device, on_halve) -> tuple[np.ndarray, np.ndarray]:
    """Features of one split, computed by every rank on its share and put together on every rank.

    Under torchrun each rank runs whole batches dealt round-robin (`distributed.my_shard`: batch b
    to rank b mod N), so no rank waits for one to do all the work; every image runs in the batch
    it would be in on one process and the batches are put back in one-process order, so the
    features are those of one process, bit for bit (the head's fit would round differently).
    """
    from tl_cli.runtime import distributed

    samples = ds.split(split)
    if not distributed.active():
        return penultimate_features(net, ds.root, samples, pre, batch_size, workers, device, on_halve)
    info = distributed.env_info()
    mine = distributed.my_shard(len(samples), batch_size, info)
    local = feature_batches(net, ds.root, [samples[i] for i in mine], pre, batch_size, workers, device, on_halve)
    per_rank = distributed.all_gather_object(local)
    n_batches = -(-len(samples) // batch_size)
    return _join([per_rank[b % info.world_size][b // info.world_size] for b in range(n_batches)])


def fit_probe(net: nn.Module, ds: Dataset, spec, weights_id: str, ws, batch_size: int, workers: int,
              device: torch.device, use_cache: bool, on_halve=None) -> Probe:
    """Fit the softmax head on the frozen features of `net` (train split; L2 chosen on val).

    Call on every rank under torchrun (with the global batch size): rank 0 looks in the
    feature cache, and if the features are not there every rank computes its share of them;
    rank 0 fits the head (seconds on features) and every rank gets the same Probe.
    """
    from tl_cli.runtime import distributed

    t = time.perf_counter()
    splits = None
    if use_cache and distributed.is_main():
        splits = cached_features(ws, ds, spec, weights_id, device.type)
    source = "cache" if distributed.broadcast_object(splits is not None) else "model"
    if source == "model":
        splits = [_sharded_features(net, ds, s, spec.preprocess, batch_size, workers, device, on_halve)
                  for s in ("train", "val")]
    probe = None
    if distributed.is_main():
        (xt, yt), (xv, yv) = splits
        has_val = len(yv) > 0
        head = train_head(xt, yt, xv if has_val else None, yv if has_val else None, len(ds.classes))
        train_loss = cross_entropy(head.logits(xt), yt)
        probe = Probe(head.weight, head.bias, head.l2, train_loss, head.train_accuracy, head.val_accuracy, len(yt),
                      time.perf_counter() - t, source)
    return distributed.broadcast_object(probe)


def load_into(model_net: nn.Module, probe: Probe) -> None:
    """Copy the probe into the Linear after the dropout (attach_head's layout: Dropout, Linear)."""
    linear = model_net.classifier[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(probe.weight))
        linear.bias.copy_(torch.from_numpy(probe.bias))
