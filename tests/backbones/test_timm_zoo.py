"""`--backbone timm/<name>` end to end with timm's tiny `test_*` models.

Weights come through the real huggingface_hub client from a Hub look-alike on 127.0.0.1
(`HF_ENDPOINT`, tests/helpers/hub_server.py), not timm's local-file override: the files are the
models' seeded random initialisations saved as safetensors by the test. Nothing touches the
network; the Hub cache is a temporary folder (HF_HOME).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from typer.testing import CliRunner

from tests.helpers.hub_server import serve_hub, timm_weights_bytes
from tl_cli.backbones import create_backbone, get_spec
from tl_cli.cli import app
from tl_cli.errors import UnknownBackbone, WeightsNotFound
from tl_cli.runs.store import load_run
from tl_cli.runs.workspace import Workspace

runner = CliRunner()
VIT = "timm/test_vit.r160_in1k"
RESNET = "timm/test_resnet.r160_in1k"
FAST = ["--workers", "0", "--batch-size", "8"]


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def hub_files() -> dict[str, bytes]:
    return {f"{n}/model.safetensors": timm_weights_bytes(n.split("/")[1].split(".")[0]) for n in (VIT, RESNET)}


@pytest.fixture
def hub(hub_files, tmp_path, monkeypatch):
    """HF_ENDPOINT -> the loopback Hub, an empty Hub cache, online."""
    for var in ("HF_HUB_OFFLINE", "TL_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with serve_hub(hub_files) as (url, seen):
        monkeypatch.setenv("HF_ENDPOINT", url)
        yield seen


def _served(hub_files, name) -> dict[str, torch.Tensor]:
    return load_safetensors(hub_files[f"{name}/model.safetensors"])


def test_spec_from_timm_pretrained_config_matches_timm_eval_transform(tmp_path):
    """The Preprocess made from the pretrained config gives timm's own eval tensors on a real image."""
    import timm
    from PIL import Image

    from tests.helpers.images import write_image
    from tl_cli.data.preprocess import load_tensor

    spec = get_spec(VIT)
    assert (spec.family, spec.feature_dim, spec.preprocess.input_size) == ("timm", 64, 160)
    assert spec.preprocess.resize_size == 168  # floor(160 / 0.95)
    path = write_image(tmp_path / "a.png", (200, 30, 90), size=(301, 217))
    for name in (VIT, RESNET):
        model = timm.create_model(name[5:], pretrained=False)
        cfg = timm.data.resolve_data_config({}, model=model)
        ref = timm.data.create_transform(**cfg)(Image.open(path).convert("RGB"))
        got = load_tensor(path, get_spec(name).preprocess)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=2e-2), (got - ref).abs().max()
        assert (got - ref).abs().mean() < 2e-3


def test_names_validated_with_close_matches():
    with pytest.raises(UnknownBackbone) as e:
        get_spec("timm/test_vit.r160_in1kk")
    assert "timm/test_vit.r160_in1k" in e.value.hint
    for bad in ("timm/../etc/passwd", "timm/Test_Vit", "timm/a/b", "timm/"):
        with pytest.raises(UnknownBackbone):
            get_spec(bad)
    assert get_spec("timm/test_vit").name == VIT  # no tag: timm's default one


def test_vit_layers_patch_embed_attention_mlp_head_every_parameter_once():
    from tl_cli.backbones.describe import meta_backbone
    from tl_cli.backbones.layers import enumerate_layers

    spec = get_spec(VIT)
    net = meta_backbone(spec)
    layers = enumerate_layers(net, 160)
    names = [la.name for la in layers]
    assert names[0] == "net.patch_embed.proj" and names[-1] == "classifier"
    per_block = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
    n_blocks = len(net.net.blocks)
    assert names[1:-1] == [f"net.blocks.{b}.{p}" for b in range(n_blocks) for p in per_block]
    assert layers[0].extra_params == ("net.cls_token", "net.pos_embed")
    assert sum(la.params for la in layers) == sum(p.numel() for p in net.parameters())


def test_download_through_hf_endpoint_and_features_are_timm_pre_logits(hub, hub_files, tmp_path):
    import timm

    net, choice = create_backbone(VIT)
    assert choice.pretrained and str(choice.path).startswith(str(tmp_path / "hf"))
    assert any(s.startswith("GET /timm/test_vit.r160_in1k/resolve/") for s in hub)
    ref = timm.create_model("test_vit.r160_in1k", pretrained=False)
    ref.load_state_dict(_served(hub_files, VIT))
    ref.eval()
    x = torch.randn(3, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(net.forward_features(x), ref.forward_head(ref.forward_features(x), pre_logits=True))
        assert torch.allclose(net(x), ref(x), atol=1e-6)
    # Cached now: offline finds it without the server.
    hub.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_OFFLINE", "1")
        assert create_backbone(VIT)[1].path == choice.path
    assert hub == []


@pytest.mark.parametrize("var", ["TL_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_with_nothing_cached_is_one_line_naming_the_file(hub, image_folder, monkeypatch, var):
    monkeypatch.setenv(var, "1")
    r = tl("extract", image_folder, "--backbone", RESNET, *FAST)
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    assert "timm/test_resnet.r160_in1k/model.safetensors" in r.output and f"{var}=1" in r.output
    assert f"unset {var})" in " ".join(r.output.split())
    assert hub == []  # never touched the network


def test_missing_on_the_endpoint_is_named(hub, monkeypatch):
    with pytest.raises(WeightsNotFound, match="HTTP 404"):
        create_backbone("timm/test_efficientnet.r160_in1k")


def test_backbones_timm_lists_pretrained_names():
    r = tl("backbones", "--timm", "test_vit*")
    assert r.exit_code == 0, r.output
    assert {"timm/test_vit.r160_in1k", "timm/test_vit2.r160_in1k"} <= set(r.stdout.split())


def test_extract_onnx_parity_predict_export_info(hub, image_folder):
    """extract on the ONNX engine (features equal eager float32 ones), then predict, export, info."""
    from tl_cli.features.engines import OnnxEngine

    r = tl("extract", image_folder, "--backbone", VIT, "--engine", "onnx", *FAST)
    assert r.exit_code == 0, r.output
    run_dir = Path(Workspace.open().latest_run())
    run = load_run(run_dir)
    assert run.meta.backbone == VIT and run.meta.preprocess == get_spec(VIT).preprocess

    import os

    roots = [Workspace.open().root] + ([Path(os.environ["TL_CACHE_DIR"])] if os.environ.get("TL_CACHE_DIR") else [])
    onnx_files = [f for root in roots for f in Path(root).rglob("timm--test_vit.r160_in1k-*.onnx")]
    assert len(onnx_files) == 1, roots
    net, _ = create_backbone(VIT)
    x = torch.randn(5, 3, 160, 160)
    with torch.no_grad():
        ref = net.forward_features(x).numpy()
    got = OnnxEngine(onnx_files[0], threads=1)(x.numpy())  # the exported graph against eager float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)

    files = sorted((image_folder / "red").glob("*.jpg"))[:3]
    r = tl("predict", *files, "--format", "json", "--topk", "3")
    assert r.exit_code == 0, r.output
    from_run = json.loads(r.stdout)
    out = run_dir / "clf.onnx"
    r = tl("export", "--format", "onnx", "-o", out)  # refused unless it matches eager PyTorch
    assert r.exit_code == 0, r.output
    r = tl("predict", *files, "--format", "json", "--topk", "3", "--model", out)
    assert r.exit_code == 0, r.output
    for a, b in zip(from_run, json.loads(r.stdout)):  # run (engine + head) and whole-model export agree
        assert a["labels"] == b["labels"]
        np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)
    r = tl("info")
    assert r.exit_code == 0 and VIT in r.output


def test_finetune_freeze_keeps_frozen_layers_bit_identical(hub, hub_files, image_folder):
    """`--freeze 5` on a ViT: patch embedding, tokens and block 0 stay the served weights, the rest moves."""
    r = tl("finetune", image_folder, "--backbone", VIT, "--freeze", "5", "--epochs", "1", "--head-init", "random",
           "--lr", "1e-2", *FAST)
    assert r.exit_code == 0, r.output
    run = load_run(Path(Workspace.open().latest_run()))
    assert run.meta.freeze == 5
    got = run.tensors()
    served = _served(hub_files, VIT)
    frozen = ["patch_embed.", "cls_token", "pos_embed", "blocks.0."]
    for k, v in served.items():
        if k.startswith("head."):
            continue
        if k.startswith(tuple(frozen)):
            assert torch.equal(got["net." + k], v), k
    assert not torch.equal(got["net.blocks.1.attn.qkv.weight"], served["blocks.1.attn.qkv.weight"])
    assert not torch.equal(got["net.norm.weight"], served["norm.weight"])


def test_resnet_extract_and_layers_cli(hub, image_folder):
    r = tl("layers", "--backbone", RESNET, "--freeze", "3")
    assert r.exit_code == 0, r.output
    r = tl("extract", image_folder, "--backbone", RESNET, *FAST)
    assert r.exit_code == 0, r.output


def test_retrain_then_evaluate_reproduces_the_runs_validation_accuracy(hub, image_folder):
    """`tl retrain` with a timm backbone (every layer trained), then `tl evaluate --split val` scores
    the same images as training's validation and gets the accuracy the run recorded."""
    r = tl("retrain", image_folder, "--backbone", VIT, "--epochs", "1", *FAST)
    assert r.exit_code == 0, r.output
    run = load_run(Path(Workspace.open().latest_run()))
    assert run.meta.route == "retrain" and run.meta.backbone == VIT and run.meta.freeze == 0
    r = tl("evaluate", image_folder, "--split", "val", "--format", "json", "--workers", "0")
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    assert metrics["accuracy"] == pytest.approx(run.meta.metrics["val_accuracy"], abs=1e-9)


def test_an_unreachable_hub_is_one_note_and_one_error_line(image_folder, tmp_path, monkeypatch, capfd):
    """huggingface_hub retries a refused connection five times, logging two lines each time: tl says
    it once. (Its back-off sleeps are skipped here; they take ~25 s for real.)"""
    import time

    from huggingface_hub.utils import _http

    from tests.helpers.torchrun import free_port

    class NoSleep:
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(_seconds):
            pass

    for var in ("HF_HUB_OFFLINE", "TL_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setattr(_http, "time", NoSleep())
    r = tl("extract", image_folder, "--backbone", RESNET, *FAST)
    assert r.exit_code == 2, r.output
    said = " ".join((r.output + capfd.readouterr().err).split())
    assert said.count("the Hugging Face Hub did not answer for timm/test_resnet.r160_in1k") == 1, said
    assert "Retrying in" not in said and "thrown while requesting" not in said and "Traceback" not in said
    assert "the Hub is unreachable" in said and "check the network (or HF_ENDPOINT)" in said and "unset" not in said


def test_a_headless_model_counts_its_new_head_last_like_the_others():
    """DINOv2-style weights have no classifier (num_classes=0): the layer table still ends with the
    head tl adds, so `tl layers`, `--freeze N` and the fine-tuned model agree with other backbones."""
    import timm

    from tl_cli.backbones.layers import enumerate_layers
    from tl_cli.backbones.timm_zoo import TimmBackbone
    from tl_cli.backbones.wrapper import attach_head

    with_head = TimmBackbone(timm.create_model("test_vit", pretrained=False), "head")
    headless = TimmBackbone(timm.create_model("test_vit", pretrained=False, num_classes=0), "head")
    table = enumerate_layers(headless, 160)
    assert [x.name for x in table] == [x.name for x in enumerate_layers(with_head, 160)]
    assert table[-1].name == "classifier" and table[-2].name == "net.blocks.5.mlp.fc2"
    state = timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict()  # no head.* keys
    headless.load_original_state_dict(state)
    assert all(torch.equal(headless.net.state_dict()[k], v) for k, v in state.items())
    tuned = attach_head(headless, 3)
    assert len(enumerate_layers(tuned, 160)) == len(table)  # the new head takes the placeholder's place
