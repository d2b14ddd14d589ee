"""Low-bit weights for LUT-based mixed-precision GEMM (T-MAC, arXiv 2407.00088; LUT Tensor Core,
arXiv 2408.06003): quantization, bit-plane packing, and the LUT computation as a numpy reference.

Weights W[n, k] are quantized per group of `group_size` along k to q in [0, 2^bits), with
W ≈ scale * (q - zero) (zero = (2^bits - 1) / 2 when there are no zero points: symmetric).
q = sum_b 2^b q_b splits into bit planes q_b in {0, 1}; with s_b = 2 q_b - 1 in {-1, +1},
    sum_k q_k x_k = sum_b 2^b * (sum_k s_bk x_k + sum_k x_k) / 2.
For each run of G = 4 activations a table holds the 2^G signed sums T[i] = sum_j sign_j(i) x_j,
sign_j(i) = +1 if bit j of i is set else -1. It is symmetric, T[~i] = -T[i], so only 2^(G-1)
entries are stored and a lookup with the top bit set negates the mirrored entry. A bit plane's
4-bit index per run ("nibble") then replaces 4 multiply-adds by one lookup.

This module is the reference the LUT-mpGEMM operator and its tensor intrinsic are checked
against; it is not the fast path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

G = 4  # activations per table


@dataclass
class QuantizedWeights:
    planes: np.ndarray          # uint8 [bits, n, k // G]: the G-bit index of each run, per plane
    scales: np.ndarray          # float32 [n, k // group_size]
    zeros: np.ndarray           # float32 [n, k // group_size]
    bits: int
    group_size: int

    def dequantize(self) -> np.ndarray:
        q = unpack_bitplanes(self.planes).astype("float32")
        rep = lambda a: np.repeat(a, self.group_size, axis=1)  # noqa: E731
        return rep(self.scales) * (q - rep(self.zeros))


def check_layout(k: int, bits: int, group_size: int) -> None:
    if bits not in (1, 2, 3, 4):
        raise ValueError(f"weight bits must be 1, 2, 3 or 4, got {bits}")
    if group_size % G or k % group_size:
        raise ValueError(f"group size {group_size} must be a multiple of {G} dividing k={k}")


def quantize(w: np.ndarray, bits: int, group_size: int, zero_points: bool) -> QuantizedWeights:
    """Round-to-nearest quantization per group; asymmetric with zero points, else symmetric."""
    n, k = w.shape
    check_layout(k, bits, group_size)
    levels = 2 ** bits - 1
    groups = w.reshape(n, k // group_size, group_size).astype("float32")
    if zero_points:
        lo, hi = groups.min(-1), groups.max(-1)
        scales = np.maximum(hi - lo, 1e-8) / levels
        zeros = np.round(-lo / scales)
    else:  # levels/2 steps each side of zero; 1 bit is sign x mean magnitude (as in BitNet)
        extent = np.abs(groups).mean(-1) if bits == 1 else np.abs(groups).max(-1)
        scales = np.maximum(extent, 1e-8) / (levels / 2)
        zeros = np.full(scales.shape, levels / 2, dtype="float32")
    q = np.clip(np.round(groups / scales[..., None] + zeros[..., None]), 0, levels)
    return QuantizedWeights(pack_bitplanes(q.reshape(n, k).astype("uint8"), bits),
                            scales.astype("float32"), zeros.astype("float32"), bits, group_size)


def pack_bitplanes(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [n, k] codes -> uint8 [bits, n, k // G]: bit b of codes k = G j .. G j + G - 1,
    code G j + i landing in bit i of the index."""
    n, k = q.shape
    plane_bits = (q[None] >> np.arange(bits, dtype="uint8")[:, None, None]) & 1
    runs = plane_bits.reshape(bits, n, k // G, G)
    return (runs << np.arange(G, dtype="uint8")).sum(-1).astype("uint8")


def unpack_bitplanes(planes: np.ndarray) -> np.ndarray:
    bits, n, runs = planes.shape
    codes = (planes[..., None] >> np.arange(G, dtype="uint8")) & 1        # [bits, n, runs, G]
    q = (codes.reshape(bits, n, runs * G).astype("uint16") << np.arange(bits)[:, None, None])
    return q.sum(0).astype("uint8")


def build_tables(x: np.ndarray) -> np.ndarray:
    """float32 [m, k] activations -> [m, k // G, 2^(G-1)]: the stored half of each run's table
    (entries with the top bit clear; the other half is their negation)."""
    m, k = x.shape
    idx = np.arange(2 ** (G - 1))
    signs = np.where((idx[:, None] >> np.arange(G)) & 1, 1.0, -1.0)      # [2^(G-1), G]
    return np.einsum("mrj,tj->mrt", x.reshape(m, k // G, G).astype("float32"), signs)


def lookup(tables: np.ndarray, index: np.ndarray) -> np.ndarray:
    """T[index] from a half table: index >= 2^(G-1) reads -T[~index & (2^G - 1)]."""
    top = index >> (G - 1)
    mirrored = np.where(top, ~index & (2 ** G - 1), index)
    values = np.take_along_axis(tables, mirrored[..., None].astype("int64"), -1)[..., 0]
    return np.where(top, -values, values)


def lut_matmul(x: np.ndarray, w: QuantizedWeights) -> np.ndarray:
    """x [m, k] @ dequantized(w).T [k, n], computed the LUT way (float32 accumulation)."""
    m, k = x.shape
    bits, n, runs = w.planes.shape
    tables = build_tables(x)                                             # [m, runs, 2^(G-1)]
    per_group = w.group_size // G
    out = np.zeros((m, n), dtype="float32")
    xsum = x.astype("float32").reshape(m, k // w.group_size, w.group_size).sum(-1)  # [m, groups]
    for b in range(bits):
        signed = lookup(tables[:, None], w.planes[b][None])              # [m, n, runs]
        signed = signed.reshape(m, n, runs // per_group, per_group).sum(-1)   # [m, n, groups]
        qx = (signed + xsum[:, None]) / 2 * 2 ** b                       # sum_k q_bk x_k * 2^b
        out += np.einsum("mng,ng->mn", qx, w.scales)
    out -= np.einsum("mg,ng->mn", xsum, w.scales * w.zeros)
    return out


def pack_bytes(planes: np.ndarray) -> np.ndarray:
    """Kernel layout: uint8 [bits, n, k // G] indices -> uint8 [bits, n, k // (2 G)], two runs per
    byte (run 2r in the low nibble, run 2r + 1 in the high one)."""
    return (planes[..., 0::2] | (planes[..., 1::2] << G)).astype("uint8")


def unpack_bytes(packed: np.ndarray) -> np.ndarray:
    bits, n, pairs = packed.shape
    out = np.empty((bits, n, 2 * pairs), dtype="uint8")
    out[..., 0::2], out[..., 1::2] = packed & 15, packed >> G
    return out
