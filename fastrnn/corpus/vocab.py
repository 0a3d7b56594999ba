"""The vocabulary of a corpus: the symbols that occur, sorted by code point (level 'char') or byte value (level
'byte'), and the smallest token id type that holds them."""

import numpy as np

from fastrnn.errors import ConfigError, CorpusError, VocabError

LEVELS = ("char", "byte")


def token_dtype(vocab_size):
    """The smallest unsigned integer type that holds ids 0..vocab_size-1."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise CorpusError(f"vocabulary of {vocab_size} symbols is too large")


class Vocab:
    """The symbols of a corpus, sorted by code point (level 'char') or byte value (level 'byte').

    codes: (V,) int64 sorted code points or byte values; symbols: list of V str (a char, or for bytes a str of the
    byte's latin-1 character) for display.
    """

    def __init__(self, codes, level="char"):
        if level not in LEVELS:
            raise ConfigError(f"unknown level {level!r}; choose char or byte")
        self.level = level
        self.codes = np.array(sorted(int(c) for c in codes), dtype=np.int64)  # (V,)
        if level == "byte" and len(self.codes) and (self.codes[0] < 0 or self.codes[-1] > 255):
            raise ConfigError("byte vocabulary values must be 0..255")
        self.symbols = [chr(c) for c in self.codes]
        top = int(self.codes[-1]) + 1 if len(self.codes) else 1
        self._lut = np.full(max(top, 256 if level == "byte" else 1), -1, dtype=np.int32)  # code -> id, -1 absent
        self._lut[self.codes] = np.arange(len(self.codes), dtype=np.int32)

    @property
    def size(self):
        return len(self.codes)

    @property
    def dtype(self):
        return token_dtype(self.size)

    def __len__(self):
        return self.size

    def __eq__(self, other):
        return isinstance(other, Vocab) and self.level == other.level and np.array_equal(self.codes, other.codes)

    def __repr__(self):
        return f"Vocab(level={self.level!r}, size={self.size})"

    def encode_codes(self, codes):
        """ids: (M,) int32 for an array of code points / byte values; VocabError on the first unknown one."""
        codes = np.asarray(codes)
        if codes.size == 0:
            return np.zeros(0, dtype=np.int32)
        inside = codes < len(self._lut)
        ids = np.full(codes.shape, -1, dtype=np.int32)
        ids[inside] = self._lut[codes[inside]]
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            c = int(codes[bad[0]])
            what = f"byte 0x{c:02X}" if self.level == "byte" else f"character {_show(chr(c))} (U+{c:04X})"
            raise VocabError(f"{what} at position {int(bad[0])} is not in the vocabulary ({self.size} symbols)")
        return ids

    def encode(self, text):
        """ids: (M,) int32 for a str (at level 'byte', its UTF-8 bytes; bytes are accepted as they are)."""
        if self.level == "byte":
            data = text if isinstance(text, (bytes, bytearray)) else text.encode("utf-8")
            return self.encode_codes(np.frombuffer(bytes(data), dtype=np.uint8))
        return self.encode_codes(_codepoints(text))

    def decode_bytes(self, ids):
        """The raw bytes of byte-level ids."""
        return self.codes[np.asarray(ids, dtype=np.int64)].astype(np.uint8).tobytes()

    def decode(self, ids):
        """Text for ids: decode(encode(text)) == text. Byte-level ids decode as UTF-8 (invalid bytes replaced)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.level == "byte":
            return self.decode_bytes(ids).decode("utf-8", errors="replace")
        return self.codes[ids].astype("<u4").tobytes().decode("utf-32-le")

    def to_dict(self):
        return {"level": self.level, "symbols": [int(c) for c in self.codes]}

    @classmethod
    def from_dict(cls, d):
        return cls(d["symbols"], d.get("level", "char"))


def _codepoints(text):
    """(M,) uint8 or uint32 code points of a str, without a Python-level loop."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")


def _show(ch):
    return repr(ch) if ch.isprintable() else ascii(ch)
