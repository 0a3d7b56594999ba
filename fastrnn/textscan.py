"""numba loops for corpus preparation: UTF-8 bytes to code points, symbol counts, code-to-id mapping.

Python's codec validates UTF-8 at ~650 MB/s but turning the resulting str into a code-point array (an encode to
UTF-32) and counting or mapping it with NumPy fancy indexing cost several times that. These loops do that work
at about a byte per nanosecond, on bytes already validated by the codec (so they do not validate again).
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _decode_at(data, i):
    """(code point, byte length) of the valid UTF-8 character starting at data[i]."""
    b = np.uint32(data[i])
    if b < 0x80:
        return b, 1
    if b < 0xE0:
        return ((b & 0x1F) << 6) | (np.uint32(data[i + 1]) & 0x3F), 2
    if b < 0xF0:
        return ((b & 0x0F) << 12) | ((np.uint32(data[i + 1]) & 0x3F) << 6) | (np.uint32(data[i + 2]) & 0x3F), 3
    return (((b & 0x07) << 18) | ((np.uint32(data[i + 1]) & 0x3F) << 12)
            | ((np.uint32(data[i + 2]) & 0x3F) << 6) | (np.uint32(data[i + 3]) & 0x3F)), 4


@njit(cache=True, nogil=True)
def utf8_count(data, counts):
    """counts[c] += 1 for every code point c of valid UTF-8 bytes. data: (B,) uint8. Returns the count."""
    i, n, B = 0, 0, data.shape[0]
    while i < B:
        if data[i] < 0x80:  # runs of ASCII, the usual case, without the general decode
            counts[data[i]] += 1
            i += 1
        else:
            cp, k = _decode_at(data, i)
            counts[cp] += 1
            i += k
        n += 1
    return n


@njit(cache=True, nogil=True)
def utf8_map(data, lut, out):
    """out[n] = lut[code point n] over valid UTF-8 bytes. data: (B,) uint8; out: (>= B,). Returns the count."""
    i, n, B = 0, 0, data.shape[0]
    while i < B:
        if data[i] < 0x80:
            out[n] = lut[data[i]]
            i += 1
        else:
            cp, k = _decode_at(data, i)
            out[n] = lut[cp]
            i += k
        n += 1
    return n


@njit(cache=True, nogil=True)
def count_codes(codes, counts):
    """counts[c] += 1 for every c in codes. codes: (M,) uint8|uint32; counts: (> max code,) int64."""
    for i in range(codes.shape[0]):
        counts[codes[i]] += 1


@njit(cache=True, nogil=True)
def map_codes(codes, lut, out):
    """out[i] = lut[codes[i]]. codes: (M,) uint8|uint32; lut: (> max code,) ids; out: (M,) ids."""
    for i in range(codes.shape[0]):
        out[i] = lut[codes[i]]
