"""Run a frozen backbone over a dataset once and keep the penultimate features in the cache.

Images are decoded in threads (`loader.py`) while the engine (`engines.py`: onnxruntime on CPU
by default, eager PyTorch otherwise) runs the network, so the two overlap. Rows are written to the cache in chunks as they are produced: an interrupted
extraction keeps what it finished, and the next run extracts only the rest.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backbones import DEFAULT_BACKBONE, get_spec, resolve_weights
from .cache import FeatureCache, FileStat, dataset_fingerprint, stat_files
from .data import Dataset, scan_dataset
from .errors import ConfigError, DataError, ImageError
from .preprocess import Preprocess, load_tensor
from .progress import Reporter
from .workspace import Workspace


@dataclass(frozen=True)
class ExtractConfig:
    """Options of `tl extract` that decide what is computed and how fast.

    Attributes:
        backbone: registry name. weights: optional state-dict file. pretrained: False = random init.
        val_fraction: validation share when the data has no val/ folder.
        batch_size: images per forward pass. workers: decoding threads (None = one per core).
        device: "auto", "cpu", "cuda", "cuda:1". strict: fail on the first unreadable image.
        engine: "auto" (onnxruntime on CPU when installed, else torch), "torch" or "onnx".
        chunk_rows: rows per cache chunk (what an interrupted run keeps).
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    pretrained: bool = True
    val_fraction: float = 0.2
    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"
    strict: bool = False
    chunk_rows: int = 512
    dtype: str = "float32"
    engine: str = "auto"

    def __post_init__(self) -> None:
        from .engines import ENGINES

        if self.engine not in ENGINES:
            raise ConfigError(f"unknown --engine {self.engine!r}", hint=f"use one of {', '.join(ENGINES)}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"feature dtype must be float32 or float16, got {self.dtype}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExtractResult:
    dataset: Dataset
    relpaths: list[str]  # images with features, in dataset order
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,)
    splits: np.ndarray  # (N,) "train"/"val"
    failed: list[tuple[str, str]]  # (relpath, reason): unreadable images, incl. those skipped at scan
    n_extracted: int
    n_cached: int
    seconds: float
    extract_seconds: float
    cache_key: str
    fingerprint: str
    cache_dir: Path
    weights_id: str
    preprocess: Preprocess
    backbone: str = ""
    engine: str = ""  # the engine that ran ("onnx", "torch"), "" when everything came from the cache
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.n_extracted / self.extract_seconds if self.extract_seconds > 0 else 0.0


class _ImageFiles:
    """Map-style dataset for the DataLoader: index -> (tensor or None, index, error)."""

    def __init__(self, root: Path, relpaths: list[str], pre: Preprocess):
        self.root, self.relpaths, self.pre = root, relpaths, pre

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, i: int):
        try:
            return load_tensor(self.root / self.relpaths[i], self.pre), i, ""
        except ImageError as exc:
            return None, i, str(exc).split(": ", 1)[-1]


def _collate(items):
    import torch

    good = [(t, i) for t, i, _ in items if t is not None]
    bad = [(i, err) for t, i, err in items if t is None]
    x = torch.stack([t for t, _ in good]) if good else None
    return x, [i for _, i in good], bad


def default_workers() -> int:
    # Decoding is ~10x cheaper than the forward pass on CPU, so one worker per two cores keeps
    # the network fed without stealing its threads; capped because each worker costs memory.
    n = os.cpu_count() or 1
    return max(1, min(8, n // 2))


def make_loader(root: Path, relpaths: list[str], pre: Preprocess, batch_size: int, workers: int, pin: bool):
    from torch.utils.data import DataLoader

    return DataLoader(
        _ImageFiles(root, relpaths, pre),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


def _precision(cfg: ExtractConfig) -> str:
    """Numeric precision of the features this config produces; part of the cache identity.

    onnxruntime and eager torch float32 agree within 1e-5, so they share a cache (the engine is
    a speed choice, not a different feature). CUDA runs bf16 autocast, whose features differ by
    ~1e-2: those are kept apart.
    """
    from .device import device_type

    return "bf16" if cfg.engine != "onnx" and device_type(cfg.device) == "cuda" else "float32"


def _extract_missing(todo: list[FileStat], root: Path, spec, choice, cfg: ExtractConfig, ws: Workspace,
                     cache: FeatureCache, reporter: Reporter, failed: list[tuple[str, str]],
                     notes: list[str]) -> tuple[int, set[str], str]:
    """Decode `todo` in threads, run the engine, write the rows to the cache in chunks.

    Returns (images extracted, relpaths that could not be read, engine name).
    """
    from .engines import make_engine
    from .loader import default_threads

    def build_net():
        from .backbones import create_backbone

        return create_backbone(spec.name, cfg.weights, cfg.pretrained)[0]

    engine, engine_notes = make_engine(cfg.engine, spec, choice, cfg.device, ws.root / "engines", build_net)
    notes.extend(engine_notes)
    threads = default_threads() if cfg.workers is None else cfg.workers
    te = time.perf_counter()
    n_extracted = 0
    bad_rel: set[str] = set()
    buf_stats: list[FileStat] = []
    buf_feats: list[np.ndarray] = []
    reporter.start("extracting", len(todo))
    try:
        for batch in iter_decoded(root, [s.relpath for s in todo], spec.preprocess, cfg.batch_size, threads):
            for i, err in batch.failed:
                if cfg.strict:
                    raise ImageError(f"{todo[i].relpath}: {err}", hint="remove it, or drop --strict")
                failed.append((todo[i].relpath, err))
                bad_rel.add(todo[i].relpath)
            if batch.pixels is not None:
                buf_feats.append(engine(batch.pixels))
                buf_stats.extend(todo[i] for i in batch.index)
                n_extracted += len(batch.index)
            if len(buf_stats) >= cfg.chunk_rows:
                cache.write_chunk(buf_stats, np.concatenate(buf_feats))
                buf_stats, buf_feats = [], []
            elapsed = time.perf_counter() - te
            reporter.advance(len(batch.index) + len(batch.failed), img_s=f"{n_extracted / max(elapsed, 1e-9):.1f}/s")
        if buf_stats:
            cache.write_chunk(buf_stats, np.concatenate(buf_feats))
    finally:
        reporter.stop()
    return n_extracted, bad_rel, engine.name


def iter_decoded(root: Path, relpaths: list[str], pre: Preprocess, batch_size: int, threads: int):
    """The decode stage of extraction (a seam: tests replace it to prove nothing is decoded)."""
    from .loader import iter_batches

    return iter_batches(root, relpaths, pre, batch_size, threads, normalize=True)


def extract_features(
    data_dir: str | os.PathLike,
    cfg: ExtractConfig = ExtractConfig(),
    workspace: Workspace | None = None,
    reporter: Reporter | None = None,
) -> ExtractResult:
    """Make sure every image of `data_dir` has cached features; return them all.

    Images whose (path, size, mtime) are already cached are not decoded or run again.

    Raises:
        DataError, WeightsNotFound, UnknownBackbone, CacheError, ImageError (with cfg.strict).

    Example:
        >>> r = extract_features("photos", ExtractConfig(backbone="lenet5", pretrained=False))
        >>> r.features.shape
        (120, 84)
    """
    t0 = time.perf_counter()
    reporter = reporter or Reporter()
    ws = workspace or Workspace.open()
    ws.ensure()
    spec = get_spec(cfg.backbone)
    choice = resolve_weights(spec, cfg.weights, cfg.pretrained)
    ds = scan_dataset(data_dir, cfg.val_fraction)
    if cfg.strict and ds.skipped:
        rel, why = ds.skipped[0]
        raise ImageError(f"{rel}: {why}", hint="remove it, or drop --strict to skip unreadable images")
    pre = spec.preprocess
    info = {
        "backbone": spec.name,
        "weights": choice.identity,
        "preprocess": pre.to_dict(),
        "feature_dim": spec.feature_dim,
        "dataset_root": str(ds.root),
    }
    if _precision(cfg) != "float32":  # absent for float32 so existing caches keep their key
        info["precision"] = _precision(cfg)
    relpaths = [s.relpath for s in ds.samples]
    stats = stat_files(ds.root, relpaths)
    failed: list[tuple[str, str]] = list(ds.skipped)
    notes: list[str] = []
    n_extracted = 0
    t_extract = 0.0
    with FeatureCache(ws.caches, info, dtype=cfg.dtype) as cache:
        if cache.rebuilt_reason:
            notes.append(cache.rebuilt_reason)
        hits = cache.lookup(stats)
        todo = [s for s in stats if s.relpath not in hits]
        bad_rel: set[str] = set()
        engine_name = ""
        if todo:
            te = time.perf_counter()
            n_extracted, bad_rel, engine_name = _extract_missing(todo, ds.root, spec, choice, cfg, ws, cache,
                                                                 reporter, failed, notes)
            t_extract = time.perf_counter() - te
        good = [s for s in stats if s.relpath not in bad_rel]
        cache.consolidate(good)
        good_rel = [s.relpath for s in good]
        feats = cache.read(good_rel)
    by_rel = {s.relpath: s for s in ds.samples}
    labels = np.array([by_rel[r].label for r in good_rel], dtype=np.int64)
    splits = np.array([by_rel[r].split for r in good_rel])
    missing = [c for i, c in enumerate(ds.classes) if not (labels == i).any()]
    if missing:
        raise DataError(f"no readable images in class folder{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    ws.remember(last_dataset=ds.root)
    return ExtractResult(
        dataset=ds,
        relpaths=good_rel,
        features=feats,
        labels=labels,
        splits=splits,
        failed=failed,
        n_extracted=n_extracted,
        n_cached=len(good) - n_extracted,
        seconds=time.perf_counter() - t0,
        extract_seconds=t_extract,
        cache_key=cache.key,
        fingerprint=dataset_fingerprint(cache.key, good),
        cache_dir=cache.dir,
        weights_id=choice.identity,
        preprocess=pre,
        backbone=spec.name,
        engine=engine_name,
        notes=notes,
    )
