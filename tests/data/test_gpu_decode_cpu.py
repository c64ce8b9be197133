"""The nvJPEG decode path (data/gpu_decode.py), run on the CPU with torchvision's CPU decoder.

Same code as on a GPU (only `device` differs): header parsing, the CPU fallback for what nvJPEG
must not take, resize/crop geometry, and pixels within a stated tolerance of the Pillow path.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tl_cli.data.decode import iter_batches, load_crop
from tl_cli.data.gpu_decode import decode_batch, iter_gpu_batches, resize_crop_tensor
from tl_cli.data.jpeg_header import jpeg_info
from tl_cli.data.preprocess import Preprocess, normalize, normalize_tensor

PRE = Preprocess(input_size=64, resize_size=72)
# Pillow vs torchvision's decoder + torch's antialiased resize: the same libjpeg IDCT on the CPU,
# so the difference is the resize (and Pillow's draft downscale of large JPEGs), in grey levels.
MEAN_TOL, MEAN_TOL_DRAFT = 0.5, 1.0  # measured: 0.2-0.4 and 0.6


def photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth photo-like image (gradients plus blobs): noise would make resize differences huge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    chans = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    return ((np.stack(chans, -1) * 0.5 + 0.5) * 235 + 10).astype("uint8")


def save(path, a, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw)
    return path


def test_jpeg_header_says_what_nvjpeg_needs_to_know(tmp_path):
    rgb = save(tmp_path / "a.jpg", photo(50, 30), quality=90)
    info = jpeg_info(rgb.read_bytes())
    assert (info.width, info.height, info.components, info.progressive, info.orientation, info.complete) == \
        (50, 30, 3, False, 1, True)
    assert jpeg_info(save(tmp_path / "p.jpg", photo(50, 30), progressive=True).read_bytes()).progressive
    cmyk = tmp_path / "c.jpg"
    Image.fromarray(photo(20, 20)).convert("CMYK").save(cmyk)
    assert jpeg_info(cmyk.read_bytes()).components == 4
    grey = tmp_path / "g.jpg"
    Image.fromarray(photo(20, 20)[..., 0]).save(grey)
    assert jpeg_info(grey.read_bytes()).components == 1
    exif = Image.Exif()
    exif[0x0112] = 6
    rot = save(tmp_path / "r.jpg", photo(40, 20), exif=exif.tobytes())
    assert jpeg_info(rot.read_bytes()).orientation == 6
    assert not jpeg_info(rgb.read_bytes()[:-200]).complete
    assert jpeg_info(save(tmp_path / "x.png", photo(10, 10)).read_bytes()) is None
    assert jpeg_info(b"") is None and jpeg_info(b"\xff\xd8\xff") is None


@pytest.mark.parametrize("size, tol", [((100, 75), MEAN_TOL), ((75, 100), MEAN_TOL), ((64, 64), MEAN_TOL),
                                       ((500, 375), MEAN_TOL_DRAFT)])
def test_pixels_match_the_pillow_path_within_tolerance(tmp_path, size, tol):
    path = save(tmp_path / "a.jpg", photo(*size, seed=size[0]), quality=92)
    u8, kept, failed, n_cpu = decode_batch([path], PRE, "cpu")
    assert kept == [0] and failed == [] and n_cpu == 0  # decoded by the tensor path, not the fallback
    ours = u8[0].permute(1, 2, 0).numpy().astype(np.int16)
    ref = load_crop(path, PRE).astype(np.int16)
    assert ours.shape == ref.shape == (64, 64, 3)
    diff = np.abs(ours - ref)
    assert diff.mean() <= tol, diff.mean()
    assert diff.max() <= 5


def test_resize_crop_geometry_is_pillows(tmp_path):
    """A left-dark/right-bright image: a crop off-centre by one pixel would show in the column means."""
    import torch

    a = np.zeros((90, 160, 3), np.uint8)
    a[:, 80:] = 255
    ours = resize_crop_tensor(torch.from_numpy(a).permute(2, 0, 1), PRE).permute(1, 2, 0).numpy()
    from tl_cli.data.preprocess import resize_crop

    ref = np.asarray(resize_crop(Image.fromarray(a), PRE))
    np.testing.assert_allclose(ours.mean(axis=(0, 2)), ref.mean(axis=(0, 2)), atol=3)


def test_what_nvjpeg_must_not_take_goes_to_pillow_unchanged(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    files = [
        save(tmp_path / "rot.jpg", photo(80, 40), exif=exif.tobytes()),
        save(tmp_path / "plain.png", photo(80, 60)),
        tmp_path / "cmyk.jpg",
        tmp_path / "cut.jpg",
        tmp_path / "empty.jpg",
        save(tmp_path / "ok.jpg", photo(80, 60)),
    ]
    Image.fromarray(photo(80, 60)).convert("CMYK").save(files[2])
    files[3].write_bytes(files[5].read_bytes()[:300])
    files[4].write_bytes(b"")
    u8, kept, failed, n_cpu = decode_batch(files, PRE, "cpu")
    assert kept == [0, 1, 2, 5] and n_cpu == 3 and [i for i, _ in failed] == [3, 4]
    for row, j in enumerate(kept[:3]):  # the fallback is the Pillow path itself: identical pixels
        np.testing.assert_array_equal(u8[row].permute(1, 2, 0).numpy(), load_crop(files[j], PRE))
    cpu = next(iter_batches(tmp_path, [f.name for f in files], PRE, 8, 0))
    assert [(i, why) for i, why in failed] == cpu.failed  # the same reasons as extraction always gave


def test_batches_in_order_with_positions_and_normalised_like_numpy(tmp_path):
    names = []
    for i in range(7):
        save(tmp_path / f"{i}.jpg", photo(70 + i, 60, seed=i))
        names.append(f"{i}.jpg")
    (tmp_path / "3.jpg").write_bytes(b"not an image")
    batches = list(iter_gpu_batches(tmp_path, names, PRE, 3, threads=2, device="cpu"))
    assert [b.index for b in batches] == [[0, 1, 2], [4, 5], [6]]
    assert [i for b in batches for i, _ in b.failed] == [3]
    u8, _, _, _ = decode_batch([tmp_path / n for n in names[:3]], PRE, "cpu")
    np.testing.assert_array_equal(batches[0].pixels.numpy(), normalize(u8.permute(0, 2, 3, 1).numpy(), PRE))
    np.testing.assert_array_equal(normalize_tensor(u8, PRE).numpy(), batches[0].pixels.numpy())


def test_decoder_choice_and_cache_identity(monkeypatch):
    from tl_cli.backbones import get_spec
    from tl_cli.data import gpu_decode
    from tl_cli.errors import ConfigError
    from tl_cli.features.extract import ExtractConfig, choose_decoder, feature_identity, identities_for_device

    assert choose_decoder(ExtractConfig(), "cpu") == "cpu"
    with pytest.raises(ConfigError, match="--decoder gpu needs a CUDA GPU"):
        choose_decoder(ExtractConfig(decoder="gpu"), "cpu")
    monkeypatch.setattr(gpu_decode, "available", lambda: True)
    assert choose_decoder(ExtractConfig(), "cuda") == "gpu"
    assert choose_decoder(ExtractConfig(decoder="cpu"), "cuda") == "cpu"
    spec = get_spec("lenet5")
    cpu = feature_identity(spec, "w", "/d")
    assert "decoder" not in cpu and "precision" not in cpu  # existing float32 caches keep their key
    assert identities_for_device(spec, "w", "/d", "cuda") == [{**cpu, "decoder": "nvjpeg"}, cpu]
    assert identities_for_device(spec, "w", "/d", "cpu") == [cpu]
