"""A PNG writer in numpy and zlib: the board draws its evidence pictures without matplotlib or Pillow.

A PNG is a signature and chunks (length, type, data, CRC-32): IHDR (size, 8-bit RGB), one IDAT (the zlib-compressed
rows, each led by filter byte 0) and IEND. `read_png_rgb` reads back exactly that subset, for checks and tests.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB8 = (8, 2, 0, 0, 0)  # bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of an (height, width, 3) uint8 image."""
    image = np.asarray(rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape[:2]:
        raise ValueError(f"expected a non-empty (height, width, 3) uint8 image, not {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, width * 3)], axis=1)
    return b"".join([SIGNATURE, _chunk(b"IHDR", struct.pack(">II5B", width, height, *_RGB8)),
                     _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)), _chunk(b"IEND", b"")])


def read_png_rgb(data: bytes) -> np.ndarray:
    """The (height, width, 3) uint8 image of a PNG written by `encode_png` (8-bit RGB, filter 0 on every row);
    ValueError names what is not as written."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG (no signature)")
    position = len(SIGNATURE)
    chunks: dict[bytes, bytes] = {}
    while position + 12 <= len(data):
        (length,) = struct.unpack(">I", data[position: position + 4])
        kind, body = data[position + 4: position + 8], data[position + 8: position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length: position + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"PNG chunk {kind!r}: CRC mismatch")
        chunks[kind] = chunks.get(kind, b"") + body
        position += 12 + length
    if b"IHDR" not in chunks or b"IEND" not in chunks:
        raise ValueError("PNG lacks IHDR or IEND")
    width, height, *mode = struct.unpack(">II5B", chunks[b"IHDR"])
    if tuple(mode) != _RGB8:
        raise ValueError(f"PNG mode {mode} is not 8-bit RGB")
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    if np.any(rows[:, 0]):
        raise ValueError("PNG rows use filters other than 0")
    return rows[:, 1:].reshape(height, width, 3).copy()
