"""Run a frozen backbone over a dataset once and keep the penultimate features in the cache.

Images are decoded in threads (`data/decode.py`) while the engine (`engines.py`: onnxruntime on
CPU by default, eager PyTorch otherwise) runs the network, so the two overlap. Rows are written
to the cache in chunks as they are produced: an interrupted extraction keeps what it finished,
and the next run extracts only the rest.

Under torchrun every rank runs the backbone on its share of the batches (`distributed.my_shard`)
and all features are gathered to rank 0, which alone holds the cache and writes it: the cache is
the same, row for row and byte for byte, as one process makes, because every image is run in the
same batch as on one process.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tl_cli.backbones import DEFAULT_BACKBONE, get_spec, resolve_weights
from tl_cli.data.groups import make_grouping
from tl_cli.data.preprocess import Preprocess
from tl_cli.data.scan import Dataset, scan_dataset, warn_untrained
from tl_cli.errors import ConfigError, DataError, ImageError
from tl_cli.features.cache import FeatureCache, FileStat, dataset_fingerprint, stat_files
from tl_cli.runs.workspace import Workspace, WorkspaceLike
from tl_cli.runtime import cache_dirs, distributed
from tl_cli.runtime.fields import check_field_types
from tl_cli.runtime.oom import HalvingForward
from tl_cli.runtime.progress import Reporter

DECODERS = ("auto", "cpu", "gpu")


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
        decoder: "auto" (nvJPEG on the GPU when extracting on CUDA, else Pillow threads), "cpu"
            (Pillow threads) or "gpu" (nvJPEG; CUDA only). See data/gpu_decode.py.
        group_pattern, groups: keep groups of images on one side of the split (data/groups.py).
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
    decoder: str = "auto"
    group_pattern: str | None = None
    groups: str | None = None

    def __post_init__(self) -> None:
        from tl_cli.backbones.registry import absolute_weights_path
        from tl_cli.features.engines import ENGINES

        check_field_types(self)
        object.__setattr__(self, "weights", absolute_weights_path(self.weights))
        if self.decoder not in DECODERS:
            raise ConfigError(f"unknown --decoder {self.decoder!r}", hint=f"use one of {', '.join(DECODERS)}")
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
    world_size: int = 1  # processes that shared the extraction (torchrun)

    @property
    def images_per_second(self) -> float:
        return self.n_extracted / self.extract_seconds if self.extract_seconds > 0 else 0.0


def choose_decoder(cfg: ExtractConfig, device_type: str) -> str:
    """"cpu" (Pillow threads) or "gpu" (nvJPEG) for this config on a device of `device_type`."""
    from tl_cli.data import gpu_decode

    if cfg.decoder == "gpu":
        if device_type != "cuda" or cfg.engine == "onnx" or not gpu_decode.available():
            raise ConfigError("--decoder gpu needs a CUDA GPU, the torch engine and torchvision with nvJPEG",
                              hint="use --decoder cpu")
        return "gpu"
    if cfg.decoder == "auto" and device_type == "cuda" and cfg.engine != "onnx" and gpu_decode.available():
        return "gpu"
    return "cpu"


def feature_identity(spec, weights_id: str, root: Path, decoder: str = "cpu") -> dict:
    """What a feature cache is keyed on (see cache.py). Every engine computes float32 features
    (runtime/device.py: precision policy) and onnxruntime and torch agree within 1e-5, so they
    share a cache; nvJPEG's pixels differ from Pillow's by more than float32 rounding, so its
    features are kept apart ("decoder"; absent for Pillow, so existing caches keep their key)."""
    from tl_cli.data.gpu_decode import DECODER

    info = {
        "backbone": spec.name,
        "weights": weights_id,
        "preprocess": spec.preprocess.to_dict(),
        "feature_dim": spec.feature_dim,
        "dataset_root": str(root),
    }
    if decoder == "gpu":
        info["decoder"] = DECODER
    return info


def identities_for_device(spec, weights_id: str, root: Path, device_type: str) -> list[dict]:
    """The cache identities `tl extract` with default settings makes on a device of this type, the
    one it would make first: the probe of fine-tuning looks for its features under these."""
    from tl_cli.data import gpu_decode

    cpu = feature_identity(spec, weights_id, root)
    if device_type == "cuda" and gpu_decode.available():
        return [feature_identity(spec, weights_id, root, "gpu"), cpu]
    return [cpu]


def iter_decoded(root: Path, relpaths: list[str], pre: Preprocess, batch_size: int, threads: int,
                 normalize: bool = True, decoder: str = "cpu", device=None):
    """The decode stage of extraction (a seam: tests replace it to prove nothing is decoded).

    `normalize=False` yields uint8 crops for an engine that normalises on its device; the GPU
    decoder yields float32 network input on `device`.
    """
    if decoder == "gpu":
        from tl_cli.data.gpu_decode import iter_gpu_batches

        return iter_gpu_batches(root, relpaths, pre, batch_size, threads, device)
    from tl_cli.data.decode import iter_batches

    return iter_batches(root, relpaths, pre, batch_size, threads, normalize=normalize)


def _save_pending(cache: FeatureCache, stats: list[FileStat], feats: list[np.ndarray]) -> None:
    """Best-effort write of the unsaved rows while an error or interrupt is on its way up."""
    if stats:
        with contextlib.suppress(Exception):  # e.g. disk full again: the original error matters more
            cache.write_chunk(stats, np.concatenate(feats))


def _drop_unreadable_classes(ds: Dataset, good_rel: list[str], failed: list[tuple[str, str]]):
    """Drop (and list) classes none of whose images could be read; fewer than two left is an error."""
    label_of = {s.relpath: s.label for s in ds.samples}
    seen = {label_of[r] for r in good_rel}
    missing = [c for i, c in enumerate(ds.classes) if i not in seen]
    if not missing:
        return ds, failed
    reason = "class folder with no readable images"
    ds = ds.drop_classes(missing, reason)
    if len(ds.classes) < 2:
        raise DataError(
            f"no readable images in class folder{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
            "fewer than two classes left",
            hint="run with --strict to stop at the first unreadable image and see why",
        )
    return ds, failed + [(f"{c}/", reason) for c in missing]


def _batches(root: Path, todo: list[FileStat], pre: Preprocess, cfg: ExtractConfig, engine, decoder: str = "cpu",
             raw_engine=None, done: _Filled | None = None):
    """Yield (indices into todo, features or None, [(index, reason)] unreadable) per batch, in todo order.

    Under torchrun each rank decodes and runs only its batches; each round every rank contributes
    at most one batch and all of them are gathered, so every rank sees every batch, in order.
    """
    from tl_cli.data.decode import default_threads

    threads = default_threads() if cfg.workers is None else cfg.workers
    rel = [s.relpath for s in todo]
    decode = dict(normalize=not getattr(raw_engine, "takes_uint8", False), decoder=decoder,
                  device=getattr(raw_engine, "device", None))
    if not distributed.active():
        for b in iter_decoded(root, rel, pre, cfg.batch_size, threads, **decode):
            if done is not None:
                done.n_cpu_decoded += b.n_cpu_decoded
            yield b.index, (engine(b.pixels) if b.pixels is not None else None), b.failed
        return
    info = distributed.env_info()
    mine = distributed.my_shard(len(rel), cfg.batch_size, info)
    local = iter(iter_decoded(root, [rel[i] for i in mine], pre, cfg.batch_size, threads, **decode))
    n_batches = -(-len(rel) // cfg.batch_size)
    for _ in range(-(-n_batches // info.world_size)):
        payload = None
        b = next(local, None)
        if b is not None:
            if done is not None:
                done.n_cpu_decoded += b.n_cpu_decoded
            feats = engine(b.pixels) if b.pixels is not None else None
            payload = ([mine[i] for i in b.index], feats, [(mine[i], err) for i, err in b.failed])
        for got in distributed.all_gather_object(payload):  # rank order == batch order
            if got is not None:
                yield got


@dataclass
class _Filled:
    n_extracted: int = 0
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    oom_batch: int | None = None  # the batch size extraction went on with after running out of memory
    engine: str = ""  # the engine that ran ("onnx", "torch")
    n_cpu_decoded: int = 0  # images the GPU decoder left to Pillow (this rank's)


def _fill(cache: FeatureCache | None, root: Path, todo: list[FileStat], spec, choice, cfg: ExtractConfig,
          device, engines_dir: Path, reporter: Reporter, notes: list[str], decoder: str = "cpu") -> _Filled:
    """Run the engine over `todo` and write the rows into `cache` in chunks (cache None: another rank).

    The time (and images/s) counts from the first batch on: building the engine (loading
    weights, CUDA start-up, an ONNX export) is not extraction speed.
    """
    from tl_cli.features.engines import make_engine

    def build_net():
        from tl_cli.backbones import create_backbone

        return create_backbone(spec.name, cfg.weights, cfg.pretrained)[0]

    done = _Filled()
    raw_engine, engine_notes = make_engine(cfg.engine, spec, choice, str(device), engines_dir, build_net)
    te = time.perf_counter()
    notes.extend(engine_notes)
    done.engine = raw_engine.name
    # On OOM the batch is halved and extraction goes on from where it stopped.
    engine = HalvingForward(raw_engine)
    reporter.start("extracting", len(todo))
    buf_stats: list[FileStat] = []
    buf_feats: list[np.ndarray] = []
    try:
        for idx, feats, bad in _batches(root, todo, spec.preprocess, cfg, engine, decoder, raw_engine, done):
            for i, err in bad:
                if cfg.strict:  # every rank sees every batch, so every rank stops here
                    raise ImageError(f"{todo[i].relpath}: {err}", hint="remove it, or drop --strict")
                done.failed.append((todo[i].relpath, err))
            if feats is not None:
                buf_feats.append(feats)
                buf_stats.extend(todo[i] for i in idx)
                done.n_extracted += len(idx)
            if cache is not None and len(buf_stats) >= cfg.chunk_rows:
                cache.write_chunk(buf_stats, np.concatenate(buf_feats))
                buf_stats, buf_feats = [], []
            elapsed = time.perf_counter() - te
            reporter.advance(len(idx) + len(bad), img_s=f"{done.n_extracted / max(elapsed, 1e-9):.1f}/s")
        if cache is not None:
            cache.write_chunk(buf_stats, np.concatenate(buf_feats) if buf_feats else np.empty((0, spec.feature_dim)))
    except BaseException:
        # Ctrl-C, --strict, ...: keep the rows already computed so the next run starts after them.
        if cache is not None:
            _save_pending(cache, buf_stats, buf_feats)
        raise
    finally:
        reporter.stop()
    done.seconds = time.perf_counter() - te
    done.oom_batch = engine.limit
    return done


def extract_features(
    data_dir: str | os.PathLike,
    cfg: ExtractConfig = ExtractConfig(),
    workspace: WorkspaceLike = None,
    reporter: Reporter | None = None,
    require_train: bool = False,
) -> ExtractResult | None:
    """Make sure every image of `data_dir` has cached features; return them all.

    Images whose (path, size, mtime) are already cached are not decoded or run again. Under
    torchrun (WORLD_SIZE > 1) every rank must call this; the ranks share the work, rank 0 writes
    the cache and gets the result, the other ranks get None. A class without training images is an
    error before any extraction with `require_train` (to train on), else a TLWarning (`tl check`).

    Raises:
        DataError, WeightsNotFound, UnknownBackbone, CacheError, ImageError (with cfg.strict),
        ConfigError (a device that does not exist, or cuda:N under torchrun).

    Example:
        >>> r = extract_features("photos", ExtractConfig(backbone="lenet5", pretrained=False))
        >>> r.features.shape
        (120, 84)
    """
    t0 = time.perf_counter()
    info = distributed.env_info()
    device = cfg.device  # a single process resolves it only if it needs torch (start-up time)
    if info.enabled:
        dev = distributed.rank_device(cfg.device)
        info = distributed.init(dev.type)
        device = str(dev)
    from tl_cli.runtime.device import device_type

    decoder = choose_decoder(cfg, device_type(device))
    reporter = (reporter or Reporter()) if info.is_main else Reporter()
    ws = Workspace.open(workspace)
    spec = get_spec(cfg.backbone)
    choice = resolve_weights(spec, cfg.weights, cfg.pretrained)
    ds = scan_dataset(data_dir, cfg.val_fraction, grouping=make_grouping(cfg.group_pattern, cfg.groups),
                      require_train=require_train)
    if cfg.strict and ds.skipped:
        rel, why = ds.skipped[0]
        raise ImageError(f"{rel}: {why}", hint="remove it, or drop --strict to skip unreadable images")
    if not info.is_main:  # only rank 0 touches the workspace; it sends the to-do list
        todo = distributed.broadcast_object(None)
        if todo:
            _fill(None, ds.root, todo, spec, choice, cfg, device, cache_dirs.engines_dir(), reporter, [], decoder)
        return None
    ws.ensure(outside=ds.root)
    warn_untrained(ds)  # a diagnostic (`tl check`) reports on such data: said, not fatal
    pre = spec.preprocess
    info_key = feature_identity(spec, choice.identity, ds.root, decoder)
    stats = stat_files(ds.root, [s.relpath for s in ds.samples])
    failed: list[tuple[str, str]] = list(ds.skipped)
    notes: list[str] = []
    done = _Filled()
    with FeatureCache(ws.caches, info_key, dtype=cfg.dtype) as cache:
        if cache.rebuilt_reason:
            notes.append(cache.rebuilt_reason)
        hits = cache.lookup(stats)
        todo = distributed.broadcast_object([s for s in stats if s.relpath not in hits])
        if todo:
            done = _fill(cache, ds.root, todo, spec, choice, cfg, device, cache_dirs.engines_dir(), reporter, notes, decoder)
        failed += done.failed
        bad_rel = {rel for rel, _ in done.failed}
        if done.n_cpu_decoded:
            notes.append(f"{done.n_cpu_decoded} image(s) were not plain JPEGs for nvJPEG and were decoded on the CPU")
        if done.oom_batch is not None:
            notes.append(f"ran out of memory at batch size {cfg.batch_size}; continued with {done.oom_batch}")
        good = [s for s in stats if s.relpath not in bad_rel]
        cache.consolidate(good)
        good_rel = [s.relpath for s in good]
        feats = cache.read(good_rel)
    ds, failed = _drop_unreadable_classes(ds, good_rel, failed)
    by_rel = {s.relpath: s for s in ds.samples}
    labels = np.array([by_rel[r].label for r in good_rel], dtype=np.int64)
    splits = np.array([by_rel[r].split for r in good_rel])
    ws.remember(last_dataset=ds.root)
    return ExtractResult(
        dataset=ds,
        relpaths=good_rel,
        features=feats,
        labels=labels,
        splits=splits,
        failed=failed,
        n_extracted=done.n_extracted,
        n_cached=len(good) - done.n_extracted,
        seconds=time.perf_counter() - t0,
        extract_seconds=done.seconds,
        cache_key=cache.key,
        fingerprint=dataset_fingerprint(cache.key, good),
        cache_dir=cache.dir,
        weights_id=choice.identity,
        preprocess=pre,
        backbone=spec.name,
        engine=done.engine,
        notes=notes,
        world_size=info.world_size,
    )
