"""Extraction into the content-addressed cache: hits, invalidation, and equality with eager PyTorch."""

from __future__ import annotations

import os

import numpy as np
import torch

from tests.helpers.images import write_image
from tl_cli.backbones import create_backbone, get_spec
from tl_cli.data.preprocess import Preprocess, load_tensor
from tl_cli.features.extract import ExtractConfig, extract_features
from tl_cli.head.small_data import train_small_data
from tl_cli.runs.workspace import Workspace

LENET = ExtractConfig(backbone="lenet5", pretrained=False, workers=0, batch_size=8)


def test_features_equal_eager_pytorch(image_folder):
    r = extract_features(image_folder, LENET)
    net, _ = create_backbone("lenet5", pretrained=False)
    pre = get_spec("lenet5").preprocess
    x = torch.stack([load_tensor(image_folder / rel, pre) for rel in r.relpaths[:10]])
    with torch.no_grad():
        ref = net.forward_features(x).numpy()
    np.testing.assert_allclose(r.features[:10], ref, rtol=1e-5, atol=1e-5)


def test_rerun_takes_everything_from_cache(image_folder, monkeypatch):
    first = extract_features(image_folder, LENET)
    assert first.n_extracted == 36 and first.n_cached == 0

    import tl_cli.features.extract as ex

    def forbidden(*a, **k):
        raise AssertionError("the backbone must not run on a cached dataset")

    monkeypatch.setattr(ex, "iter_decoded", forbidden)
    again = extract_features(image_folder, LENET)
    assert again.n_extracted == 0 and again.n_cached == 36
    np.testing.assert_array_equal(first.features, again.features)
    assert again.fingerprint == first.fingerprint


def test_only_new_and_changed_images_are_extracted(image_folder):
    first = extract_features(image_folder, LENET)
    write_image(image_folder / "red" / "added.jpg", (230, 30, 30), seed=99)
    changed = image_folder / "blue" / "blue_000.jpg"
    write_image(changed, (0, 0, 255), seed=123)
    os.utime(changed, ns=(1, 1_000_000_000))  # a new mtime even on coarse filesystems
    r = extract_features(image_folder, LENET)
    assert r.n_extracted == 2 and r.n_cached == 35
    assert r.fingerprint != first.fingerprint
    row = r.relpaths.index("blue/blue_000.jpg")
    old = first.relpaths.index("blue/blue_000.jpg")
    assert not np.array_equal(r.features[row], first.features[old])


def test_removed_images_leave_the_cache(image_folder):
    extract_features(image_folder, LENET)
    (image_folder / "red" / "red_000.jpg").unlink()
    r = extract_features(image_folder, LENET)
    assert "red/red_000.jpg" not in r.relpaths and r.n_extracted == 0 and len(r.relpaths) == 35


def test_other_backbone_or_preprocessing_makes_a_new_cache(image_folder, monkeypatch):
    a = extract_features(image_folder, LENET)
    b = extract_features(image_folder, ExtractConfig(backbone="resnet18", pretrained=False, workers=0))
    assert a.cache_key != b.cache_key and b.n_extracted == 36
    import dataclasses

    spec = get_spec("lenet5")
    from tl_cli.backbones import registry

    patched = dataclasses.replace(spec, preprocess=dataclasses.replace(spec.preprocess, resize_size=40))
    monkeypatch.setitem(registry._REGISTRY, "lenet5", patched)
    c = extract_features(image_folder, LENET)
    assert c.cache_key != a.cache_key and c.n_extracted == 36


def test_cache_lives_in_workspace_not_in_data(image_folder, isolated_workspace):
    before = sorted(p.name for p in image_folder.rglob("*"))
    extract_features(image_folder, LENET)
    assert sorted(p.name for p in image_folder.rglob("*")) == before
    assert list((isolated_workspace / "caches").glob("*/features.h5"))


def test_small_data_route_saves_a_complete_run(image_folder, isolated_workspace):
    res = train_small_data(image_folder, LENET)
    meta = (res.run_dir / "meta.json").read_text()
    import json

    m = json.loads(meta)
    assert m["classes"] == ["blue", "green", "red"] and m["backbone"] == "lenet5"
    assert Preprocess.from_dict(m["preprocess"]) == get_spec("lenet5").preprocess
    assert m["dataset"]["fingerprint"] == res.extract.fingerprint
    assert m["metrics"]["val_accuracy"] == res.head.val_accuracy
    assert "torch" in m["versions"]
    assert Workspace.open().latest_run() == res.run_dir
    assert not list(res.run_dir.glob(".tmp-*"))
