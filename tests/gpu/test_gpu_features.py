"""Features on the GPU: float32 against the CPU, bf16 against float32, nvJPEG against Pillow."""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers.gpu import GPU, PHOTOS, cosine_rows, lite0_weights_or_skip
from tl_cli.data.decode import iter_batches
from tl_cli.data.preprocess import normalize
from tl_cli.features.engines import TorchEngine

pytestmark = GPU


def _photo_crops(pre):
    rel = sorted(str(p.relative_to(PHOTOS)) for p in PHOTOS.rglob("*.jpg"))
    batches = list(iter_batches(PHOTOS, rel, pre, 64, 4))
    assert len(batches) == 1 and not batches[0].failed
    return rel, batches[0].pixels


def test_cuda_float32_features_match_the_cpu_and_bf16_is_close_with_the_same_predictions():
    """The precision policy: features are float32 on the GPU (cuDNN may use TF32: ~1e-3 of the
    CPU's); bf16 autocast, used only inside training steps, stays within cosine 0.99 and a head
    fitted on float32 features predicts the same classes from bf16 ones on real photos."""
    from tl_cli.backbones import get_spec
    from tl_cli.head.softmax import train_head

    net = lite0_weights_or_skip()
    pre = get_spec("efficientnet_lite0").preprocess
    rel, crops = _photo_crops(pre)
    cpu = TorchEngine(net, torch.device("cpu"))(normalize(crops, pre))
    f32 = TorchEngine(net, torch.device("cuda"), pre=pre)(crops)  # uint8 in, normalised on the GPU
    bf16 = TorchEngine(net, torch.device("cuda"), bf16=True, pre=pre)(crops)
    assert cosine_rows(f32, cpu).min() > 0.9999
    np.testing.assert_allclose(f32, cpu, atol=2e-2, rtol=2e-2)
    assert cosine_rows(bf16, f32).min() > 0.99
    labels = np.array([["cat", "coffee", "rocket"].index(r.split("/")[0]) for r in rel])
    head = train_head(f32, labels, None, None, 3)
    assert (head.logits(bf16).argmax(1) == head.logits(f32).argmax(1)).all()
    assert (head.logits(cpu).argmax(1) == head.logits(f32).argmax(1)).all()


def test_nvjpeg_features_match_the_pillow_path_within_tolerance():
    """Stated tolerance: pixels within 1.5 grey levels on average, features cosine > 0.998."""
    from tl_cli.backbones import get_spec
    from tl_cli.data.gpu_decode import iter_gpu_batches

    net = lite0_weights_or_skip()
    pre = get_spec("efficientnet_lite0").preprocess
    rel, crops = _photo_crops(pre)
    gpu = list(iter_gpu_batches(PHOTOS, rel, pre, 64, 4, torch.device("cuda")))
    assert len(gpu) == 1 and gpu[0].n_cpu_decoded == 0 and not gpu[0].failed
    ref = normalize(crops, pre)
    assert np.abs(gpu[0].pixels.cpu().numpy() - ref).mean() * 255 * np.mean(pre.std) < 1.5  # in grey levels
    engine = TorchEngine(net, torch.device("cuda"), pre=pre)
    assert cosine_rows(engine(gpu[0].pixels), engine(crops)).min() > 0.998


def test_nvjpeg_leaves_what_it_must_not_take_to_pillow(tmp_path):
    from PIL import Image

    from tl_cli.data.decode import load_crop
    from tl_cli.data.gpu_decode import decode_batch
    from tl_cli.data.preprocess import Preprocess

    pre = Preprocess(224, 256)
    src = sorted(PHOTOS.rglob("*.jpg"))[0]
    im = Image.open(src).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    files = [tmp_path / "cmyk.jpg", tmp_path / "rot.jpg", tmp_path / "x.png", tmp_path / "prog.jpg", src]
    im.convert("CMYK").save(files[0])
    im.save(files[1], exif=exif.tobytes())
    im.save(files[2])
    im.save(files[3], progressive=True)
    u8, kept, failed, n_cpu = decode_batch(files, pre, torch.device("cuda"))
    assert kept == [0, 1, 2, 3, 4] and not failed and n_cpu >= 3
    for j in (0, 1, 2):  # the Pillow path itself: identical pixels
        np.testing.assert_array_equal(u8[j].permute(1, 2, 0).cpu().numpy(), load_crop(files[j], pre))
    for j in (3, 4):  # nvJPEG (or the fallback where it refuses progressive): close to Pillow
        diff = np.abs(u8[j].permute(1, 2, 0).cpu().numpy().astype(int) - load_crop(files[j], pre).astype(int))
        assert diff.mean() < 2.0


def test_extract_on_cuda_records_the_decoder_and_reruns_from_the_cache(tmp_path):
    from tests.helpers.images import make_folder
    from tl_cli.features.extract import ExtractConfig, extract_features
    from tl_cli.runs.workspace import Workspace

    data = make_folder(tmp_path / "d", n_per_class=20)
    ws = Workspace.open(tmp_path / "ws")
    cfg = ExtractConfig(backbone="lenet5", pretrained=False, device="cuda")
    r = extract_features(data, cfg, ws)
    assert r.engine == "torch" and r.n_extracted == 60
    import json

    assert json.loads((r.cache_dir / "key.json").read_text())["decoder"] == "nvjpeg"
    again = extract_features(data, cfg, ws)
    assert again.n_extracted == 0 and again.cache_key == r.cache_key
    cpu = extract_features(data, ExtractConfig(backbone="lenet5", pretrained=False, device="cuda", decoder="cpu"), ws)
    assert cpu.cache_key != r.cache_key and cpu.n_extracted == 60
    assert cosine_rows(cpu.features, r.features).min() > 0.99
