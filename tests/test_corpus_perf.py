"""The fast paths of corpus preparation (fused numba UTF-8 validation, reused buffers, the background split
writer) against Python's codec and the straightforward results."""

import codecs
import random

import h5py
import numpy as np
import pytest

from fastrnn.kernels import textscan
from fastrnn.corpus import Vocab, open_corpus, prepare
from fastrnn.errors import CorpusError

# bytes that exercise every branch of the validator: ASCII, continuation bytes, overlong leads (C0 C1 E0 F0),
# the surrogate lead (ED), the last valid lead (F4) and invalid leads (F5..FF)
_INTERESTING = [0x41, 0x0A, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xED,
                0xEE, 0xEF, 0xF0, 0xF1, 0xF4, 0xF5, 0xF8, 0xFF]
_SAMPLE = "abc é ß ü € 中文 😀 \U0010FFFF \uFFFF \u07FF \u0800 \U00010000 \ud7ff \ue000"


def _random_bytes(rng, n):
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.5:
            out += rng.choice(_SAMPLE).encode("utf-8")
        else:
            out.append(rng.choice(_INTERESTING))
    return bytes(out)


def _codec(data):
    """(consumed, symbols, error start or None) by Python's strict UTF-8 codec, final=False."""
    try:
        text, consumed = codecs.utf_8_decode(data, "strict", False)
        return consumed, text, None
    except UnicodeDecodeError as exc:
        return None, None, exc.start


def test_validator_agrees_with_codec():
    rng = random.Random(0)
    lut = np.arange(0x110000, dtype=np.uint32)
    for trial in range(4000):
        data = _random_bytes(rng, rng.randint(0, 12))
        arr = np.frombuffer(data, dtype=np.uint8)
        counts = np.zeros(0x110000, dtype=np.int64)
        out = np.zeros(len(data) + 4, dtype=np.uint32)
        n, consumed, status = textscan.utf8_check_count(arr, counts)
        n2, consumed2, status2 = textscan.utf8_check_map(arr, lut, out)
        assert (n, consumed, status) == (n2, consumed2, status2)
        ok_consumed, text, bad = _codec(data)
        if bad is None:
            assert status == textscan.OK, data
            assert consumed == ok_consumed, data
            assert n == len(text)
            expect = np.array([ord(c) for c in text], dtype=np.uint32)
            np.testing.assert_array_equal(out[:n], expect)
            np.testing.assert_array_equal(np.flatnonzero(counts), np.unique(expect))
        else:
            assert status == textscan.INVALID, data
            assert consumed == bad, data


def test_validator_finds_nul():
    data = np.frombuffer("héllo\x00wörld".encode(), dtype=np.uint8)
    n, consumed, status = textscan.utf8_check_count(data, np.zeros(0x110000, dtype=np.int64))
    assert (n, consumed, status) == (5, 6, textscan.NUL)


@pytest.mark.parametrize("chunk_size", [16, 17, 19, 64, 1 << 20])
def test_prepare_round_trip_small_chunks(tmp_path, chunk_size):
    rng = random.Random(chunk_size)
    text = "".join(rng.choice(_SAMPLE + "the quick brown fox\n") for _ in range(5000))
    src = tmp_path / "in.txt"
    src.write_bytes(text.encode("utf-8"))
    prepare([src], tmp_path / "c.h5", chunk_size=chunk_size, val_frac=0.1, test_frac=0.1)
    with open_corpus(tmp_path / "c.h5") as c:
        ids = np.concatenate([c.split(s) for s in ("train", "val", "test")])
        assert c.vocab == Vocab(sorted({ord(ch) for ch in text}))
        assert c.vocab.decode(ids) == text


@pytest.mark.parametrize("chunk_size", [16, 23, 1 << 20])
def test_prepare_error_offsets(tmp_path, chunk_size):
    rng = random.Random(1)
    good = "".join(rng.choice(_SAMPLE) for _ in range(300)).encode("utf-8")
    src = tmp_path / "in.txt"
    for bad, what in ((b"\xff", "not valid utf-8"), (b"\xed\xa0\x80", "not valid utf-8"),
                      (b"\x00", "NUL byte"), (b"\xc3", "not valid utf-8")):
        for _ in range(8):
            p = rng.randint(0, len(good))
            while p < len(good) and (good[p] & 0xC0) == 0x80:  # insert between characters
                p += 1
            data = good[:p] + bad + good[p:]
            src.write_bytes(data)
            try:
                codecs.utf_8_decode(data, "strict", True)
                expect = data.index(b"\x00")
            except UnicodeDecodeError as exc:
                expect = data.index(b"\x00") if b"\x00" in data else exc.start
            with pytest.raises(CorpusError, match=f"{what}.* at byte offset {expect}\\b"):
                prepare([src], tmp_path / "c.h5", chunk_size=chunk_size, force=True)
            assert not (tmp_path / "c.h5").exists()
    # a character cut by the end of the file
    src.write_bytes(good + b"\xe2\x82")
    with pytest.raises(CorpusError, match=f"unexpected end of data at byte offset {len(good)}"):
        prepare([src], tmp_path / "c.h5", chunk_size=chunk_size, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["in.txt"]  # no temporary file left behind


def test_prepare_split_layout_is_contiguous(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello world, " * 1000)
    prepare([src], tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "r") as f:
        for name in ("train", "val", "test"):
            assert f[name].chunks is None and f[name].compression is None
            assert f[name].id.get_offset() is not None
            assert f[name][:].max() < 12
    with open_corpus(tmp_path / "c.h5") as c:
        assert c.vocab.decode(np.concatenate([c.split(s) for s in ("train", "val", "test")])) == \
            "hello world, " * 1000


def _glibc_malloc():
    """(mallinfo2, libc) through ctypes, or skip where there is no glibc >= 2.33."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                         "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    mallinfo2.restype = Mallinfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return mallinfo2, libc


def _threshold_is_at_most(nbytes):
    """Whether M_MMAP_THRESHOLD <= nbytes now. glibc mmaps a block only when no free chunk of the heap can hold
    it, so: malloc(nbytes) until one is mmap'ed (mallinfo2().hblks goes up), or until the heap's free bytes
    could not have held them all, which means the threshold is above nbytes."""
    mallinfo2, libc = _glibc_malloc()
    blocks = []
    try:
        for _ in range(mallinfo2().fordblks // nbytes + 2):
            before = mallinfo2().hblks
            blocks.append(libc.malloc(nbytes))
            if mallinfo2().hblks > before:
                return True
        return False
    finally:
        for p in blocks:
            libc.free(p)


def test_prepare_puts_the_mmap_threshold_back(tmp_path, monkeypatch):
    """prepare fixes M_MMAP_THRESHOLD at 1 MB while it runs and sets it back (to glibc's initial 128 KiB, fixed)
    when it returns or raises: afterwards a 512 KiB block is mmap'ed again, as it would not be under 1 MB."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    _glibc_malloc()
    src = tmp_path / "in.txt"
    src.write_text("hello world\n" * 100)
    prepare([src], tmp_path / "c.h5")
    assert _threshold_is_at_most(512 << 10)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"text\x00more")
    with pytest.raises(CorpusError, match="NUL byte"):
        prepare([bad], tmp_path / "d.h5")
    assert _threshold_is_at_most(512 << 10)


def test_prepare_restores_malloc_on_success_and_error(tmp_path, monkeypatch):
    from fastrnn.corpus import build

    calls = []
    monkeypatch.setattr(build, "_mallopt", lambda param, value: calls.append((param, value)) or True)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    during = (build.M_MMAP_THRESHOLD, build.PREPARE_MMAP_THRESHOLD)
    after = (build.M_MMAP_THRESHOLD, build.DEFAULT_MMAP_THRESHOLD)
    src = tmp_path / "in.txt"
    src.write_text("hello world\n" * 100)
    prepare([src], tmp_path / "c.h5")
    assert calls == [during, after]
    calls.clear()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait\n")  # latin-1, not UTF-8
    with pytest.raises(CorpusError, match="is not valid utf-8"):
        prepare([bad], tmp_path / "d.h5")
    assert calls == [during, after]
    calls.clear()
    with pytest.raises(CorpusError, match="exists"):  # refused before anything is tuned
        prepare([src], tmp_path / "c.h5")
    assert calls == []


def test_prepare_leaves_malloc_alone_where_mallopt_refuses(tmp_path, monkeypatch):
    from fastrnn.corpus import build

    calls = []
    monkeypatch.setattr(build, "_mallopt", lambda param, value: calls.append((param, value)) and False)
    src = tmp_path / "in.txt"
    src.write_text("hello world\n" * 100)
    prepare([src], tmp_path / "c.h5")
    assert calls == [(build.M_MMAP_THRESHOLD, build.PREPARE_MMAP_THRESHOLD)]


@pytest.mark.parametrize("environ, threshold", [
    ({}, 128 * 1024),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, 65536),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=0x40000"}, 0x40000),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=262144", "MALLOC_MMAP_THRESHOLD_": "65536"}, 262144),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=junk", "MALLOC_MMAP_THRESHOLD_": "junk"}, 128 * 1024),
])
def test_startup_mmap_threshold(environ, threshold):
    from fastrnn.corpus import build

    assert build._startup_mmap_threshold(environ) == threshold
