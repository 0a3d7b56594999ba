"""Writing a corpus file (its format: fastrnn.corpus.dataset) at the speed of the disk: the splits allocated up
front as contiguous datasets that HDF5 never fills, with the file's attributes (`new_file`), then the ids written
straight into the file at their offsets by a background thread that folds them into the chunks' checksums and
starts the disk writeback as it goes (`SplitWriter`). prepare (build.py) and prepare --from-torch-rnn
(torchrnn.py) write their corpora with it.
"""

import json
import os
import sys
import threading
import time
import zlib

import h5py
import numpy as np

from fastrnn.corpus.dataset import FORMAT_VERSION, SPLITS, meta_digest, n_chunks
from fastrnn.errors import CorpusError


def new_file(path, vocab, config, sources, check_chunk, sizes):
    """Create the corpus file `path` (it must not exist) with its attributes and its splits (`sizes`: split ->
    tokens) and their chunks' checksums allocated, not written. Returns what SplitWriter takes: (the splits' byte
    offsets, the checksums' byte offsets, the splits' global token bounds)."""
    dtype = vocab.dtype
    with h5py.File(path, "x") as f:
        offsets = [create_split(f, name, sizes[name], dtype) for name in SPLITS]
        sums = f.create_group("checksums")
        sum_offsets = [create_split(sums, name, n_chunks(sizes[name], check_chunk), np.uint32) for name in SPLITS]
        write_attrs(f, vocab, config, sources, check_chunk, sizes)
    return offsets, sum_offsets, np.cumsum([0] + [sizes[name] for name in SPLITS])


def write_attrs(f, vocab, config, sources, check_chunk, sizes):
    """The attributes of a corpus file (see fastrnn.corpus.dataset), with the checksum of them and of the splits'
    names, dtypes and lengths (`sizes`: split -> tokens)."""
    f.attrs["fastrnn_corpus"] = 1
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["vocab"] = json.dumps(vocab.to_dict())
    f.attrs["config"] = json.dumps(config)
    f.attrs["sources"] = json.dumps(sources)
    f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    f.attrs["checksum_chunk"] = check_chunk
    meta = {key: str(f.attrs[key]) for key in ("vocab", "config", "sources", "created")}
    meta.update(format_version=str(FORMAT_VERSION), checksum_chunk=str(check_chunk))
    f.attrs["meta_checksum"] = meta_digest(meta, {name: (np.dtype(vocab.dtype).name, sizes[name]) for name in SPLITS})


def create_split(f, name, n, dtype):
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


class SplitWriter:
    """Writes ids at global token positions into the splits' storage (byte offsets `offsets`, global bounds
    `bounds`) of a closed HDF5 file, from a background thread, starting the disk writeback as it goes so that
    the final fsync has little left to do. Id buffers circulate through a small pool: `buffer()` hands out a
    free one, `write(pos, buf, n)` queues buf[:n] and takes the buffer back when written."""

    POOL = 3
    SYNC_EVERY = 32 << 20  # start writeback after this many bytes

    def __init__(self, path, offsets, bounds, dtype, size, check_chunk, sum_offsets):
        import queue

        self.offsets, self.bounds, self.itemsize = offsets, bounds, np.dtype(dtype).itemsize
        # the CRC-32 of each run of check_chunk tokens of each split, accumulated as the ids are written (in order),
        # written at sum_offsets by finish()
        self.check_chunk, self.sum_offsets = check_chunk, sum_offsets
        self.sums = [np.zeros(n_chunks(b - a, check_chunk), dtype=np.uint32) for a, b in zip(bounds, bounds[1:])]
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
        """Wait for every queued write, write the chunks' checksums, then fsync the file."""
        self._stop()
        self._check()
        for offset, sums in zip(self.sum_offsets, self.sums):
            if len(sums):
                data = memoryview(sums.astype("<u4")).cast("B")
                while len(data):
                    done = os.pwrite(self.fd, data, offset)
                    data, offset = data[done:], offset + done
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
                self._checksum(k, int(a - self.bounds[k]), ids[a - pos: b - pos])
                data = memoryview(ids[a - pos: b - pos]).cast("B")
                while len(data):
                    done = os.pwrite(self.fd, data, where)
                    data, where = data[done:], where + done
                self.unsynced.append((offset + int(a - self.bounds[k]) * self.itemsize,
                                      int(b - a) * self.itemsize))
                self.unsynced_bytes += int(b - a) * self.itemsize
        if self.unsynced_bytes >= self.SYNC_EVERY:
            for offset, length in self.unsynced:
                start_writeback(self.fd, offset, length)
            self.unsynced, self.unsynced_bytes = [], 0

    def _checksum(self, k, start, ids):
        """Fold ids, the tokens of split k from position `start` on, into the CRC-32s of their chunks."""
        c, sums = self.check_chunk, self.sums[k]
        done = 0
        while done < len(ids):
            chunk = (start + done) // c
            end = min(len(ids), (chunk + 1) * c - start)
            sums[chunk] = zlib.crc32(ids[done:end], int(sums[chunk]))
            done = end

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._stop()
        finally:
            os.close(self.fd)


_SYNC_FILE_RANGE = []  # [libc function] or [None] once looked up


def start_writeback(fd, offset, length):
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
