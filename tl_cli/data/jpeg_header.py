"""Read what a JPEG's headers say (size, colour components, EXIF orientation) without decoding it.

The GPU decoder (nvJPEG) takes only plain JPEGs: this decides, from the bytes alone, which files
it may have and which go to the CPU path (Pillow), which handles everything else exactly as
extraction always has (CMYK, EXIF rotation, truncated files, PNG, ...).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Start-of-frame markers: baseline, extended, progressive, lossless (Huffman); arithmetic ones too.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    components: int  # 1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK
    progressive: bool
    orientation: int  # EXIF orientation, 1 = upright (also when absent)
    complete: bool  # the data ends with the end-of-image marker (not cut short)


def _exif_orientation(app1: bytes) -> int:
    """Orientation tag (0x0112) of an APP1 Exif segment's first IFD; 1 when absent or unreadable."""
    if not app1.startswith(b"Exif\0\0") or len(app1) < 14:
        return 1
    tiff = app1[6:]
    endian = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if endian is None:
        return 1
    try:
        (ifd,) = struct.unpack(endian + "I", tiff[4:8])
        (n,) = struct.unpack(endian + "H", tiff[ifd:ifd + 2])
        for k in range(n):
            entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
            tag, kind, _count = struct.unpack(endian + "HHI", entry[:8])
            if tag == 0x0112:
                (value,) = struct.unpack(endian + "H", entry[8:10]) if kind == 3 else (1,)
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def jpeg_info(data: bytes) -> JpegInfo | None:
    """The frame header of a JPEG file's bytes, or None if they are not a JPEG we can parse.

    Example:
        >>> jpeg_info(open("cat.jpg", "rb").read())
        JpegInfo(width=500, height=375, components=3, progressive=False, orientation=1, complete=True)
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    pos, orientation = 2, 1
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2: pos + 4])
        segment = data[pos + 4: pos + 2 + length]
        if marker == 0xE1:
            orientation = _exif_orientation(segment)
        elif marker in _SOF:
            if len(segment) < 6:
                return None
            height, width = struct.unpack(">HH", segment[1:5])
            tail = data[-64:].rstrip(b"\0\n\r ")
            return JpegInfo(width, height, segment[5], marker in (0xC2, 0xC6, 0xCA, 0xCE), orientation,
                            tail.endswith(b"\xff\xd9"))
        elif marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        pos += 2 + length
    return None
