"""Corpora: streaming text -> HDF5 tokenization, the vocabulary, memory-mapped splits and TBPTT batch streams.

A corpus is tokenized once by `prepare` into CORPUS.h5 and read at training time as read-only memory maps, so RAM
does not grow with the corpus:

    /train, /val, /test     (M,) uint8|uint16|uint32 token ids, contiguous and uncompressed (numpy.memmap-able)
    attrs                   fastrnn_corpus=1, format_version, vocab (JSON), config (JSON), sources (JSON)

Splits are taken from the end of the corpus: train is the first 1 - val_frac - test_frac of the tokens, then val,
then test. Tokens are Unicode code points (level 'char') or raw bytes (level 'byte'); the vocabulary is the set of
symbols that occur, sorted by code point, and ids index into it.

`prepare` reads its inputs twice in bounded chunks (pass 1 finds the vocabulary and the length, pass 2 writes the
ids); standard input is first spooled to a temporary file. Peak memory is a few chunks, whatever the corpus size.
"""

import codecs
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time

import h5py
import numpy as np

from fastrnn.errors import ConfigError, CorpusError, VocabError

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
CHUNK_SIZE = 4 << 20  # bytes of input per chunk
LEVELS = ("char", "byte")
ERRORS = ("strict", "replace", "ignore")
_ASCII_COMPATIBLE = {"utf-8", "ascii", "iso8859-1", "cp1252", "latin-1"}


def token_dtype(vocab_size):
    """The smallest unsigned integer type that holds ids 0..vocab_size-1."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise CorpusError(f"vocabulary of {vocab_size} symbols is too large")


# ---------------------------------------------------------------------------------------------------------------
# vocabulary


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


# ---------------------------------------------------------------------------------------------------------------
# reading inputs in chunks


def expand_inputs(inputs):
    """The list of files to read: files as given, directories walked (sorted, hidden entries and binary files
    skipped), '-' for standard input. Raises CorpusError for missing or unreadable inputs."""
    if not inputs:
        raise CorpusError("no input files given")
    files = []
    for item in inputs:
        item = os.fspath(item)
        if item == "-":
            files.append("-")
        elif os.path.isdir(item):
            found = []
            for root, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    path = os.path.join(root, name)
                    if not name.startswith(".") and os.path.isfile(path) and _looks_text(path):
                        found.append(path)
            if not found:
                raise CorpusError(f"directory {item} has no text files")
            files.extend(found)
        elif not os.path.exists(item):
            raise CorpusError(f"input {item} does not exist")
        elif not os.path.isfile(item):
            raise CorpusError(f"input {item} is not a regular file")
        elif not os.access(item, os.R_OK):
            raise CorpusError(f"input {item} is not readable (permission denied)")
        else:
            files.append(item)
    return files


def _looks_text(path):
    try:
        with open(path, "rb") as f:
            return b"\x00" not in f.read(8192)
    except OSError:
        return False


class _Normalizer:
    """Seed-000 style options on a stream of str chunks: lowercase; letters only (every run of non-letters
    becomes one space, no space at the start or end of the corpus)."""

    _NON_LETTERS = re.compile(r"[\W\d_]+")

    def __init__(self, lowercase, letters_only):
        self.lowercase, self.letters_only = lowercase, letters_only
        self.started = False  # a letter has been emitted
        self.pending_space = False

    def __call__(self, text):
        if self.lowercase:
            text = text.lower()
        if not self.letters_only:
            return text
        text = self._NON_LETTERS.sub(" ", text)
        if not text:
            return text
        lead = text[0] == " "
        trail = text[-1] == " "
        core = text.strip(" ")
        if not core:
            self.pending_space = self.pending_space or self.started
            return ""
        out = (" " if self.started and (lead or self.pending_space) else "") + core
        self.started = True
        self.pending_space = trail
        return out


def _read_chunks(path, chunk_size):
    """Yield (offset, bytes) chunks of a file."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            data = f.read(chunk_size)
            if not data:
                return
            yield offset, data
            offset += len(data)


def _code_chunks(files, *, level, encoding, errors, lowercase, letters_only, chunk_size, utf8_op, progress=None,
                 phase=""):
    """Yield the (M,) code points or byte values of the concatenated, normalized inputs, chunk by chunk.

    Strict UTF-8 without normalization (the common case) yields nothing: its bytes go to
    utf8_op((B,) uint8) -> (consumed, status), a fused numba loop (textscan.utf8_check_*) that validates them and
    counts or maps their code points. Raises CorpusError naming the file and byte offset of a NUL byte or
    (errors='strict') invalid text.
    """
    total = sum(os.path.getsize(f) for f in files)
    done = 0
    codec = codecs.lookup(encoding).name
    wide = codec.startswith(("utf-16", "utf-32"))
    plain = not lowercase and not letters_only
    for path in files:
        if level == "byte":
            chunks = _byte_chunks(path, chunk_size, lowercase)
        elif plain and codec == "utf-8" and errors == "strict":
            chunks = _utf8_chunks(path, chunk_size, utf8_op)
        else:
            chunks = _decoded_chunks(path, chunk_size, codec, errors, _Normalizer(lowercase, letters_only),
                                     ascii_ok=plain and codec in _ASCII_COMPATIBLE, wide=wide)
        for nbytes, codes in chunks:
            if codes is not None and len(codes):
                yield codes
            done += nbytes
            if progress:
                progress(phase, done, total)


def _check_nul(path, offset, data):
    nul = data.find(b"\x00")
    if nul >= 0:
        raise CorpusError(f"{path} looks like a binary file: NUL byte at byte offset {offset + nul}")


def _byte_chunks(path, chunk_size, lowercase):
    for offset, data in _read_chunks(path, chunk_size):
        _check_nul(path, offset, data)
        yield len(data), np.frombuffer(data.lower() if lowercase else data, dtype=np.uint8)


def _invalid(path, encoding, reason, offset):
    return CorpusError(f"{path} is not valid {encoding} text: {reason} at byte offset {offset} (use --errors "
                       f"replace or ignore, or --encoding)")


def _utf8_chunks(path, chunk_size, utf8_op):
    """Strict UTF-8 without normalization (the common case): one reused buffer, read into, handed to utf8_op,
    which validates (numba) and counts or maps. Yields (bytes read, None) per chunk."""
    from fastrnn.textscan import OK

    buf = np.empty(chunk_size + 4, dtype=np.uint8)  # the bytes of a character cut by the boundary, then a chunk
    view = memoryview(buf)
    pending = 0  # bytes carried at buf[:pending]
    offset = 0  # file offset of buf[pending]
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view[pending: pending + chunk_size])
            if not n:
                break
            end = pending + n
            consumed, status = utf8_op(buf[:end])
            if status != OK:
                raise _utf8_error(path, buf, pending, end, offset, consumed, status)
            rest = end - consumed
            buf[:rest] = buf[consumed:end].copy()
            pending = rest
            offset += n
            yield n, None
    if pending:
        raise _invalid(path, "utf-8", "unexpected end of data", offset - pending)


def _utf8_error(path, buf, pending, end, offset, pos, status):
    """The CorpusError for a NUL byte or invalid UTF-8 found at buf[pos] (buf[:pending] carried over, the chunk
    at buf[pending:end] read from file offset `offset`): the first NUL byte of the chunk, else the codec's own
    reason and offset."""
    from fastrnn.textscan import NUL

    base = offset - pending  # file offset of buf[0]
    if status == NUL:
        return CorpusError(f"{path} looks like a binary file: NUL byte at byte offset {base + pos}")
    nul = buf[pending:end].tobytes().find(b"\x00")
    if nul >= 0:
        return CorpusError(f"{path} looks like a binary file: NUL byte at byte offset {offset + nul}")
    try:
        codecs.utf_8_decode(buf[:end].tobytes(), "strict", False)
    except UnicodeDecodeError as exc:
        return _invalid(path, "utf-8", exc.reason, base + exc.start)
    return _invalid(path, "utf-8", "invalid byte", base + pos)  # not reached: the loops reject what the codec does


def _decoded_chunks(path, chunk_size, codec, errors, norm, ascii_ok, wide):
    """Any encoding, error policy and normalization, through Python's incremental decoder."""
    decoder = codecs.getincrementaldecoder(codec)(errors)
    for offset, data in _read_chunks(path, chunk_size):
        if not wide:
            _check_nul(path, offset, data)
        if ascii_ok and data.isascii() and not decoder.getstate()[0]:
            yield len(data), np.frombuffer(data, dtype=np.uint8)
            continue
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise _invalid(path, codec, exc.reason, offset - pending + exc.start) from None
        if wide and "\x00" in text:
            raise CorpusError(f"{path} looks like a binary file: NUL character near byte offset {offset}")
        yield len(data), _codepoints(norm(text))
    pending = len(decoder.getstate()[0])
    try:
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise _invalid(path, codec, exc.reason, os.path.getsize(path) - pending + exc.start) from None
    yield 0, _codepoints(norm(tail))


# ---------------------------------------------------------------------------------------------------------------
# prepare


def prepare(inputs, output, *, level="char", val_frac=0.05, test_frac=0.05, lowercase=False, letters_only=False,
            encoding="utf-8", errors="strict", force=False, chunk_size=CHUNK_SIZE, progress=None):
    """Tokenize text files into CORPUS.h5 at `output`. Returns the info dict of the written corpus.

    inputs: paths of files or directories, or '-' for standard input, read in order and concatenated.
    The file is written to a temporary name beside `output` and renamed at the end: an interrupted or failed
    prepare leaves no partial output and never touches an existing file (which is refused unless force=True).
    progress: optional callable(phase, bytes_done, bytes_total).
    """
    output = os.fspath(output)
    if level not in LEVELS:
        raise ConfigError(f"--level must be char or byte, not {level!r}")
    if errors not in ERRORS:
        raise ConfigError(f"--errors must be one of {', '.join(ERRORS)}, not {errors!r}")
    for name, frac in (("--val-frac", val_frac), ("--test-frac", test_frac)):
        if not 0 <= frac < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {frac}")
    if val_frac + test_frac >= 1:
        raise ConfigError(f"--val-frac + --test-frac must be below 1, got {val_frac + test_frac}")
    if level == "byte" and letters_only:
        raise ConfigError("--letters-only works on characters; use it with --level char")
    if chunk_size < 16:
        raise ConfigError("chunk size must be at least 16 bytes")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(f"unknown encoding {encoding!r}") from None
    if os.path.isdir(output):
        raise CorpusError(f"output {output} is a directory")
    if os.path.exists(output) and not force:
        raise CorpusError(f"output {output} exists; add --force to overwrite it")
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise CorpusError(f"output directory {out_dir} does not exist")

    _limit_malloc_retention()
    from fastrnn.textscan import count_codes, map_codes, utf8_check_count, utf8_check_map

    spool = None
    try:
        files = []
        for f in expand_inputs(inputs):
            if f == "-":
                spool = spool or _spool_stdin(out_dir)
                files.append(spool)
            else:
                if os.path.exists(output) and os.path.samefile(f, output):
                    raise CorpusError(f"output {output} is also an input")
                files.append(f)
        opts = dict(level=level, encoding=encoding, errors=errors, lowercase=lowercase, letters_only=letters_only,
                    chunk_size=chunk_size, progress=progress)

        # pass 1: vocabulary and length
        counts = np.zeros(256 if level == "byte" else sys.maxunicode + 1, dtype=np.int64)  # (codes,)
        total = 0

        def scan_utf8(data):
            nonlocal total
            n, consumed, status = utf8_check_count(data, counts)
            total += n
            return consumed, status

        for codes in _code_chunks(files, phase="scan", utf8_op=scan_utf8, **opts):
            count_codes(codes, counts)
            total += len(codes)
        if total == 0:
            raise CorpusError(f"the corpus is empty ({', '.join(_names(inputs))})")
        if total < 2:
            raise CorpusError("the corpus has a single symbol; it needs at least two to learn from")
        vocab = Vocab(np.flatnonzero(counts), level)
        n_val, n_test = int(total * val_frac), int(total * test_frac)
        sizes = {"train": total - n_val - n_test, "val": n_val, "test": n_test}
        dtype = vocab.dtype
        lut = np.zeros(len(counts), dtype=dtype)  # code -> id
        lut[vocab.codes] = np.arange(vocab.size, dtype=dtype)

        # pass 2: ids into the splits
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(output) + ".", suffix=".tmp", dir=out_dir)
        os.close(fd)
        try:
            # The splits are contiguous datasets allocated up front (no fill) whose ids are written straight into
            # the file at their offsets by a background thread while this one reads and maps the next chunk.
            with h5py.File(tmp, "w") as f:
                offsets = [_create_split(f, name, sizes[name], dtype) for name in SPLITS]
                config = {"level": level, "val_frac": val_frac, "test_frac": test_frac, "lowercase": lowercase,
                          "letters_only": letters_only, "encoding": encoding, "errors": errors}
                sources = [{"path": "<stdin>" if p == spool else os.path.abspath(p), "bytes": os.path.getsize(p)}
                           for p in files]
                f.attrs["fastrnn_corpus"] = 1
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["vocab"] = json.dumps(vocab.to_dict())
                f.attrs["config"] = json.dumps(config)
                f.attrs["sources"] = json.dumps(sources)
                f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            bounds = np.cumsum([0] + [sizes[name] for name in SPLITS])
            with _SplitWriter(tmp, offsets, bounds, dtype, chunk_size + 4) as writer:
                pos = 0
                ids = writer.buffer()

                def write_utf8(data):
                    nonlocal pos, ids
                    n, consumed, status = utf8_check_map(data, lut, ids)
                    if n:
                        writer.write(pos, ids, n)
                        pos += n
                        ids = writer.buffer()
                    return consumed, status

                for codes in _code_chunks(files, phase="write", utf8_op=write_utf8, **opts):
                    if len(codes) > len(ids):  # lowercasing can lengthen text
                        ids = np.empty(len(codes), dtype=dtype)
                    map_codes(codes, lut, ids)
                    writer.write(pos, ids, len(codes))
                    pos += len(codes)
                    ids = writer.buffer()
                if pos != total:
                    raise CorpusError("an input changed while it was being read; run prepare again")
                writer.finish()  # all written and on disk (fsync)
            os.replace(tmp, output)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    finally:
        if spool:
            with contextlib.suppress(OSError):
                os.unlink(spool)
    return info(output)


def _limit_malloc_retention():
    """Keep glibc from growing its mmap threshold as chunk-sized buffers come and go: with the default dynamic
    threshold, freed multi-MB buffers stay in the heap and peak RSS grows to several times the chunk size."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: 1 MB, fixed
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _names(inputs):
    return [os.fspath(i) for i in inputs]


def _create_split(f, name, n, dtype):
    """Create split `name` of n ids in HDF5 file f as a contiguous dataset whose storage is allocated now and
    never filled; returns its byte offset in the file (None when n == 0)."""
    from h5py import h5d, h5p, h5s, h5t

    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_layout(h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5d.FILL_TIME_NEVER)
    d = h5d.create(f.id, name.encode(), h5t.py_create(np.dtype(dtype)), h5s.create_simple((n,)), dcpl=dcpl)
    offset = d.get_offset()
    if n and offset is None:
        raise CorpusError(f"HDF5 did not allocate the {name} split")
    return offset


class _SplitWriter:
    """Writes ids at global token positions into the splits' storage (byte offsets `offsets`, global bounds
    `bounds`) of a closed HDF5 file, from a background thread, starting the disk writeback as it goes so that
    the final fsync has little left to do. Id buffers circulate through a small pool: `buffer()` hands out a
    free one, `write(pos, buf, n)` queues buf[:n] and takes the buffer back when written."""

    POOL = 3
    SYNC_EVERY = 32 << 20  # start writeback after this many bytes

    def __init__(self, path, offsets, bounds, dtype, size):
        import queue
        import threading

        self.offsets, self.bounds, self.itemsize = offsets, bounds, np.dtype(dtype).itemsize
        self.fd = os.open(path, os.O_WRONLY)
        self.free, self.todo = queue.Queue(), queue.Queue()
        for _ in range(self.POOL):
            self.free.put(np.empty(size, dtype=dtype))
        self.error = None
        self.unsynced = []  # (offset, length) written since the last writeback start
        self.unsynced_bytes = 0
        self.thread = threading.Thread(target=self._run, name="fastrnn-prepare-writer", daemon=True)
        self.thread.start()

    def buffer(self):
        self._check()
        return self.free.get()

    def write(self, pos, buf, n):
        self._check()
        self.todo.put((pos, buf, n))

    def finish(self):
        """Wait for every queued write, then fsync the file."""
        self._stop()
        self._check()
        os.fsync(self.fd)

    def _check(self):
        if self.error is not None:
            raise self.error

    def _stop(self):
        if self.thread is not None:
            self.todo.put(None)
            self.thread.join()
            self.thread = None

    def _run(self):
        while True:
            item = self.todo.get()
            if item is None:
                return
            pos, buf, n = item
            try:
                if self.error is None:
                    self._write(pos, buf[:n])
            except BaseException as exc:  # reported to the main thread at its next call
                self.error = exc
            finally:
                self.free.put(buf)

    def _write(self, pos, ids):
        end = pos + len(ids)
        for k, offset in enumerate(self.offsets):
            a, b = max(pos, self.bounds[k]), min(end, self.bounds[k + 1])
            if a < b:
                where = offset + int(a - self.bounds[k]) * self.itemsize
                data = memoryview(ids[a - pos: b - pos]).cast("B")
                while len(data):
                    done = os.pwrite(self.fd, data, where)
                    data, where = data[done:], where + done
                self.unsynced.append((offset + int(a - self.bounds[k]) * self.itemsize,
                                      int(b - a) * self.itemsize))
                self.unsynced_bytes += int(b - a) * self.itemsize
        if self.unsynced_bytes >= self.SYNC_EVERY:
            for offset, length in self.unsynced:
                _start_writeback(self.fd, offset, length)
            self.unsynced, self.unsynced_bytes = [], 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._stop()
        finally:
            os.close(self.fd)


_SYNC_FILE_RANGE = []  # [libc function] or [None] once looked up


def _start_writeback(fd, offset, length):
    """Start writing the dirty pages of a file range to disk without waiting (Linux sync_file_range with
    SYNC_FILE_RANGE_WRITE); a no-op elsewhere. Durability still comes from the fsync at the end."""
    if not _SYNC_FILE_RANGE:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            except (OSError, AttributeError):
                fn = None
        _SYNC_FILE_RANGE.append(fn)
    fn = _SYNC_FILE_RANGE[0]
    if fn is not None:
        fn(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; errors are left to the final fsync


def _spool_stdin(out_dir):
    fd, path = tempfile.mkstemp(prefix=".fastrnn-stdin.", dir=out_dir)
    with os.fdopen(fd, "wb") as f:
        shutil.copyfileobj(sys.stdin.buffer, f, CHUNK_SIZE)
    return path


# ---------------------------------------------------------------------------------------------------------------
# reading a corpus


class Corpus:
    """An open CORPUS.h5: `vocab`, `split(name)` as read-only memory maps, `info()`. Use `open_corpus`."""

    def __init__(self, path):
        self.path = path
        try:
            if not os.path.exists(path):
                raise CorpusError(f"corpus {path} does not exist")
            if os.path.isdir(path):
                raise CorpusError(f"corpus {path} is a directory, not a corpus file")
            if not h5py.is_hdf5(path):
                raise CorpusError(f"{path} is not a corpus file (not HDF5); make one with `fastrnn prepare`")
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise CorpusError(f"cannot read corpus {path}: it is truncated or corrupt ({exc})") from None
        f = self._file
        try:
            if "fastrnn_checkpoint" in f.attrs:
                raise CorpusError(f"{path} is a fastrnn checkpoint, not a corpus")
            if "fastrnn_corpus" not in f.attrs:
                raise CorpusError(f"{path} is an HDF5 file but not a fastrnn corpus")
            version = int(f.attrs["format_version"])
            if version > FORMAT_VERSION:
                raise CorpusError(f"{path} has corpus format {version}; this fastrnn reads up to {FORMAT_VERSION}")
            self.vocab = Vocab.from_dict(json.loads(f.attrs["vocab"]))
            self.config = json.loads(f.attrs["config"])
            self.sources = json.loads(f.attrs["sources"])
            self.format_version = version
            self.created = str(f.attrs.get("created", ""))
            for name in SPLITS:
                if name not in f:
                    raise CorpusError(f"{path} has no {name} split; the corpus is damaged")
        except CorpusError:
            f.close()
            raise
        except (KeyError, ValueError, OSError) as exc:
            f.close()
            raise CorpusError(f"{path} is a damaged corpus file ({exc})") from None
        self._maps = {}

    def split(self, name):
        """(M,) read-only memory-mapped token ids of split `name` ('train', 'val' or 'test')."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        if name not in self._maps:
            d = self._file[name]
            n = d.shape[0]
            offset = d.id.get_offset()
            if n == 0:
                arr = np.zeros(0, dtype=d.dtype)
            elif offset is None or d.chunks is not None or d.compression:
                raise CorpusError(f"{self.path}: split {name} is not stored contiguously; prepare it again")
            else:
                if offset + n * d.dtype.itemsize > os.path.getsize(self.path):
                    raise CorpusError(f"{self.path} is truncated (split {name} runs past the end of the file)")
                arr = np.memmap(self.path, dtype=d.dtype, mode="r", offset=offset, shape=(n,))
            self._maps[name] = arr
        return self._maps[name]

    def release_pages(self):
        """Drop the pages of the split memory maps opened so far from this process's resident set (see
        `release_pages`); the maps stay valid. Returns the number of mapped bytes advised (0 where unsupported)."""
        return sum(release_pages(arr) for arr in self._maps.values())

    def sizes(self):
        return {name: int(self._file[name].shape[0]) for name in SPLITS}

    def info(self):
        """A JSON-friendly description of the corpus."""
        sizes = self.sizes()
        return {"path": os.path.abspath(self.path), "format_version": self.format_version,
                "level": self.vocab.level, "vocab_size": self.vocab.size, "symbols": "".join(self.vocab.symbols),
                "dtype": self._file["train"].dtype.name, "train_tokens": sizes["train"],
                "val_tokens": sizes["val"], "test_tokens": sizes["test"], "total_tokens": sum(sizes.values()),
                "sources": self.sources, "options": self.config, "created": self.created}

    def close(self):
        self._maps.clear()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def release_pages(array):
    """Drop the pages of the read-only numpy.memmap `array` (a Corpus.split map or a slice of one) from
    this process's resident set, without unmapping: madvise(MADV_DONTNEED) on the whole mapping. The data stay
    in the OS page cache, so reading them again costs a minor page fault, not disk I/O; the array stays valid.

    File-backed pages a process has touched count in its RSS, so a long pass over a memory-mapped split makes RSS
    grow towards the split's size; calling this now and then keeps it flat. Cheap (one system call; the cost is
    the pages it unmaps). Returns the number of mapped bytes advised: 0, doing nothing, for arrays that are not
    backed by a read-only memory map, closed maps, and platforms without madvise.
    """
    import mmap

    advice = getattr(mmap, "MADV_DONTNEED", None)
    m = getattr(array, "_mmap", None)  # numpy.memmap and its views
    if m is None or advice is None or not hasattr(m, "madvise"):
        return 0
    if getattr(array, "mode", None) != "r":  # a copy-on-write map would lose its changes
        return 0
    try:
        m.madvise(advice)
        return len(m)
    except (ValueError, OSError):  # closed, or the system refused: nothing to release
        return 0


def open_corpus(path):
    """Open CORPUS.h5 for reading (a context manager). Raises CorpusError if it is not a usable corpus."""
    return Corpus(os.fspath(path))


def info(path):
    with open_corpus(path) as c:
        return c.info()


# ---------------------------------------------------------------------------------------------------------------
# TBPTT batch streams


class BatchStream:
    """Minibatches of (inputs, targets) over a split of M tokens, for truncated BPTT.

    Default (char-rnn layout): the split is cut into N contiguous streams of S = (M - 1) // N tokens; minibatch
    `index` of an epoch holds, for stream i, tokens[i*S + index*T : ... + T] as inputs and the same shifted by one
    as targets, so consecutive minibatches continue every stream and the hidden state can be carried. An epoch
    is steps_per_epoch = S // T minibatches; every epoch is the same sequence of minibatches.

    shuffle=True: the split is cut into windows of T + 1 tokens (starting every T tokens) and each epoch visits
    them in an order drawn from (seed, epoch); no state carries between minibatches (`carries_state` False).

    `batch(epoch, index)` is random access, which is what an exact resume needs; nothing is copied but the
    N*(T+1) tokens of the minibatch.
    """

    def __init__(self, tokens, batch_size, seq_len, *, shuffle=False, seed=0, name="train"):
        self.tokens = tokens  # (M,) memory map or array
        self.batch_size, self.seq_len, self.shuffle, self.seed, self.name = int(batch_size), int(seq_len), \
            bool(shuffle), int(seed), name
        N, T, M = self.batch_size, self.seq_len, len(tokens)
        if N <= 0 or T <= 0:
            raise ConfigError(f"batch size and sequence length must be positive (got {N} and {T})")
        if shuffle:
            self.windows = (M - 1) // T
            self.steps_per_epoch = self.windows // N
        else:
            self.stream_len = (M - 1) // N  # S
            self.steps_per_epoch = self.stream_len // T
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the {name} split has {M} tokens, too few for one minibatch of batch size {N} x "
                              f"sequence length {T} (needs at least {N * T + 1}); use a smaller --batch-size or "
                              f"--seq-len, or a larger corpus")
        self._offsets = np.arange(T + 1, dtype=np.int64)  # (T+1,)
        self._perm_epoch, self._perm = None, None

    @property
    def carries_state(self):
        return not self.shuffle

    def starts(self, epoch, index):
        """(N,) int64 start positions of the rows of minibatch `index` in epoch `epoch`."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"minibatch index {index} outside 0..{self.steps_per_epoch - 1}")
        N, T = self.batch_size, self.seq_len
        if not self.shuffle:
            return np.arange(N, dtype=np.int64) * self.stream_len + index * T
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.windows)
            self._perm_epoch = epoch
        return self._perm[index * N: (index + 1) * N].astype(np.int64) * T

    def batch(self, epoch, index):
        """(x, y): (N, T) int32 inputs and targets (targets are inputs shifted by one) of minibatch `index`."""
        pos = self.starts(epoch, index)[:, None] + self._offsets  # (N, T+1)
        rows = np.asarray(self.tokens[pos], dtype=np.int32)  # (N, T+1) reads only these tokens from the map
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])

    def iterate(self, start_epoch=0, start_index=0, epochs=None):
        """Yield (epoch, index, x, y) from (start_epoch, start_index) on, for `epochs` epochs or forever."""
        epoch, index = start_epoch, start_index
        while epochs is None or epoch < start_epoch + epochs:
            yield epoch, index, *self.batch(epoch, index)
            index += 1
            if index == self.steps_per_epoch:
                epoch, index = epoch + 1, 0
