"""numba loops for corpus preparation: UTF-8 bytes to code points, symbol counts, code-to-id mapping.

Turning text into a code-point array (decode, then encode to UTF-32) and counting or mapping it with NumPy fancy
indexing costs several times reading it. `utf8_check_count` and `utf8_check_map` validate strict UTF-8 (and
refuse NUL) while they count or map, in one pass over the bytes; `count_codes` and `map_codes` count or map
code points already decoded (other encodings, normalized text, byte level).
"""

import numpy as np
from numba import njit


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


# ---------------------------------------------------------------------------------------------------------------
# validating loops: strict UTF-8 (as Python's codec accepts it) and NUL detection fused with counting / mapping,
# so that a chunk is read from memory once. They return (symbols, consumed, status): status OK (consumed < B
# when the chunk ends inside a character whose bytes so far are valid: the caller carries them to the next
# chunk), INVALID or NUL at byte `consumed`.

OK, INVALID, NUL = 0, 1, 2


@njit(cache=True, nogil=True, inline="always")
def _step(data, i, B):
    """(code point, length) of the character at data[i] (data[i] >= 0x80): length 0 when the bytes run out
    before the character ends (those present being valid), -1 when they are not valid UTF-8."""
    b0 = np.uint32(data[i])
    if b0 < 0xC2:  # a continuation byte, or the lead of an overlong 2-byte form
        return np.uint32(0), -1
    if b0 < 0xE0:
        if i + 1 >= B:
            return np.uint32(0), 0
        b1 = np.uint32(data[i + 1])
        if (b1 & 0xC0) != 0x80:
            return np.uint32(0), -1
        return ((b0 & 0x1F) << 6) | (b1 & 0x3F), 2
    if b0 < 0xF0:
        lo, hi = 0x80, 0xBF
        if b0 == 0xE0:
            lo = 0xA0  # overlong
        elif b0 == 0xED:
            hi = 0x9F  # surrogates
        if i + 1 >= B:
            return np.uint32(0), 0
        b1 = np.uint32(data[i + 1])
        if b1 < lo or b1 > hi:
            return np.uint32(0), -1
        if i + 2 >= B:
            return np.uint32(0), 0
        b2 = np.uint32(data[i + 2])
        if (b2 & 0xC0) != 0x80:
            return np.uint32(0), -1
        return ((b0 & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F), 3
    if b0 < 0xF5:
        lo, hi = 0x80, 0xBF
        if b0 == 0xF0:
            lo = 0x90  # overlong
        elif b0 == 0xF4:
            hi = 0x8F  # above U+10FFFF
        if i + 1 >= B:
            return np.uint32(0), 0
        b1 = np.uint32(data[i + 1])
        if b1 < lo or b1 > hi:
            return np.uint32(0), -1
        if i + 2 >= B:
            return np.uint32(0), 0
        b2 = np.uint32(data[i + 2])
        if (b2 & 0xC0) != 0x80:
            return np.uint32(0), -1
        if i + 3 >= B:
            return np.uint32(0), 0
        b3 = np.uint32(data[i + 3])
        if (b3 & 0xC0) != 0x80:
            return np.uint32(0), -1
        return ((b0 & 0x07) << 18) | ((b1 & 0x3F) << 12) | ((b2 & 0x3F) << 6) | (b3 & 0x3F), 4
    return np.uint32(0), -1


@njit(cache=True, nogil=True)
def utf8_check_count(data, counts):
    """counts[c] += 1 for every code point c of UTF-8 bytes, validating them. data: (B,) uint8;
    counts: (0x110000,) int64. Returns (symbols, consumed, status); counts cover the symbols before `consumed`."""
    i, n, B = 0, 0, data.shape[0]
    while i < B:
        b = data[i]
        if b < 0x80:
            if b == 0:
                return n, i, NUL
            counts[b] += 1
            i += 1
        else:
            cp, k = _step(data, i, B)
            if k <= 0:
                return n, i, (OK if k == 0 else INVALID)
            counts[cp] += 1
            i += k
        n += 1
    return n, i, OK


@njit(cache=True, nogil=True)
def utf8_check_map(data, lut, out):
    """out[n] = lut[code point n] over UTF-8 bytes, validating them. data: (B,) uint8; lut: (0x110000,) ids;
    out: (>= B,) ids. Returns (symbols, consumed, status) as utf8_check_count."""
    i, n, B = 0, 0, data.shape[0]
    while i < B:
        b = data[i]
        if b < 0x80:
            if b == 0:
                return n, i, NUL
            out[n] = lut[b]
            i += 1
        else:
            cp, k = _step(data, i, B)
            if k <= 0:
                return n, i, (OK if k == 0 else INVALID)
            out[n] = lut[cp]
            i += k
        n += 1
    return n, i, OK
