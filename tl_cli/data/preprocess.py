"""How pixels become a backbone's input tensor.

Each backbone declares a `Preprocess`; this module is the only place that turns it into
transforms, so extraction, training, prediction and export all feed the network the same way.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tl_cli.data.scan import NOT_REGULAR, special_file
from tl_cli.errors import ConfigError, ImageError

# tl refuses images above this many pixels (checked on the header, before decoding).
# 10,000 x 10,000 is far beyond any photo worth classifying and bounds decode memory to ~300 MB.
# Pillow's own limit (Image.MAX_IMAGE_PIXELS) is process-wide, the application's to set: tl
# leaves it alone.
MAX_IMAGE_PIXELS = 100_000_000


@dataclass(frozen=True)
class Preprocess:
    """A backbone's input recipe: resize the shorter side, centre-crop, scale, normalise.

    Attributes:
        input_size: side of the square crop fed to the network, in pixels.
        resize_size: the shorter side is resized to this before the centre crop.
        mean, std: per-channel normalisation applied to pixels scaled to [0, 1].
        interpolation: "bilinear" or "bicubic".
    """

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.input_size < 8 or self.resize_size < self.input_size:
            raise ConfigError(f"bad preprocessing sizes: input {self.input_size}, resize {self.resize_size}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"unknown interpolation {self.interpolation!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _pil_interp(name: str):
    from PIL import Image

    return Image.Resampling.BICUBIC if name == "bicubic" else Image.Resampling.BILINEAR


def open_rgb(path: str | Path, draft_size: int | None = None):
    """Open an image as RGB, honouring EXIF rotation. Raises ImageError with the reason.

    `draft_size` lets the JPEG decoder downscale by 2/4/8 while decoding (much faster for large
    photos); it never goes below the requested size, so the later resize sees enough pixels.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if special_file(path):  # a FIFO or device given by name, or swapped in since the scan: never opened
        raise ImageError(f"{path}: {NOT_REGULAR}")
    try:
        with warnings.catch_warnings():
            # Pillow warns between its limit and twice it; tl's own check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_pixels(path, im.size)
                if im.format == "PNG":
                    check_png_checksums(path)
                if draft_size and im.format == "JPEG":
                    im.draft("RGB", (draft_size, draft_size))
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except Image.DecompressionBombError as exc:  # beyond Pillow's own hard limit
        raise ImageError(f"{path}: image too large (decompression bomb?): {exc}") from exc
    except UnidentifiedImageError as exc:
        # Same words as the dataset scan uses for these files.
        empty = Path(path).is_file() and Path(path).stat().st_size == 0
        raise ImageError(f"{path}: {'empty file' if empty else 'not an image (unknown content)'}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image: {exc}") from exc


def check_pixels(path: str | Path, size: tuple[int, int]) -> None:
    """Raise ImageError if an image of `size` (width, height) exceeds MAX_IMAGE_PIXELS."""
    w, h = size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: image too large (decompression bomb?): {w} x {h} = {w * h:,} pixels, "
                         f"more than tl's limit of {MAX_IMAGE_PIXELS:,}")


def check_png_checksums(path: str | Path) -> None:
    """Raise ImageError if any PNG chunk's CRC is wrong.

    Pillow does not check the CRC of image-data chunks, so flipped bits there would decode into
    silently wrong pixels; a wrong checksum is the file telling us it is corrupt.
    """
    import struct
    import zlib

    data = Path(path).read_bytes()
    pos = 8  # after the signature
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        body_end = pos + 8 + length
        if body_end + 4 > len(data):
            raise ImageError(f"{path}: cannot decode image: PNG is truncated")
        (crc,) = struct.unpack(">I", data[body_end : body_end + 4])
        if zlib.crc32(data[pos + 4 : body_end]) & 0xFFFFFFFF != crc:
            kind = data[pos + 4 : pos + 8].decode("latin-1")
            raise ImageError(f"{path}: cannot decode image: bad PNG checksum in a {kind} chunk")
        if data[pos + 4 : pos + 8] == b"IEND":
            return
        pos = body_end + 4


def _to_rgb(im):
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything to white.
        import numpy as np

        a = np.asarray(im, dtype=np.float32)
        hi = a.max() if a.size and a.max() > 255 else 255.0
        im = Image.fromarray((a * (255.0 / hi)).clip(0, 255).astype("uint8"), "L")
    if im.mode in ("P", "LA", "PA") or (im.mode == "RGBA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    im.load()
    return im


def crop_geometry(w: int, h: int, pre: Preprocess) -> tuple[int, int, int, int]:
    """(new width, new height, left, top): the shorter side resized to `resize_size` (rounded, never
    below `input_size`), then the centre `input_size` square. The CPU and GPU decoders both use it,
    so their pixels come from the same places."""
    scale = pre.resize_size / min(w, h)
    nw, nh = max(pre.input_size, round(w * scale)), max(pre.input_size, round(h * scale))
    return nw, nh, (nw - pre.input_size) // 2, (nh - pre.input_size) // 2


def resize_crop(im, pre: Preprocess):
    """Resize the shorter side to `resize_size`, then centre-crop `input_size` (PIL in, PIL out)."""
    nw, nh, left, top = crop_geometry(*im.size, pre)
    im = im.resize((nw, nh), _pil_interp(pre.interpolation), reducing_gap=None)
    return im.crop((left, top, left + pre.input_size, top + pre.input_size))


@functools.lru_cache(maxsize=16)
def _lut(mean: tuple[float, ...], std: tuple[float, ...]):
    """(3, 256) float32: channel c's network input for each uint8 value v, computed with the float32
    operations (v / 255 - mean) / std in that order."""
    import numpy as np

    x = np.broadcast_to(np.arange(256, dtype=np.float32), (3, 256)).copy()
    x /= np.float32(255.0)
    x -= np.asarray(mean, dtype=np.float32)[:, None]
    x /= np.asarray(std, dtype=np.float32)[:, None]
    return x


def normalize(u8, pre: Preprocess):
    """uint8 RGB crops (..., S, S, 3) -> float32 network input (..., 3, S, S), numpy: one image or a batch.

    The one definition of the normalisation: (v / 255 - mean) / std, each step in float32, in this
    order. A uint8 has 256 values, so each channel's result is looked up in a table computed with
    those operations: exactly their values, and cheaper than computing them per pixel
    (benchmarks/README.md). `to_tensor` uses this; `normalize_tensor` (the same operations on a
    torch device) is bit-identical to it. numpy releases the GIL in the lookup, so decode threads
    can run it beside the network.
    """
    import numpy as np

    lut = _lut(tuple(pre.mean), tuple(pre.std))
    u8 = np.asarray(u8)
    return np.stack([lut[c][u8[..., c]] for c in range(3)], axis=-3)


def normalize_tensor(u8, pre: Preprocess):
    """(N, 3, S, S) uint8 torch tensor -> float32 network input on its device, bit-identical to `normalize`."""
    import torch

    dev = u8.device
    x = u8.float()
    # Device tensors, not Python numbers: CUDA divides by a host scalar as a multiply by its
    # reciprocal, which can differ from numpy's division in the last bit.
    x /= torch.tensor(255.0, device=dev)
    x -= torch.tensor(pre.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    x /= torch.tensor(pre.std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    return x


def to_tensor(im, pre: Preprocess):
    """PIL RGB image -> normalised float32 CHW tensor (`normalize`)."""
    import numpy as np
    import torch

    return torch.from_numpy(normalize(np.asarray(im, dtype=np.uint8), pre))


def load_tensor(path: str | Path, pre: Preprocess):
    """Read one image file and return the network input for it (float32, 3 x S x S)."""
    return to_tensor(resize_crop(open_rgb(path, draft_size=pre.resize_size), pre), pre)


def train_transform(pre: Preprocess, augment: bool = True):
    """Transform for training images: random resized crop + flip when `augment`, else eval.

    Returns a callable PIL image -> tensor.
    """
    if not augment:
        return lambda im: to_tensor(resize_crop(im, pre), pre)
    from torchvision.transforms import v2

    aug = v2.Compose(
        [
            v2.RandomResizedCrop(pre.input_size, scale=(0.35, 1.0), interpolation=_tv_interp(pre.interpolation), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    )
    return lambda im: to_tensor(aug(im), pre)


def _tv_interp(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode.BICUBIC if name == "bicubic" else InterpolationMode.BILINEAR


def eval_transform(pre: Preprocess):
    """Transform for validation, extraction and prediction: PIL image -> tensor."""
    return lambda im: to_tensor(resize_crop(im, pre), pre)


def thumbnail_uri(path: str | Path, size: int = 160) -> str | None:
    """A small JPEG of the image as a `data:` URI for self-contained HTML reports, or None if it
    cannot be read (the report then says so instead of failing)."""
    import base64
    import io

    try:
        im = open_rgb(path, draft_size=size)
    except ImageError:
        return None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
