"""Opening a corpus: CORPUS.h5 as written by `prepare`, its splits read with pread.

A corpus is tokenized once by `prepare` into CORPUS.h5 and read at training time a minibatch at a time, so RAM does
not grow with the corpus:

    /train, /val, /test     (M,) uint8|uint16|uint32 token ids, contiguous and uncompressed
    /checksums/<split>      (K,) uint32 CRC-32 of each run of `checksum_chunk` tokens of the split (format 2)
    attrs                   fastrnn_corpus=1, format_version, vocab (JSON), config (JSON), sources (JSON),
                            created, checksum_chunk and meta_checksum (format 2: sha256 of the attributes and of
                            the splits' names, dtypes and lengths, see `meta_digest`)

Opening a corpus checks everything cheap at once: the datasets' types, shapes and extents and the global heaps
before anything is read (fastrnn.h5safe: some damage crashes or hangs the HDF5 library), the attributes against
meta_checksum, the chunk checksum arrays' lengths, and that every split lies inside the file (a truncated file is
refused before it is read). Opening a split checks that every id is inside the vocabulary (one pass, by pread).
Training reads its minibatches through `Corpus.checker(split).read` (BatchStream does): it checks each chunk's
CRC-32 the first time it is reached and reads the tokens with pread on the corpus's file descriptor, so a file cut
short while it is read is an error, never SIGBUS (as a memory map read past the end of its file would be: nothing
is mapped); `Corpus.read` reads any range so (scoring, the warm-up text of samples), and a `Split` when its tokens
are asked for.
`Corpus.verify` checks every chunk. A corpus of format 1 (no checksums) still opens, with the id check only.

Splits are taken from the end of the corpus: train is the first 1 - val_frac - test_frac of the tokens, then val,
then test. Tokens are Unicode code points (level 'char') or raw bytes (level 'byte'); the vocabulary is the set of
symbols that occur, sorted by code point, and ids index into it.
"""

import hashlib
import json
import numbers
import os
import zlib

import h5py
import numpy as np

from fastrnn.corpus.vocab import Vocab
from fastrnn.errors import ConfigError, CorpusError
from fastrnn.h5safe import check_global_heaps, dataset_extent, int_attr, str_attr

FORMAT_VERSION = 2  # 2: checksums; 1 (no checksums) is still read
SPLITS = ("train", "val", "test")
CHECK_CHUNK = 1 << 20  # tokens per checksummed chunk (one CRC-32 costs ~0.4 ms per MB)
META_ATTRS = ("format_version", "vocab", "config", "sources", "created", "checksum_chunk")
# what reading a damaged HDF5 file or its attributes can raise besides our own errors
_DAMAGE = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError, ArithmeticError,
           MemoryError)


def meta_digest(attrs, splits):
    """sha256 (hex) of the attributes META_ATTRS (dict name -> str) and the splits (name -> (dtype name, length))."""
    h = hashlib.sha256()
    for key in META_ATTRS:
        h.update(f"{key}\0{attrs[key]}\0".encode("utf-8", "surrogateescape"))
    for name in SPLITS:
        dtype, n = splits[name]
        h.update(f"{name}\0{dtype}\0{int(n)}\0".encode())
    return h.hexdigest()


def n_chunks(n, chunk):
    return -(-int(n) // int(chunk))


def _attr_text(f, key):
    """Attribute `key` of META_ATTRS as the text meta_digest takes (integers in decimal)."""
    return str(int_attr(f, key)) if key in ("format_version", "checksum_chunk") else str_attr(f, key)


class Corpus:
    """An open CORPUS.h5: `vocab`, `split(name)` (a Split), `read(name, start, length)` by pread, `info()`. Use
    `open_corpus`."""

    def __init__(self, path):
        self.path = path
        self._splits, self._checkers, self._fd = {}, {}, None
        try:
            if not os.path.exists(path):
                raise CorpusError(f"corpus {path} does not exist")
            if os.path.isdir(path):
                raise CorpusError(f"corpus {path} is a directory, not a corpus file")
            if not h5py.is_hdf5(path):
                raise CorpusError(f"{path} is not a corpus file (not HDF5); make one with `fastrnn prepare`")
            self._file = h5py.File(path, "r")
            self._fd = os.open(path, os.O_RDONLY)  # for the size checks and the reads of ChunkCheck.read
        except _DAMAGE as exc:
            self.close()
            raise CorpusError(f"cannot read corpus {path}: it is truncated or corrupt ({exc})") from None
        f = self._file
        try:
            if "fastrnn_checkpoint" in f.attrs:
                raise CorpusError(f"{path} is a fastrnn checkpoint, not a corpus")
            if "fastrnn_corpus" not in f.attrs:
                hint = ""
                if all(name in f for name in SPLITS):  # torch-rnn's preprocess.py writes these and nothing else
                    hint = (f"; if torch-rnn's preprocess.py made it, convert it with: fastrnn prepare "
                            f"--from-torch-rnn {path} NAME.json --output CORPUS.h5")
                raise CorpusError(f"{path} is an HDF5 file but not a fastrnn corpus{hint}")
            version = int_attr(f, "format_version")
            if version > FORMAT_VERSION:
                raise CorpusError(f"{path} has corpus format {version}; this fastrnn reads up to {FORMAT_VERSION}")
            for name in SPLITS:
                if name not in f:
                    raise CorpusError(f"{path} has no {name} split; the corpus is damaged")
            self._layout = {name: self._locate(name) for name in SPLITS}  # name -> (file offset, length, dtype)
            self._check_size()
            check_global_heaps(path, [(o, n * dt.itemsize) for o, n, dt in self._layout.values()])
            checked = version >= 2 or "meta_checksum" in f.attrs or "checksums" in f
            if checked:
                attrs = {key: _attr_text(f, key) for key in META_ATTRS}
                splits = {name: (f[name].dtype.name, f[name].shape[0]) for name in SPLITS}
                if meta_digest(attrs, splits) != str_attr(f, "meta_checksum"):
                    raise CorpusError(f"{path} is corrupt: the checksum of its metadata does not match; prepare "
                                      f"it again")
                self.chunk = int(attrs["checksum_chunk"])
                if self.chunk < 1:
                    raise CorpusError(f"{path} is corrupt: checksum chunk of {self.chunk} tokens")
                self._checksums = {}
                for name in SPLITS:
                    dataset_extent(f["checksums"][name], os.fstat(self._fd).st_size)
                    sums = f["checksums"][name][()]
                    if sums.dtype != np.uint32 or sums.shape != (n_chunks(splits[name][1], self.chunk),):
                        raise CorpusError(f"{path} is corrupt: the checksums of split {name} do not fit it")
                    self._checksums[name] = sums
            elif version != 1:
                raise CorpusError(f"{path} has an unknown corpus format {version}; the corpus is damaged")
            else:
                self.chunk, self._checksums = CHECK_CHUNK, None
            self.vocab = Vocab.from_dict(json.loads(str_attr(f, "vocab")))
            self.config = json.loads(str_attr(f, "config"))
            self.sources = json.loads(str_attr(f, "sources"))
            self.format_version = version
            self.created = str_attr(f, "created") if "created" in f.attrs else ""
            for name in SPLITS:
                if f[name].dtype != np.dtype(self.vocab.dtype):
                    raise CorpusError(f"{path}: split {name} holds {f[name].dtype} ids but the vocabulary of "
                                      f"{self.vocab.size} symbols needs {np.dtype(self.vocab.dtype)}; the corpus "
                                      f"is damaged")
        except CorpusError:
            self.close()
            raise
        except _DAMAGE as exc:
            self.close()
            raise CorpusError(f"{path} is a damaged corpus file ({type(exc).__name__}: {exc})") from None

    def _locate(self, name):
        """(file offset, length, dtype) of split `name`, checked to be a plain contiguous dataset."""
        d = self._file[name]
        if len(d.shape) != 1:
            raise CorpusError(f"{self.path}: split {name} is not a vector of token ids; the corpus is damaged")
        n = d.shape[0]
        offset = d.id.get_offset()
        if n and (offset is None or d.chunks is not None or d.compression):
            raise CorpusError(f"{self.path}: split {name} is not stored contiguously; prepare it again")
        dataset_extent(d, os.fstat(self._fd).st_size)
        return (offset or 0), n, d.dtype

    def _check_size(self):
        """Every split lies inside the file as it is now. One fstat: cheap enough for every minibatch."""
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise CorpusError(f"cannot read corpus {self.path}: {exc.strerror or exc}") from None
        for name, (offset, n, dtype) in self._layout.items():
            if n and offset + n * dtype.itemsize > size:
                raise CorpusError(f"{self.path} is truncated (split {name} runs past the end of the file, "
                                  f"{offset + n * dtype.itemsize:,} > {size:,} bytes)")

    def split(self, name):
        """The (M,) token ids of split `name` ('train', 'val' or 'test'), a Split: read with pread as they are
        asked for. The first call checks that every id is inside the vocabulary (one vectorised pass,
        `_check_ids`); the checksums are checked by `checker(name)`, which readers call before they use a range
        (BatchStream does)."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        if name not in self._splits:
            n = self._layout[name][1]
            if n:
                self._check_size()
                self._check_ids(name)
            self._splits[name] = Split(self, name, 0, n)
        return self._splits[name]

    ID_PASS = 1 << 20  # tokens per piece of the id pass

    def _check_ids(self, name):
        """CorpusError naming the file and byte offset of the first id of split `name` outside the vocabulary.
        Reads the whole split with pread, a piece at a time (a file cut short meanwhile is an error, not SIGBUS),
        ~0.2 s per GB from the page cache."""
        offset, n, dtype = self._layout[name]
        size = self.vocab.size
        if size >= 1 << (8 * dtype.itemsize):  # every value of the dtype is an id
            return
        check, buf = self.checker(name), np.empty(min(n, self.ID_PASS), dtype=dtype)
        for a in range(0, n, self.ID_PASS):
            piece = buf[: min(self.ID_PASS, n - a)]
            check._pread(piece, a)
            if int(piece.max()) >= size:
                i = int(np.argmax(piece >= size))
                raise CorpusError(f"{self.path} is damaged: token id {int(piece[i])} at byte offset "
                                  f"{offset + (a + i) * dtype.itemsize} (split {name}, token {a + i}) is outside "
                                  f"the vocabulary of {size} symbols; prepare it again")

    def read(self, name, start=0, length=None):
        """(k,) token ids of split `name` from token `start` (to its end, or `length` of them), read with pread: a
        file cut short is a CorpusError, never SIGBUS."""
        n = self.split(name).shape[0]
        start = min(max(int(start), 0), n)
        k = n - start if length is None else min(int(length), n - start)
        out = np.empty(max(k, 0), dtype=self._layout[name][2])
        if len(out):
            self.checker(name)._pread(out, start)
        return out

    def checker(self, name):
        """The ChunkCheck of split `name` (one per split and open corpus; it remembers the chunks checked)."""
        if name not in self._checkers:
            self._checkers[name] = ChunkCheck(self, name)
        return self._checkers[name]

    def verify(self):
        """Check every chunk of every split (checksums, ids in range); raises CorpusError at the first bad one.
        Returns {split: number of chunks checked}."""
        counts = {}
        for name in SPLITS:
            check = self.checker(name)
            for k in range(check.n_chunks):
                self._check_size()
                check.verify_chunk(k)
            counts[name] = check.n_chunks
        return counts

    def fingerprint(self):
        """(file size, metadata checksum): equal for every process that opened this very corpus (the ranks of a
        data-parallel run check it)."""
        meta = str_attr(self._file, "meta_checksum") if "meta_checksum" in self._file.attrs else ""
        return [int(os.fstat(self._fd).st_size), meta]

    def sizes(self):
        return {name: int(self._layout[name][1]) for name in SPLITS}

    def info(self):
        """A JSON-friendly description of the corpus."""
        sizes = self.sizes()
        return {"path": os.path.abspath(self.path), "format_version": self.format_version,
                "level": self.vocab.level, "vocab_size": self.vocab.size, "symbols": "".join(self.vocab.symbols),
                "dtype": self._layout["train"][2].name, "train_tokens": sizes["train"],
                "val_tokens": sizes["val"], "test_tokens": sizes["test"], "total_tokens": sum(sizes.values()),
                "sources": self.sources, "options": self.config, "created": self.created,
                "checksums": self._checksums is not None}

    def close(self):
        self._splits.clear()
        self._checkers.clear()
        if getattr(self, "_file", None) is not None:
            self._file.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ChunkCheck:
    """Called with the (R,) start positions and the length of the ranges a reader is about to read: checks that
    the file still holds every split (its size, every call) and, the first time a reader reaches a chunk of the
    split (CHECK_CHUNK tokens), every id in it is inside the vocabulary and, format 2, its CRC-32. Raises
    CorpusError naming the file and byte offset. `read` checks and reads the ranges with pread (a chunk is checked
    on a pread copy too), so a file truncated meanwhile is a CorpusError (where a memory map would die of SIGBUS)."""

    def __init__(self, corpus, name):
        self.corpus, self.name = corpus, name
        self.offset, self.n, self.dtype = corpus._layout[name]
        self.chunk = corpus.chunk
        self.sums = corpus._checksums[name] if corpus._checksums is not None else None
        self.n_chunks = n_chunks(self.n, self.chunk)
        self.done = np.zeros(self.n_chunks, dtype=bool)
        self.all_done = self.n_chunks == 0
        self.vocab_size = corpus.vocab.size
        self.ids_fit = self.vocab_size >= 1 << (8 * self.dtype.itemsize)  # every value of the dtype is an id
        self._buf = self._base = self._room = self._last = self._rows = self._cols = None  # read's buffers

    def __call__(self, starts, length):
        self.corpus._check_size()
        if self.all_done:
            return
        starts = np.asarray(starts, dtype=np.int64)
        first = starts // self.chunk
        last = np.minimum(starts + max(int(length), 1) - 1, self.n - 1) // self.chunk
        if self.done[first].all() and self.done[last].all() and (last - first).max(initial=0) <= 1:
            return
        for k in np.unique(np.concatenate([np.arange(a, b + 1) for a, b in zip(first, last)])):
            if not self.done[k]:
                self.verify_chunk(int(k))

    READ_AHEAD = 64 << 10  # bytes read ahead per row, at most (READ_BUFFER in all)
    READ_BUFFER = 8 << 20

    def read(self, starts, length):
        """(R, length) token ids of the split (its dtype) at the (R,) start positions, after `self(starts,
        length)`; read with pread. Every range must lie inside the split.
        CorpusError if the file has been cut short (or cannot be read) meanwhile.

        Each row has a buffer: a row that reads on from where its last range began (the char-rnn layout, where
        minibatch k+1 continues minibatch k) reads ahead up to READ_AHEAD bytes in one pread, and the next
        minibatches are copied from its buffer; any other range is one pread of its own tokens."""
        starts = np.asarray(starts, dtype=np.int64)
        length = int(length)
        self(starts, length)
        R = len(starts)
        if self._buf is None or self._buf.shape[0] != R or self._cols.shape[0] != length:
            ahead = max(length, min(self.READ_AHEAD, self.READ_BUFFER // max(R, 1)) // self.dtype.itemsize)
            self._buf = np.empty((R, ahead), dtype=self.dtype)
            self._base = np.zeros(R, dtype=np.int64)  # buffer row i holds the ranges that start at _base[i] + r,
            self._room = np.zeros(R, dtype=np.uint64)  # 0 <= r < _room[i] (0: none)
            self._last = np.full(R, -1, dtype=np.int64)
            self._rows = np.arange(R, dtype=np.int64) * ahead
            self._cols = np.arange(length, dtype=np.int64)
        buf, base, room, last = self._buf, self._base, self._room, self._last
        rel = starts - base
        miss = rel.view(np.uint64) >= room  # before its buffer (rel < 0: a huge unsigned) or past its end
        if miss.any():
            for i in np.flatnonzero(miss).tolist():
                s = int(starts[i])
                sequential = 0 < s - int(last[i]) <= length  # reads on from where its last range began
                n = min(buf.shape[1], self.n - s) if sequential else length
                self._pread(buf[i, :n], s)
                base[i], room[i] = s, n - length + 1
            rel = starts - base
        last[:] = starts
        return buf.ravel().take((self._rows + rel)[:, None] + self._cols)

    def _pread(self, row, start):
        """Fill the contiguous array `row` with the split's ids from token `start` on."""
        view, off = memoryview(row).cast("B"), self.offset + start * self.dtype.itemsize
        done, fd = 0, self.corpus._fd
        while done < len(view):
            try:
                got = _pread_into(fd, view[done:], off + done)
            except OSError as exc:
                raise CorpusError(f"cannot read corpus {self.corpus.path}: {exc.strerror or exc}") from None
            if got == 0:
                self.corpus._check_size()  # names the split that no longer fits
                raise CorpusError(f"{self.corpus.path} is truncated (it ends at byte {off + done:,}, inside split "
                                  f"{self.name})")
            done += got

    def verify_chunk(self, k):
        """Check chunk k now (CorpusError if it is bad), on a pread copy of it."""
        path, name = self.corpus.path, self.name
        a, b = k * self.chunk, min((k + 1) * self.chunk, self.n)
        seg = np.empty(b - a, dtype=self.dtype)
        self._pread(seg, a)
        where = self.offset + a * self.dtype.itemsize  # byte offset of the chunk in the file
        if not self.ids_fit:
            top = int(seg.max()) if len(seg) else 0
            if top >= self.vocab_size:
                i = int(np.argmax(seg >= self.vocab_size))
                raise CorpusError(f"{path} is damaged: token id {int(seg[i])} at byte offset "
                                  f"{where + i * self.dtype.itemsize} (split {name}, token {a + i}) is outside "
                                  f"the vocabulary of {self.vocab_size} symbols; prepare it again")
        if self.sums is not None and zlib.crc32(seg) != int(self.sums[k]):
            raise CorpusError(f"{path} is corrupt: checksum mismatch in split {name} between byte offsets {where} "
                              f"and {where + (b - a) * self.dtype.itemsize} (tokens {a}..{b - 1}); prepare it "
                              f"again")
        self.done[k] = True
        self.all_done = bool(self.done.all())


def _pread_into(fd, view, offset):
    """Read into the writable memoryview `view` from byte `offset` of file descriptor fd, without moving its file
    position where the platform allows; returns the number of bytes read (0 at the end of the file)."""
    if hasattr(os, "preadv"):  # Linux, the BSDs: straight into the buffer
        return os.preadv(fd, [view], offset)
    if hasattr(os, "pread"):  # macOS before preadv
        data = os.pread(fd, len(view), offset)
    else:  # Windows
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


class Split:
    """The (M,) token ids of a split of an open corpus (Corpus.split), read with pread when they are asked for,
    never mapped: a file cut short meanwhile is a CorpusError, not SIGBUS. It has len, size, shape and dtype;
    split[a:b] is the Split of those tokens (nothing is read), split[i] one token, split[positions] (an integer
    array) those tokens, np.asarray(split) all of them."""

    ndim = 1

    def __init__(self, corpus, name, start, stop):
        self.corpus, self.name, self.start, self.stop = corpus, name, int(start), int(stop)
        self.dtype = corpus._layout[name][2]

    def __len__(self):
        return self.stop - self.start

    @property
    def size(self):
        return len(self)

    @property
    def shape(self):
        return (len(self),)

    def _read(self, start, length):
        return self.corpus.read(self.name, self.start + start, length)

    def __array__(self, dtype=None, copy=None):
        a = self._read(0, len(self))
        return a if dtype is None else a.astype(dtype, copy=False)

    def __iter__(self):
        return iter(np.asarray(self))

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, slice):
            a, b, step = key.indices(n)
            if step == 1:
                return Split(self.corpus, self.name, self.start + a, self.start + max(a, b))
            return np.asarray(self)[key]
        if isinstance(key, numbers.Integral):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"token {key} outside a split of {n} tokens")
            return self._read(i, 1)[0]
        positions = np.asarray(key)
        if positions.dtype.kind not in "iu":
            raise TypeError(f"a split is indexed by a slice, an integer or integer positions, not {key!r}")
        if positions.size and (positions.min() < 0 or positions.max() >= n):
            raise IndexError(f"positions outside a split of {n} tokens")
        rows = positions.reshape(-1, positions.shape[-1] if positions.ndim else 1)
        out = np.empty(rows.shape, dtype=self.dtype)
        for r, row in enumerate(rows):  # each row one read of its span (a minibatch row: T + 1 tokens in a run)
            if row.size:
                lo = int(row.min())
                out[r] = self._read(lo, int(row.max()) + 1 - lo)[row - lo]
        return out.reshape(positions.shape)


def open_corpus(path):
    """Open CORPUS.h5 for reading (a context manager). Raises CorpusError if it is not a usable corpus."""
    return Corpus(os.fspath(path))


def info(path):
    with open_corpus(path) as c:
        return c.info()
