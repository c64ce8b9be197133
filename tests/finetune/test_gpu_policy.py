"""Issue 13, defects 4, 5, 6 and 9, shown on the CPU: one precision for scoring and serving, the
probe finds a GPU-made feature cache, falls back on out of memory, and resume uses the run's device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_cli.finetune.config import FinetuneConfig
from tl_cli.runs.workspace import Workspace

CFG = dict(backbone="lenet5", pretrained=False, freeze=2, epochs=1, batch_size=8, workers=0, dropout=0.0,
           patience=0, seed=0, device="cpu")


def test_4_validation_never_runs_under_autocast(image_folder, tmp_path, monkeypatch):
    """The accuracy that picks the best epoch is float32, as predict/evaluate compute it; the run says so."""
    from tl_cli.finetune import trainer

    real = torch.autocast
    where: list[str] = []

    class Spy(real):
        def __init__(self, *a, **kw):
            import traceback

            where.append("".join(traceback.format_stack(limit=4)))
            super().__init__(*a, **kw)

    from tl_cli.runtime import device

    monkeypatch.setattr(torch, "autocast", Spy)
    monkeypatch.setattr(device, "train_precision", lambda dev: "bf16")  # as on a GPU (CPU autocast runs bf16 too)
    r = trainer.start(image_folder, FinetuneConfig(**CFG), Workspace.open(tmp_path / "ws"))
    assert any("accumulate" in w for w in where)  # training steps did run under autocast
    assert not any("validate" in w or "penultimate_features" in w for w in where)
    from tl_cli.runs.store import load_run

    assert load_run(r.run_dir).meta.precision == {"train": "bf16", "validation": "float32"}


def test_4_extraction_features_are_float32_on_every_device():
    from tl_cli.backbones import create_backbone, get_spec
    from tl_cli.features.engines import TorchEngine

    eng = TorchEngine(create_backbone("lenet5", pretrained=False)[0], torch.device("cpu"), pre=get_spec("lenet5").preprocess)
    assert eng.precision == "float32" and not eng.bf16 and not eng.takes_uint8


def _extract(folder, ws):
    from tl_cli.features.extract import ExtractConfig, extract_features

    return extract_features(folder, ExtractConfig(backbone="lenet5", pretrained=False, workers=0), ws)


def test_5_probe_on_a_gpu_reads_the_cache_tl_extract_made_there(image_folder, tmp_path, monkeypatch):
    """On CUDA `tl extract` keys its cache by the nvJPEG decoder; the probe looks there first."""
    from tl_cli.backbones import get_spec
    from tl_cli.data import gpu_decode
    from tl_cli.data.scan import scan_dataset
    from tl_cli.features.cache import FeatureCache, stat_files
    from tl_cli.features.extract import feature_identity
    from tl_cli.finetune.probe import cached_features

    ws = Workspace.open(tmp_path / "ws")
    r = _extract(image_folder, ws)
    spec, ds = get_spec("lenet5"), scan_dataset(image_folder)
    # What an extraction on a GPU would have written: the same rows under the nvJPEG identity, x2
    # so that they cannot be mistaken for the CPU ones.
    with FeatureCache(ws.caches, feature_identity(spec, r.weights_id, ds.root, "gpu")) as gpu_cache:
        gpu_cache.write_chunk(stat_files(ds.root, r.relpaths), r.features * 2)
        gpu_cache.consolidate(stat_files(ds.root, r.relpaths))
    monkeypatch.setattr(gpu_decode, "available", lambda: True)
    (xt, _), (xv, _) = cached_features(ws, ds, spec, r.weights_id, "cuda")
    by_rel = dict(zip(r.relpaths, r.features))
    train = [s.relpath for s in ds.split("train")]
    np.testing.assert_array_equal(xt, np.stack([by_rel[p] for p in train]) * 2)
    (xt_cpu, _), _ = cached_features(ws, ds, spec, r.weights_id, "cpu")
    np.testing.assert_array_equal(xt_cpu, np.stack([by_rel[p] for p in train]))
    import shutil

    shutil.rmtree(gpu_cache.dir)  # only a CPU-made cache: a GPU still uses it
    (xt, _), _ = cached_features(ws, ds, spec, r.weights_id, "cuda")
    np.testing.assert_array_equal(xt, xt_cpu)


def test_6_probe_features_survive_out_of_memory(image_folder, monkeypatch):
    from tl_cli.backbones import create_backbone, get_spec
    from tl_cli.backbones.wrapper import attach_head
    from tl_cli.data.scan import scan_dataset
    from tl_cli.finetune.probe import penultimate_features

    ds = scan_dataset(image_folder)
    torch.manual_seed(0)
    net = attach_head(create_backbone("lenet5", pretrained=False)[0], 3)
    pre = get_spec("lenet5").preprocess
    ref, yref = penultimate_features(net, ds.root, ds.samples, pre, 16, 0, torch.device("cpu"))
    real = type(net).forward
    sizes, halves = [], []

    def small_gpu(self, x):
        sizes.append(x.shape[0])
        if x.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(self, x)

    monkeypatch.setattr(type(net), "forward", small_gpu)
    got, y = penultimate_features(net, ds.root, ds.samples, pre, 16, 0, torch.device("cpu"), halves.append)
    assert halves == [8, 4] and max(sizes[3:]) <= 4
    np.testing.assert_array_equal(y, yref)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_9_resume_joins_the_process_group_for_the_runs_device(image_folder, tmp_path, monkeypatch):
    from tl_cli.finetune import trainer
    from tl_cli.runtime import distributed

    ws = Workspace.open(tmp_path / "ws")
    r = trainer.start(image_folder, FinetuneConfig(**{**CFG, "head_init": "random"}), ws)
    seen: list[str] = []

    class Stop(Exception):
        pass

    def init(device_type="auto"):
        seen.append(device_type)
        raise Stop

    monkeypatch.setattr(distributed, "init", init)
    cases = (({}, "cpu"), ({"overrides": {"device": "cuda"}}, "cuda"), ({"run_dir": tmp_path / "missing"}, "auto"))
    for kwargs, _ in cases:
        with pytest.raises(Stop):
            trainer.resume(workspace=ws, **({"run_dir": r.run_dir} | kwargs))
    assert seen == [expected for _, expected in cases] == ["cpu", "cuda", "auto"]


def test_validation_halves_its_batch_on_out_of_memory(image_folder, monkeypatch):
    """float32 validation needs more memory per image than bf16 training steps: it must not be where a run dies."""
    from tl_cli.backbones import create_backbone, get_spec
    from tl_cli.data.scan import scan_dataset
    from tl_cli.finetune.data import make_loaders
    from tl_cli.finetune.epoch import validate
    from tl_cli.finetune.model import FinetuneModel

    ds = scan_dataset(image_folder)
    torch.manual_seed(0)
    model = FinetuneModel(create_backbone("lenet5", pretrained=False)[0], 3, 2, 32, 0.0)
    loaders = make_loaders(ds, get_spec("lenet5").preprocess, 8, 0, False, 0)
    ref = validate(model, loaders.val, torch.device("cpu"))
    real = FinetuneModel.forward

    def small_gpu(self, x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(self, x)

    monkeypatch.setattr(FinetuneModel, "forward", small_gpu)
    got = validate(model, loaders.val, torch.device("cpu"))
    assert got[1] == ref[1] and got[0] == pytest.approx(ref[0], rel=1e-5)
