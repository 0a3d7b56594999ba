"""fastrnn.corpus: prepare, Vocab, memory-mapped splits and the TBPTT batch stream."""

import json
import os

import h5py
import numpy as np
import pytest

from fastrnn.corpus import BatchStream, Vocab, open_corpus, prepare, token_dtype
from fastrnn.errors import ConfigError, CorpusError, VocabError

TEXTS = {
    "ascii": "To be, or not to be: that is the question.\n" * 20,
    "french": "À la recherche du temps perdu — Longtemps, je me suis couché de bonne heure. Ça, où, ï, œ.\n" * 20,
    "cjk": "春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。\n" * 20,
    "emoji": "fast 🚀 rnn 😀 ok 🐍🐍 𝄞 done\n" * 20,
}


def _all_tokens(path):
    with open_corpus(path) as c:
        return c.vocab, np.concatenate([np.asarray(c.split(s)) for s in ("train", "val", "test")])


@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize("chunk_size", [16, 17, 1 << 20])
def test_round_trip(tmp_path, name, chunk_size):
    text = TEXTS[name]
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "c.h5"
    prepare([src], out, chunk_size=chunk_size)
    vocab, tokens = _all_tokens(out)
    assert vocab.decode(tokens) == text
    assert vocab.symbols == sorted(set(text))
    assert vocab.decode(vocab.encode(text)) == text


def test_multibyte_char_straddling_chunk_boundary(tmp_path):
    # 'é' is 2 bytes, '🚀' 4: put each across a 16-byte chunk edge at every possible split point
    for pad in range(0, 4):
        text = "x" * (15 - pad) + "é🚀" + "y" * 20 + "😀"
        src = tmp_path / f"s{pad}.txt"
        src.write_text(text, encoding="utf-8")
        out = tmp_path / f"s{pad}.h5"
        prepare([src], out, chunk_size=16, val_frac=0, test_frac=0)
        vocab, tokens = _all_tokens(out)
        assert vocab.decode(tokens) == text


def test_split_sizes_are_taken_from_the_end(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    src = tmp_path / "a.txt"
    src.write_text(text)
    prepare([src], tmp_path / "c.h5", val_frac=0.1, test_frac=0.05)
    with open_corpus(tmp_path / "c.h5") as c:
        assert {s: len(c.split(s)) for s in ("train", "val", "test")} == {"train": 850, "val": 100, "test": 50}
        assert c.vocab.decode(c.split("val")) == text[850:950]
        assert c.vocab.decode(c.split("test")) == text[950:]
    prepare([src], tmp_path / "z.h5", val_frac=0, test_frac=0)
    with open_corpus(tmp_path / "z.h5") as c:
        assert c.sizes() == {"train": 1000, "val": 0, "test": 0}
        assert len(c.split("val")) == 0


def test_multiple_inputs_and_directories_concatenate_in_order(tmp_path):
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("bbb\n")
    (d / "a.txt").write_text("aaa\n")
    (d / "sub" / "c.c").write_text("int c;\n")
    (d / ".hidden").write_text("HIDDEN")
    (d / "blob.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / "first.txt").write_text("first\n")
    prepare([tmp_path / "first.txt", d], tmp_path / "c.h5", val_frac=0, test_frac=0)
    vocab, tokens = _all_tokens(tmp_path / "c.h5")
    assert vocab.decode(tokens) == "first\naaa\nbbb\nint c;\n"
    with open_corpus(tmp_path / "c.h5") as c:
        assert [os.path.basename(s["path"]) for s in c.info()["sources"]] == ["first.txt", "a.txt", "b.txt", "c.c"]


@pytest.mark.parametrize("n_symbols, dtype", [(2, np.uint8), (256, np.uint8), (257, np.uint16),
                                              (65536, np.uint16), (65537, np.uint32)])
def test_token_dtype(n_symbols, dtype):
    assert token_dtype(n_symbols) == dtype


def test_dtype_selection_in_the_file(tmp_path):
    small = tmp_path / "s.txt"
    small.write_text("abcabc" * 10)
    prepare([small], tmp_path / "s.h5")
    big = tmp_path / "b.txt"
    big.write_text("".join(chr(0x4E00 + i) for i in range(300)) * 2, encoding="utf-8")
    prepare([big], tmp_path / "b.h5")
    with open_corpus(tmp_path / "s.h5") as c:
        assert c.split("train").dtype == np.uint8
    with open_corpus(tmp_path / "b.h5") as c:
        assert c.split("train").dtype == np.uint16 and c.vocab.size == 300


def test_byte_level(tmp_path):
    text = "café 🚀\n" * 10
    src = tmp_path / "t.txt"
    src.write_text(text, encoding="utf-8")
    prepare([src], tmp_path / "b.h5", level="byte", val_frac=0, test_frac=0)
    with open_corpus(tmp_path / "b.h5") as c:
        v = c.vocab
        assert v.level == "byte"
        assert list(v.codes) == sorted(set(text.encode("utf-8")))
        assert v.decode_bytes(c.split("train")) == text.encode("utf-8")
        assert v.decode(c.split("train")) == text
        assert len(c.split("train")) == len(text.encode("utf-8"))


def test_byte_level_accepts_invalid_utf8(tmp_path):
    data = "naïve".encode("latin-1") * 10
    src = tmp_path / "l.txt"
    src.write_bytes(data)
    with pytest.raises(CorpusError, match="not valid utf-8"):
        prepare([src], tmp_path / "c.h5")
    prepare([src], tmp_path / "b.h5", level="byte", val_frac=0, test_frac=0)
    with open_corpus(tmp_path / "b.h5") as c:
        assert c.vocab.decode_bytes(c.split("train")) == data


def test_seed000_normalisation(tmp_path):
    text = "  To be, or NOT to be: that is the question!\n\n2B or not 2B...  "
    src = tmp_path / "t.txt"
    src.write_text(text)
    for chunk in (16, 1 << 20):
        out = tmp_path / f"n{chunk}.h5"
        prepare([src], out, lowercase=True, letters_only=True, val_frac=0, test_frac=0, chunk_size=chunk)
        vocab, tokens = _all_tokens(out)
        assert vocab.decode(tokens) == "to be or not to be that is the question b or not b"
    out = tmp_path / "lower.h5"
    prepare([src], out, lowercase=True, val_frac=0, test_frac=0)
    assert _all_tokens(out)[0].decode(_all_tokens(out)[1]) == text.lower()


def test_errors_replace_and_ignore(tmp_path):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"good text \xff\xfe more text\n" * 5)
    prepare([src], tmp_path / "r.h5", errors="replace", val_frac=0, test_frac=0)
    vocab, tokens = _all_tokens(tmp_path / "r.h5")
    assert vocab.decode(tokens) == "good text \ufffd\ufffd more text\n" * 5
    prepare([src], tmp_path / "i.h5", errors="ignore", val_frac=0, test_frac=0)
    vocab, tokens = _all_tokens(tmp_path / "i.h5")
    assert vocab.decode(tokens) == "good text  more text\n" * 5


def test_other_encoding(tmp_path):
    text = "Ça coûte cher à Noël.\n" * 10
    src = tmp_path / "l1.txt"
    src.write_bytes(text.encode("latin-1"))
    prepare([src], tmp_path / "c.h5", encoding="latin-1", val_frac=0, test_frac=0)
    vocab, tokens = _all_tokens(tmp_path / "c.h5")
    assert vocab.decode(tokens) == text


def test_file_layout_and_metadata(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("hello world\n" * 100)
    prepare([src], tmp_path / "c.h5", lowercase=True)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f.attrs["fastrnn_corpus"] == 1 and f.attrs["format_version"] == 2
        assert json.loads(f.attrs["config"])["lowercase"] is True
        for s in ("train", "val", "test"):
            assert f[s].chunks is None and f[s].compression is None
    with open_corpus(tmp_path / "c.h5") as c:
        m = c.split("train")  # read-only (read with pread: tests/test_corpus.py's last test)
        with pytest.raises(TypeError):
            m[0] = 1


def test_vocab_encode_unknown_and_dict_round_trip():
    v = Vocab(map(ord, "abc \n"))
    assert v.symbols == ["\n", " ", "a", "b", "c"]
    assert list(v.encode("cab")) == [4, 2, 3]
    with pytest.raises(VocabError, match=r"'é' \(U\+00E9\) at position 1"):
        v.encode("aé")
    with pytest.raises(VocabError, match="U\\+1F680"):
        v.encode("🚀")
    assert Vocab.from_dict(v.to_dict()) == v
    assert Vocab.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    assert v != Vocab(map(ord, "abc"))
    assert v != Vocab(v.codes, "byte")


def test_prepare_bad_inputs_leave_nothing(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"abc" * 100 + b"\x00\x01" + b"x" * 10)
    nodir = tmp_path / "nodir"
    nodir.mkdir()
    (nodir / "x.bin").write_bytes(b"\x00\x00")
    out = tmp_path / "out.h5"
    cases = [([tmp_path / "missing.txt"], "does not exist"), ([empty], "empty"),
             ([binary], "NUL byte at byte offset 300"), ([nodir], "no text files")]
    for inputs, message in cases:
        with pytest.raises(CorpusError, match=message):
            prepare(inputs, out)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin.dat", "empty.txt", "nodir"]


def test_invalid_utf8_names_file_and_offset(tmp_path):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"a" * 40 + b"\xc3" + b"(" + b"b" * 40)
    for chunk in (16, 1 << 20):
        with pytest.raises(CorpusError, match=r"bad.txt is not valid utf-8 text: .* at byte offset 40"):
            prepare([src], tmp_path / "o.h5", chunk_size=chunk)


def test_existing_output_refused_unless_force(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("abcdef" * 10)
    out = tmp_path / "c.h5"
    out.write_text("precious")
    with pytest.raises(CorpusError, match="exists; add --force"):
        prepare([src], out)
    assert out.read_text() == "precious"
    prepare([src], out, force=True)
    with open_corpus(out) as c:
        assert c.vocab.size == 6


def test_failed_prepare_keeps_existing_output(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("abcdef" * 10)
    out = tmp_path / "c.h5"
    prepare([good], out)
    before = out.read_bytes()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\x00")
    with pytest.raises(CorpusError):
        prepare([good, bad], out, force=True)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "c.h5", "good.txt"]


def test_interrupted_prepare_leaves_no_output(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("abcdefgh" * 1000)
    out = tmp_path / "c.h5"

    def interrupt(phase, done, total):
        if phase == "write":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare([src], out, progress=interrupt, chunk_size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_bad_options():
    with pytest.raises(ConfigError):
        prepare(["x"], "y.h5", val_frac=0.6, test_frac=0.5)
    with pytest.raises(ConfigError):
        prepare(["x"], "y.h5", val_frac=-0.1)
    with pytest.raises(ConfigError):
        prepare(["x"], "y.h5", level="byte", letters_only=True)
    with pytest.raises(ConfigError, match="unknown encoding"):
        prepare(["x"], "y.h5", encoding="no-such-codec")


def test_open_corpus_rejects_other_files(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("just text")
    with pytest.raises(CorpusError, match="not a corpus file"):
        open_corpus(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(CorpusError, match="not a fastrnn corpus"):
        open_corpus(other)
    with pytest.raises(CorpusError, match="does not exist"):
        open_corpus(tmp_path / "nope.h5")


def test_truncated_corpus_is_reported(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("abcdefgh" * 5000)
    out = tmp_path / "c.h5"
    prepare([src], out)
    data = out.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match="truncated|corrupt|damaged"):
        with open_corpus(cut) as c:
            [c.split(s) for s in ("train", "val", "test")]


# ---------------------------------------------------------------------------------------------------------------
# batch stream


def test_batch_stream_layout_and_continuity():
    tokens = np.arange(1000, dtype=np.uint16)
    N, T = 4, 10
    bs = BatchStream(tokens, N, T)
    S = (1000 - 1) // N  # 249 tokens per stream
    assert bs.steps_per_epoch == S // T == 24
    x0, y0 = bs.batch(0, 0)
    assert x0.shape == (N, T) and x0.dtype == np.int32 and x0.flags.c_contiguous
    np.testing.assert_array_equal(x0[:, 0], np.arange(N) * S)
    np.testing.assert_array_equal(y0, x0 + 1)
    x1, _ = bs.batch(0, 1)
    np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)  # each row continues its stream
    # concatenating minibatches along time gives each stream contiguous
    rows = np.concatenate([bs.batch(0, i)[0] for i in range(bs.steps_per_epoch)], axis=1)
    for i in range(N):
        np.testing.assert_array_equal(rows[i], np.arange(i * S, i * S + bs.steps_per_epoch * T))
    # targets never run past the end of the split
    assert bs.batch(0, bs.steps_per_epoch - 1)[1].max() < 1000
    # every epoch is the same sequence of minibatches (what a resume at (epoch, index) relies on)
    for a, b in zip(bs.batch(3, 5), bs.batch(0, 5)):
        np.testing.assert_array_equal(a, b)


def test_batch_stream_on_memmap(tmp_path):
    src = tmp_path / "t.txt"
    text = "the quick brown fox jumps over the lazy dog\n" * 200
    src.write_text(text)
    prepare([src], tmp_path / "c.h5", val_frac=0, test_frac=0)
    with open_corpus(tmp_path / "c.h5") as c:
        bs = BatchStream(c.split("train"), 5, 20)
        x, y = bs.batch(0, 3)
        S = (len(text) - 1) // 5
        assert c.vocab.decode(x[2]) == text[2 * S + 60: 2 * S + 80]
        assert c.vocab.decode(y[2]) == text[2 * S + 61: 2 * S + 81]


@pytest.mark.parametrize("alphabet", [256 + 40, 60])  # uint16 and uint8 ids
def test_checked_reads_equal_the_map(tmp_path, monkeypatch, alphabet):
    """Corpus.checker(split).read (pread with per-row read-ahead buffers) gives exactly the tokens of the split
    read whole (once the memory map's): in order, at random minibatches (a resume), shuffled, for a block of rows, over a prefix of a split, and
    at the end of a split; a row reading on refills its buffer in one pread of READ_AHEAD bytes."""
    from fastrnn.corpus.dataset import ChunkCheck

    rng = np.random.default_rng(0)
    src = tmp_path / "t.txt"
    src.write_text("".join(chr(0x41 + int(i)) for i in rng.integers(0, alphabet, 60_000)))
    prepare([src], tmp_path / "c.h5")
    monkeypatch.setattr(ChunkCheck, "READ_AHEAD", 1024)
    preads = []
    pread = ChunkCheck._pread
    monkeypatch.setattr(ChunkCheck, "_pread", lambda self, row, start: preads.append(len(row)) or pread(self, row,
                                                                                                           start))
    with open_corpus(tmp_path / "c.h5") as c:
        for split, kwargs in [("train", {}), ("train", {"shuffle": True, "seed": 4}), ("train", {"rows": (1, 4)}),
                              ("val", {})]:
            tokens = c.split(split)[:-7] if split == "val" else c.split(split)
            want = BatchStream(np.asarray(tokens), 5, 16, **kwargs)
            got = BatchStream(tokens, 5, 16, check=c.checker(split), **kwargs)
            steps = got.steps_per_epoch
            order = list(range(steps)) * 2 + rng.integers(0, steps, 20).tolist() + [steps - 1, 0, 1, 2]
            c.checker(split).verify_chunk(0)  # (a checksum pass reads its chunk with one pread too)
            del preads[:]
            for k, index in enumerate(order):
                for a, b in zip(got.batch(0, index), want.batch(0, index)):
                    np.testing.assert_array_equal(a, b)
                if k == 2 * steps - 1 and not kwargs:  # in order, rows read ahead: few preads for many minibatches
                    assert max(preads) == 1024 // tokens.dtype.itemsize
                    per_pass = 2 + -(-steps * 16 // (1024 // tokens.dtype.itemsize - 16))  # a short read, refills
                    assert len(preads) <= 5 * 2 * per_pass < 5 * 2 * steps / 4, preads
    assert tokens.dtype == (np.uint16 if alphabet > 256 else np.uint8)


@pytest.mark.parametrize("missing", [(), ("preadv",), ("preadv", "pread")])  # Linux; macOS without preadv; Windows
def test_corpus_read_equals_the_map(tmp_path, monkeypatch, missing):
    for name in missing:
        monkeypatch.delattr(os, name, raising=False)
    src = tmp_path / "t.txt"
    src.write_text("the quick brown fox jumps over the lazy dog\n" * 300)
    prepare([src], tmp_path / "c.h5")
    with open_corpus(tmp_path / "c.h5") as c:
        for name in ("train", "val", "test"):
            ids = np.asarray(c.split(name))
            np.testing.assert_array_equal(c.read(name), ids)
            np.testing.assert_array_equal(c.read(name, 7, 50), ids[7:57])
            np.testing.assert_array_equal(c.read(name, len(ids) - 3, 50), ids[-3:])  # clipped at the end
            assert c.read(name, len(ids) + 5).size == 0 and c.read(name, 0, 100).dtype == ids.dtype
        stream = BatchStream(c.split("train"), 3, 10, check=c.checker("train"))
        for index in (0, 1, 2, 40, 3):
            np.testing.assert_array_equal(stream.batch(0, index)[0], BatchStream(c.split("train"), 3, 10).batch(
                0, index)[0])


def test_shuffled_windows():
    tokens = np.arange(1001, dtype=np.uint16)
    bs = BatchStream(tokens, 4, 10, shuffle=True, seed=3)
    assert not bs.carries_state and bs.steps_per_epoch == 100 // 4
    starts0 = np.concatenate([bs.batch(0, i)[0][:, 0] for i in range(bs.steps_per_epoch)])
    assert len(set(starts0.tolist())) == len(starts0)  # no window twice in an epoch
    assert set((starts0 % 10).tolist()) == {0}
    starts1 = np.concatenate([bs.batch(1, i)[0][:, 0] for i in range(bs.steps_per_epoch)])
    assert not np.array_equal(starts0, starts1)
    again = BatchStream(tokens, 4, 10, shuffle=True, seed=3)
    np.testing.assert_array_equal(again.batch(1, 7)[0], bs.batch(1, 7)[0])  # reproducible from (seed, epoch)
    x, y = bs.batch(0, 0)
    np.testing.assert_array_equal(y, x + 1)


def test_split_too_small_for_one_sequence():
    with pytest.raises(ConfigError, match="val split has 50 tokens, too few .* \\(needs at least 321"):
        BatchStream(np.zeros(50, np.uint8), 32, 10, name="val")
    with pytest.raises(ConfigError):
        BatchStream(np.zeros(50, np.uint8), 0, 10)


def test_a_split_is_read_with_pread_and_nothing_is_mapped(tmp_path):
    """Corpus.split is a Split: its tokens read with pread when asked for (whole, sliced, by position), the file
    never memory-mapped (a map read past the end of a file cut short dies of SIGBUS)."""
    from fastrnn.corpus import Split

    text = "".join(chr(97 + (i * 7) % 26) for i in range(5000))
    (tmp_path / "t.txt").write_text(text)
    prepare([tmp_path / "t.txt"], tmp_path / "c.h5", val_frac=0.1, test_frac=0.1)
    with open_corpus(tmp_path / "c.h5") as c:
        train = c.split("train")
        assert isinstance(train, Split) and len(train) == train.size == train.shape[0] == 4000
        ids = np.asarray(train)
        assert c.vocab.decode(ids) == text[:4000] and ids.dtype == train.dtype
        head = train[:100]
        assert isinstance(head, Split) and len(head) == 100 and head.size == 100
        assert [int(t) for t in head] == ids[:100].tolist() and head[-1] == ids[99] and train[7] == ids[7]
        assert (np.asarray(train[10:20], dtype=np.int32) == ids[10:20]).all()
        positions = np.array([[3, 4, 5], [900, 901, 902], [17, 3, 3999]])
        assert (train[positions] == ids[positions]).all() and (train[::7] == ids[::7]).all()
        with pytest.raises(IndexError):
            train[4000]
        assert len(c.split("val")) == 500 and np.asarray(c.split("val")).size == 500
        if os.path.exists("/proc/self/maps"):
            with open("/proc/self/maps") as f:
                assert str(tmp_path / "c.h5") not in f.read()
