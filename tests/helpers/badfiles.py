"""Writers for the odd and broken files users' folders contain, and a tree hash to prove tl never
changes them. Each writer takes the destination path and returns it."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _noise(size=(40, 32), rgb=(200, 40, 40), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.array(rgb)[None, None, :] + rng.normal(0, 25, (size[1], size[0], 3))
    return np.clip(a, 0, 255).astype("uint8")


def _jpeg_bytes(seed=0, size=(40, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(size, seed=seed)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_bytes(seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(seed=seed)).save(buf, "PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- broken: skipped with a reason --------------------------------------------------------------
def zero_byte_jpg(path: Path) -> Path:
    return _write(path, b"")


def text_named_png(path: Path) -> Path:
    return _write(path, b"this is a text file, not a picture\n")


def truncated_jpeg(path: Path) -> Path:
    data = _jpeg_bytes(seed=1, size=(64, 48))
    return _write(path, data[: len(data) // 2])


def png_bad_crc(path: Path) -> Path:
    """A PNG whose first IDAT chunk has a wrong checksum."""
    data = bytearray(_png_bytes(seed=2))
    i = data.index(b"IDAT")
    length = struct.unpack(">I", data[i - 4 : i])[0]
    crc_at = i + 4 + length
    data[crc_at : crc_at + 4] = bytes(b ^ 0xFF for b in data[crc_at : crc_at + 4])
    return _write(path, bytes(data))


def decompression_bomb(path: Path, side: int = 60_000) -> Path:
    """A tiny valid PNG whose header claims side x side pixels (Pillow refuses before decoding)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = zlib.compress(b"\0" * 64)  # far too little data; never reached
    return _write(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# -- odd but valid: converted, not skipped ----------------------------------------------------
def grayscale(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise(seed=3)[..., 0], "L").save(path)
    return path


def palette(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise(seed=4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path, "PNG")
    return path


def cmyk_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise(seed=5)).convert("CMYK").save(path, "JPEG", quality=95)
    return path


def png16(path: Path) -> Path:
    """A 16-bit greyscale PNG using the full 0..65535 range."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = (_noise(seed=6)[..., 0].astype(np.uint16) * 257)
    im = Image.fromarray(a)
    assert im.mode.startswith("I;16")
    im.save(path, "PNG")
    return path


def transparent(path: Path) -> Path:
    """RGBA: left half opaque blue, right half fully transparent (shows as white)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((32, 40, 4), dtype=np.uint8)
    a[:, :20] = (20, 20, 230, 255)
    a[:, 20:] = (0, 0, 0, 0)
    Image.fromarray(a, "RGBA").save(path, "PNG")
    return path


def exif_rotated(path: Path) -> Path:
    """Stored landscape (red left half, blue right half) with EXIF orientation 6 (rotate 90 CW to view).

    Viewed upright it is portrait with red on top and blue at the bottom.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((32, 48, 3), dtype=np.uint8)
    a[:, :24] = (230, 20, 20)
    a[:, 24:] = (20, 20, 230)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def ds_store(path: Path) -> Path:
    return _write(path, b"\x00\x00\x00\x01Bud1\x00\x00\x10\x00")


# -- the proof that user files are untouched -------------------------------------------------
def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: content sha256 + mtime + mode, 'link -> target' or 'dir'} for everything under `root`."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow links: sees them as entries
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "link -> " + os.readlink(p)
            elif p.is_file():
                st = p.stat()
                out[rel] = f"{hashlib.sha256(p.read_bytes()).hexdigest()} {st.st_mtime_ns} {oct(st.st_mode)}"
            else:
                out[rel] = "dir"
    return out
