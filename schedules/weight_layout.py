"""Layouts of lut_mpgemm's packed weights, uint8 [bits, n, k / 8] in either (packed offline, once).

- `planes` (the op's default): bit planes, bit j % 8 of byte j // 8 of row c in plane b is bit b
  of q[c, j] (schedules/lut.py `pack_bitplanes` + `pack_bytes`), what the LUT kernels look up.
- `fields`: the fp16-pair layout of the tensor-core dequant GEMV (schedules/dequant_gemv_mma.py).
  Each 32-column chunk of a row is `bits` little-endian 32-bit words, word e stored in slice e
  (the planes' place: the kernels' loads, TMA boxes and rings do not change). In word e, column
  16 s + F e + f of the chunk (F = 16 / bits fields per 16-bit half, s the half) is the bits-wide
  field at bit 16 s + bits f. So word e's field f of the low and of the high half are the A pair
  of columns (h, h + 16), h = F e + f, and ((word >> shift) & (mask << pos)) | 0x64006400 is the
  fp16 pair (1024 + 2^pos q_h, 1024 + 2^pos q_(h+16)) with no field assembly. Widths that divide
  16 only: W1, W2, W4 (3-bit fields would straddle the halves of a pair).
"""
from __future__ import annotations

import numpy as np

from . import lut

LAYOUTS = ("planes", "fields")
FIELD_BITS = (1, 2, 4)
CHUNK = 32              # columns per group of `bits` words
HALF = 16               # bits per fp16 half (columns per half of a chunk)


def fields_per_half(bits: int) -> int:
    return HALF // bits


def field_place(col, bits: int):
    """(slice e, bit position) of column `col` (0..31 within its chunk; ints, numpy arrays or TIR
    expressions) in the `fields` layout."""
    per = fields_per_half(bits)
    half, rest = col // HALF, col % HALF
    return rest // per, HALF * half + bits * (rest % per)


def pack_fields(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [n, k] (k a multiple of 32) -> uint8 [bits, n, k / 8] in the `fields` layout."""
    if bits not in FIELD_BITS:
        raise ValueError(f"the fields layout packs 1, 2 or 4 bits, got {bits}")
    n, k = q.shape
    chunks = q.reshape(n, k // CHUNK, CHUNK).astype("uint32")
    words = np.zeros((bits, n, k // CHUNK), dtype="uint32")
    for col in range(CHUNK):
        e, pos = field_place(col, bits)
        words[e] |= chunks[..., col] << np.uint32(pos)
    return words.astype("<u4").view("uint8").reshape(bits, n, k // 8)


def unpack_fields(packed: np.ndarray) -> np.ndarray:
    """The inverse of `pack_fields`: uint8 [bits, n, k / 8] -> uint8 codes [n, k]."""
    bits, n, size = packed.shape
    words = np.ascontiguousarray(packed).view("<u4").astype("uint32")     # [bits, n, k / 32]
    q = np.empty((n, size // 4, CHUNK), dtype="uint8")
    for col in range(CHUNK):
        e, pos = field_place(col, bits)
        q[..., col] = (words[e] >> np.uint32(pos)) & np.uint32(2 ** bits - 1)
    return q.reshape(n, size * 8)


def pack_planes(planes: np.ndarray, layout: str) -> np.ndarray:
    """The op's packed argument in `layout` from the quantizer's bit planes (`lut.quantize`)."""
    if layout == "fields":
        return pack_fields(lut.unpack_bitplanes(planes), planes.shape[0])
    return lut.pack_bytes(planes)


def unpack_planes(packed: np.ndarray, layout: str) -> np.ndarray:
    """The quantizer's bit planes from the op's packed argument in `layout`."""
    if layout == "fields":
        return lut.pack_bitplanes(unpack_fields(packed), packed.shape[0])
    return lut.unpack_bytes(packed)
