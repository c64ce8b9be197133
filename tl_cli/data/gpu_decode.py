"""Decoding JPEGs on the GPU (nvJPEG), resized and cropped there, in batches.

On a GPU, Pillow decoding on the CPU is what limits `tl extract` (the network needs a fraction
of the time). Here the CPU only reads the files and parses their headers; nvJPEG decodes a whole
batch at once (`torchvision.io.decode_jpeg(list, device="cuda")`) and the resize, centre crop
and normalisation run on the GPU as tensors. Whatever nvJPEG may not or cannot take goes to the
CPU path (`decode.load_crop`, Pillow) file by file: non-JPEG files (PNG, ...), CMYK/YCCK JPEGs,
EXIF-rotated ones (torchvision applies EXIF orientation on the CPU only), files cut short or
claiming more than MAX_IMAGE_PIXELS, and any file nvJPEG refuses (progressive on some versions).
So every readable image gets features and every unreadable one the same error as on the CPU.

The pixels differ slightly from Pillow's (another IDCT; no `draft` DCT-domain downscaling;
torch's antialiased resize), by about one grey level on average: features differ beyond float32
rounding, so the feature cache records the decoder (`DECODER`) and keeps these apart.

The same code runs with device="cpu" (torchvision's CPU decoder): that is how it is tested on a
machine without a GPU.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tl_cli.data.decode import Batch, _try_crop
from tl_cli.data.jpeg_header import jpeg_info
from tl_cli.data.preprocess import MAX_IMAGE_PIXELS, Preprocess, crop_geometry, normalize_tensor
from tl_cli.data.scan import special_file

DECODER = "nvjpeg"  # what the feature cache records for features made from these pixels


def available() -> bool:
    """True when torchvision can decode JPEGs on CUDA here (a CUDA build with nvJPEG, a GPU)."""
    try:
        import torch
        import torchvision.io  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() and hasattr(torch.ops.image, "decode_jpegs_cuda")


def _read(path: Path, pre: Preprocess):
    """("jpeg", uint8 byte tensor) for nvJPEG, else ("crop", (S, S, 3) uint8) or ("error", reason) from Pillow."""
    import torch

    try:
        # Not a FIFO or device (reading one could wait or run forever): Pillow's path says why.
        data = b"" if special_file(path) else path.read_bytes()
    except OSError:
        data = b""  # the CPU path gives the same error message as extraction always has
    info = jpeg_info(data)
    if (info is None or info.components not in (1, 3) or info.orientation != 1 or not info.complete
            or info.width * info.height > MAX_IMAGE_PIXELS or min(info.width, info.height) < 1):
        crop = _try_crop(path, pre)
        return ("error", crop) if isinstance(crop, str) else ("crop", crop)
    return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)


def resize_crop_tensor(img, pre: Preprocess):
    """(3, H, W) uint8 tensor -> (3, S, S) uint8: `preprocess.resize_crop` done with torch.

    Same geometry as the Pillow path (shorter side to resize_size, rounded; centre crop), an
    antialiased resize like Pillow's (bicubic with a = -0.5, as Pillow), rounded back to uint8.
    """
    import torch
    import torch.nn.functional as F

    h, w = int(img.shape[-2]), int(img.shape[-1])
    nw, nh, left, top = crop_geometry(w, h, pre)
    x = img.unsqueeze(0).float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode=pre.interpolation, antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x[0, :, top:top + pre.input_size, left:left + pre.input_size].to(torch.uint8)


def _decode(datas: list, device) -> list:
    """nvJPEG over a list of byte tensors, one call for all; per file after a failure (None = refused)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 warns that its decoders are deprecated
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # nvJPEG returns nothing if any file fails: find which ones
            out = []
            for d in datas:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def decode_batch(paths: list[Path], pre: Preprocess, device, pool: ThreadPoolExecutor | None = None):
    """Decode, resize and crop files on `device`: ((n, 3, S, S) uint8 tensor or None, kept positions,
    [(position, reason)] failures, number decoded by the CPU fallback)."""
    import torch

    run = pool.map if pool is not None else map
    items = list(run(lambda p: _read(p, pre), paths))
    jpegs = [j for j, (kind, _) in enumerate(items) if kind == "jpeg"]
    decoded = dict(zip(jpegs, _decode([items[j][1] for j in jpegs], device))) if jpegs else {}
    refused = [j for j in jpegs if decoded[j] is None]
    for j, crop in zip(refused, run(lambda j: _try_crop(paths[j], pre), refused)):
        items[j] = ("error", crop) if isinstance(crop, str) else ("crop", crop)
    crops, kept, failed, n_cpu = [], [], [], 0
    for j, (kind, value) in enumerate(items):
        if kind == "error":
            failed.append((j, value))
            continue
        if kind == "jpeg":
            crops.append(resize_crop_tensor(decoded[j], pre))
        else:
            crops.append(torch.from_numpy(np.array(value, copy=True)).permute(2, 0, 1).to(device))
            n_cpu += 1
        kept.append(j)
    return (torch.stack(crops) if crops else None), kept, failed, n_cpu


def iter_gpu_batches(root: Path, relpaths: list[str], pre: Preprocess, batch_size: int, threads: int,
                     device, prefetch: int = 2) -> Iterator[Batch]:
    """Like `decode.iter_batches(..., normalize=True)`, decoded on `device`: pixels are a float32
    (n, 3, S, S) tensor on the device. Files are read (and CPU fallbacks decoded) by `threads`
    threads; one stage thread runs nvJPEG, up to `prefetch` batches ahead of the consumer."""
    root = Path(root)
    starts = list(range(0, len(relpaths), batch_size))

    def prepare(s: int) -> Batch:
        if getattr(device, "type", str(device)) == "cuda":
            import torch

            torch.cuda.set_device(device)  # the current device is per thread: this one's too
        paths = [root / r for r in relpaths[s:s + batch_size]]
        u8, kept, failed, n_cpu = decode_batch(paths, pre, device, pool)
        pixels = normalize_tensor(u8, pre) if u8 is not None else None
        return Batch(pixels, [s + j for j in kept], [(s + j, why) for j, why in failed], n_cpu)

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="tl-read") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="tl-nvjpeg") as stage:
        pending: deque = deque(stage.submit(prepare, s) for s in starts[:prefetch + 1])
        nxt = prefetch + 1
        try:
            while pending:
                fut = pending.popleft()
                if nxt < len(starts):
                    pending.append(stage.submit(prepare, starts[nxt]))
                    nxt += 1
                yield fut.result()
        finally:
            for f in pending:
                f.cancel()
