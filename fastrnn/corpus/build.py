"""`prepare`: streaming text -> CORPUS.h5 (the format is described in fastrnn.corpus.dataset).

`prepare` reads its inputs twice in bounded chunks (pass 1 finds the vocabulary and the length, pass 2 writes the
ids); standard input is first spooled to a temporary file. Peak memory is a few chunks, whatever the corpus size.
"""

import codecs
import contextlib
import json
import os
import sys
import tempfile
import time

import h5py
import numpy as np

from fastrnn.corpus.dataset import FORMAT_VERSION, SPLITS, info
from fastrnn.corpus.inputs import CHUNK_SIZE, ERRORS, _code_chunks, _spool_stdin, expand_inputs
from fastrnn.corpus.vocab import LEVELS, Vocab
from fastrnn.errors import ConfigError, CorpusError


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

    restore_malloc = _limit_malloc_retention()
    spool = None
    try:
        from fastrnn.textscan import count_codes, map_codes, utf8_check_count, utf8_check_map

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
        restore_malloc()
        if spool:
            with contextlib.suppress(OSError):
                os.unlink(spool)
    return info(output)


M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)
PREPARE_MMAP_THRESHOLD = 1 << 20  # 1 MB, fixed while prepare runs
DEFAULT_MMAP_THRESHOLD = 128 * 1024  # glibc's documented initial M_MMAP_THRESHOLD (mallopt(3))


def _limit_malloc_retention():
    """Keep glibc from growing its mmap threshold as chunk-sized buffers come and go: with the default dynamic
    threshold, freed multi-MB buffers stay in the heap and peak RSS grows to several times the chunk size. Sets
    M_MMAP_THRESHOLD to 1 MB and returns the function that puts it back, which prepare calls on every way out.

    mallopt can neither read the current threshold nor switch glibc's dynamic adjustment back on once any
    M_MMAP_THRESHOLD has been set, so "back" is the best glibc allows: the value of MALLOC_MMAP_THRESHOLD_ or
    the glibc.malloc.mmap_threshold tunable if the process started with one (then it is exact), otherwise the
    documented initial 128 KiB, which then stays fixed: after the first prepare, blocks above 128 KiB are always
    mmap'ed and freed back to the system, where glibc would have raised the threshold as large blocks were freed.
    Not glibc: nothing is tuned and the returned function does nothing.
    """
    if not _mallopt(M_MMAP_THRESHOLD, PREPARE_MMAP_THRESHOLD):
        return lambda: None
    return lambda: _mallopt(M_MMAP_THRESHOLD, _startup_mmap_threshold())


def _mallopt(param, value):
    """glibc's mallopt(param, value); True if it took the setting, False where it refused or there is no glibc."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):
        return False


def _startup_mmap_threshold(environ=os.environ):
    """The M_MMAP_THRESHOLD this process started with if its environment fixed one (glibc reads
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=N and MALLOC_MMAP_THRESHOLD_=N at startup; given both, this takes
    the tunable), else glibc's documented initial value."""
    for item in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = item.partition("=")
        if name == "glibc.malloc.mmap_threshold":
            with contextlib.suppress(ValueError):
                return int(value, 0)
    with contextlib.suppress(ValueError):
        return int(environ.get("MALLOC_MMAP_THRESHOLD_", ""))
    return DEFAULT_MMAP_THRESHOLD


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
