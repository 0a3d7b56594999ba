"""`prepare`: streaming text -> CORPUS.h5 (the format is described in fastrnn.corpus.dataset).

`prepare` reads its inputs twice in bounded chunks (pass 1 finds the vocabulary and the length, pass 2 writes the
ids); standard input is first spooled to a temporary file. Peak memory is a few chunks, whatever the corpus size.

One writer per output: prepare holds an exclusive lock (flock) on `.OUTPUT.lock` beside the output while it runs
(the OS releases it if the process dies); a second prepare to the same output is refused, naming the holder's PID.
Its temporary files are `.OUTPUT.<pid>.prepare.tmp` and `.OUTPUT.<pid>.stdin.tmp`; SIGINT, SIGTERM and SIGHUP
remove them (exit 130, 143, 129), and the next prepare in that directory removes those of a process that is gone
(kill -9) whose output no live prepare holds.
"""

import codecs
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import zlib

import h5py
import numpy as np

from fastrnn.corpus.dataset import CHECK_CHUNK, FORMAT_VERSION, SPLITS, info, meta_digest, n_chunks
from fastrnn.corpus.inputs import CHUNK_SIZE, ERRORS, _code_chunks, _spool_stdin, expand_inputs
from fastrnn.corpus.vocab import LEVELS, Vocab
from fastrnn.errors import ConfigError, CorpusError, VocabError
from fastrnn.guards import Busy, FileLock, NoLocks, SignalGuard


class PrepareInterrupted(CorpusError):
    """prepare stopped by SIGINT, SIGTERM or SIGHUP (exit status 128 + the signal's number, as a shell reports it)."""

    def __init__(self, signum, output):
        super().__init__(f"prepare interrupted by {signal.Signals(signum).name}: {output} was not written, and its "
                         f"temporary files were removed")
        self.exit_code = 128 + signum


UNKNOWN = ("error", "skip", "replace")


def prepare(inputs, output, *, level="char", val_frac=0.05, test_frac=0.05, lowercase=False, letters_only=False,
            encoding="utf-8", errors="strict", force=False, chunk_size=CHUNK_SIZE, progress=None,
            check_chunk=CHECK_CHUNK, vocab=None, vocab_from=None, unknown="error", replace_with=None):
    """Tokenize text files into CORPUS.h5 at `output`. Returns the info dict of the written corpus.

    inputs: paths of files or directories, or '-' for standard input, read in order and concatenated.
    vocab: a Vocab to tokenize with instead of the symbols that occur (fine-tuning: ids identical to those of the
    corpus or model it came from, named by `vocab_from` in errors and in the corpus's options). A symbol outside
    it is a VocabError naming the first one and its position (unknown='error'), is left out ('skip') or becomes
    `replace_with`, a symbol of the vocabulary ('replace').
    The file is written to a temporary name beside `output` and renamed at the end: an interrupted or failed
    prepare leaves no partial output and never touches an existing file (which is refused unless force=True).
    progress: optional callable(phase, bytes_done, bytes_total).
    check_chunk: tokens per checksummed chunk of the splits.
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
    fixed = _FixedVocab(vocab, vocab_from, level, unknown, replace_with) if vocab is not None else None
    if vocab is None and (unknown != "error" or replace_with is not None):
        raise ConfigError("--unknown and --replace-with choose what happens to symbols outside a given "
                          "vocabulary; use them with --vocab-from")
    if check_chunk < 1:
        raise ConfigError("the checksum chunk must be at least 1 token")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(f"unknown encoding {encoding!r}") from None
    if os.path.isdir(output):
        raise CorpusError(f"output {output} is a directory")
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise CorpusError(f"output directory {out_dir} does not exist")
    with _Signals(output) as signals, _OutputLock(output):
        if os.path.exists(output) and not force:
            raise CorpusError(f"output {output} exists; add --force to overwrite it")
        _remove_stale_temps(output)
        _write(inputs, output, out_dir, signals, level=level, val_frac=val_frac, test_frac=test_frac,
               lowercase=lowercase, letters_only=letters_only, encoding=encoding, errors=errors,
               chunk_size=chunk_size, progress=progress, check_chunk=check_chunk, fixed=fixed)
    return info(output)


class _FixedVocab:
    """A vocabulary given to prepare (--vocab-from) and what to do with the symbols outside it."""

    def __init__(self, vocab, source, level, unknown, replace_with):
        if unknown not in UNKNOWN:
            raise ConfigError(f"--unknown must be one of {', '.join(UNKNOWN)}, not {unknown!r}")
        self.vocab, self.source, self.unknown = vocab, source or "the given vocabulary", unknown
        if vocab.level != level:
            raise ConfigError(f"{self.source} has a {vocab.level}-level vocabulary; prepare with --level "
                              f"{vocab.level} (or leave --level out)")
        self.replace_id = None
        if unknown == "replace":
            if replace_with is None or len(replace_with) != 1:
                raise ConfigError("--unknown replace needs --replace-with, one symbol of the vocabulary")
            code = ord(replace_with)
            where = np.flatnonzero(vocab.codes == code)
            if not where.size:
                raise ConfigError(f"--replace-with {_show_code(code, level)} is not in the vocabulary of "
                                  f"{self.source} ({vocab.size} symbols)")
            self.replace_id = int(where[0])
        elif replace_with is not None:
            raise ConfigError("--replace-with applies to --unknown replace")

    def outside(self, counts):
        """(K,) int64 codes that occur (counts > 0) and are not in the vocabulary."""
        return np.setdiff1d(np.flatnonzero(counts), self.vocab.codes)

    def lut(self, size, dtype, outside):
        """code -> id over `size` codes: the vocabulary's ids, `outside` codes replaced (or -1 when skipped)."""
        lut = np.full(size, -1, dtype=dtype)
        lut[self.vocab.codes[self.vocab.codes < size]] = np.arange(self.vocab.size)[self.vocab.codes < size]
        if self.replace_id is not None:
            lut[outside] = self.replace_id
        return lut


def _show_code(code, level):
    return f"byte 0x{code:02X}" if level == "byte" else f"character {chr(code)!r} (U+{code:04X})"


class _Found(Exception):
    """The first symbol outside a given vocabulary: code, and its position in its file."""

    def __init__(self, code, position):
        super().__init__(code, position)
        self.code, self.position = code, position


def _first_outside(files, names, lut, fixed, opts):
    """The VocabError for the first symbol of the inputs outside the vocabulary (lut: code -> id, -1 outside)."""
    from fastrnn.kernels.textscan import utf8_check_map

    unit = "byte" if fixed.vocab.level == "byte" else "character"
    for path, name in zip(files, names):
        pos = 0

        def check(ids, n):
            bad = np.flatnonzero(ids[:n] < 0)
            if bad.size:
                raise _Found(None, pos + int(bad[0]))

        def scan_utf8(data):
            nonlocal pos
            ids = np.empty(len(data), dtype=np.int32)
            n, consumed, status = utf8_check_map(data, lut, ids)
            try:
                check(ids, n)
            except _Found as found:
                found.code = _code_at(data, found.position - pos)
                raise
            pos += n
            return consumed, status

        try:
            for codes in _code_chunks([path], phase="", utf8_op=scan_utf8, **dict(opts, progress=None)):
                ids = lut[codes]  # the counts, hence lut, cover every code of the level
                try:
                    check(ids, len(ids))
                except _Found as found:
                    found.code = int(codes[found.position - pos])
                    raise
                pos += len(codes)
        except _Found as found:
            raise VocabError(f"{_show_code(found.code, fixed.vocab.level)} at {unit} {found.position:,} of {name} "
                             f"is not in the vocabulary of {fixed.source} ({fixed.vocab.size} symbols); use "
                             f"--unknown skip to leave such symbols out, or --unknown replace --replace-with "
                             f"SYMBOL") from None
    raise CorpusError("a symbol outside the vocabulary was counted but not found again; an input changed while "
                      "it was being read")


def _code_at(data, index):
    """The code point of the index-th character of the valid UTF-8 bytes `data`."""
    return ord(bytes(data).decode("utf-8", errors="ignore")[index])


def _write(inputs, output, out_dir, signals, *, level, val_frac, test_frac, lowercase, letters_only, encoding,
           errors, chunk_size, progress, check_chunk, fixed):
    """prepare's two passes, under its lock; every temporary file is removed on every way out."""
    restore_malloc = _limit_malloc_retention()
    spool = None
    try:
        from fastrnn.kernels.textscan import count_codes, map_codes, utf8_check_count, utf8_check_map

        files = []
        for f in expand_inputs(inputs):
            if f == "-":
                if spool is None:
                    spool = _temp_name(output, "stdin")
                    _spool_stdin(spool)
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
        skip = None  # with a given vocabulary and --unknown skip: the codes left out, when there are any
        if fixed is None:
            vocab = Vocab(np.flatnonzero(counts), level)
            dtype = vocab.dtype
            lut = np.zeros(len(counts), dtype=dtype)  # code -> id
            lut[vocab.codes] = np.arange(vocab.size, dtype=dtype)
            outside = 0
        else:
            vocab, dtype = fixed.vocab, fixed.vocab.dtype
            codes_out = fixed.outside(counts)
            outside = int(counts[codes_out].sum())
            if outside and fixed.unknown == "error":
                names = ["stdin" if p == spool else p for p in files]
                raise _first_outside(files, names, fixed.lut(len(counts), np.int32, codes_out), fixed, opts)
            if outside and fixed.unknown == "skip":
                skip = codes_out
                total -= outside
                lut = fixed.lut(len(counts), np.int32, codes_out)  # -1: left out
            else:
                lut = fixed.lut(len(counts), np.int64, codes_out).astype(dtype)
            if total == 0:
                raise CorpusError(f"every symbol of the inputs is outside the vocabulary of {fixed.source}")
        if total < 2:
            raise CorpusError("the corpus has a single symbol; it needs at least two to learn from")
        n_val, n_test = int(total * val_frac), int(total * test_frac)
        sizes = {"train": total - n_val - n_test, "val": n_val, "test": n_test}

        # pass 2: ids into the splits
        tmp = _temp_name(output, "prepare")
        try:
            # The splits are contiguous datasets allocated up front (no fill) whose ids are written straight into
            # the file at their offsets by a background thread while this one reads and maps the next chunk.
            with h5py.File(tmp, "x") as f:
                offsets = [_create_split(f, name, sizes[name], dtype) for name in SPLITS]
                sums = f.create_group("checksums")
                sum_offsets = [_create_split(sums, name, n_chunks(sizes[name], check_chunk), np.uint32)
                               for name in SPLITS]
                config = {"level": level, "val_frac": val_frac, "test_frac": test_frac, "lowercase": lowercase,
                          "letters_only": letters_only, "encoding": encoding, "errors": errors}
                if fixed is not None:
                    config.update(vocab_from=fixed.source, unknown=fixed.unknown)
                    if outside:
                        config["skipped" if fixed.unknown == "skip" else "replaced"] = outside
                sources = [{"path": "<stdin>" if p == spool else os.path.abspath(p), "bytes": os.path.getsize(p)}
                           for p in files]
                write_attrs(f, vocab, config, sources, check_chunk, sizes)
            bounds = np.cumsum([0] + [sizes[name] for name in SPLITS])
            with _SplitWriter(tmp, offsets, bounds, dtype, chunk_size + 4, check_chunk, sum_offsets) as writer:
                pos = 0
                ids = writer.buffer()

                wide = np.empty(chunk_size + 4, dtype=np.int32) if skip is not None else None

                def put(n):
                    """Queue the n ids in `ids` (with --unknown skip: in `wide`, -1 for those left out)."""
                    nonlocal pos, ids
                    if skip is not None:
                        kept = wide[:n][wide[:n] >= 0]
                        n = len(kept)
                        if len(ids) < n:
                            ids = np.empty(n, dtype=dtype)
                        ids[:n] = kept
                    if n:
                        writer.write(pos, ids, n)
                        pos += n
                        ids = writer.buffer()

                def write_utf8(data):
                    n, consumed, status = utf8_check_map(data, lut, ids if skip is None else wide)
                    put(n)
                    return consumed, status

                for codes in _code_chunks(files, phase="write", utf8_op=write_utf8, **opts):
                    if skip is None:
                        if len(codes) > len(ids):  # lowercasing can lengthen text
                            ids = np.empty(len(codes), dtype=dtype)
                        map_codes(codes, lut, ids)
                    elif len(codes) > len(wide):
                        wide = np.empty(len(codes), dtype=np.int32)
                    if skip is not None:
                        map_codes(codes, lut, wide)
                    put(len(codes))
                if pos != total:
                    raise CorpusError("an input changed while it was being read; run prepare again")
                writer.finish()  # all written, with the chunks' checksums, and on disk (fsync)
            signals.commit()  # from here a signal no longer stops prepare: the output is complete
            os.replace(tmp, output)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except CorpusError as exc:
        if spool and spool in str(exc):  # the user gave standard input, not our spool file
            raise CorpusError(str(exc).replace(spool, "stdin")) from None
        raise
    finally:
        restore_malloc()
        if spool:
            with contextlib.suppress(OSError):
                os.unlink(spool)


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


def _temp_name(output, kind):
    """The temporary file of this process for `output`: .OUTPUT.<pid>.<kind>.tmp beside it (kind prepare|stdin)."""
    directory, base = _place(output)
    return os.path.join(directory, f".{base}.{os.getpid()}.{kind}.tmp")


def _place(output):
    """(directory, name) of `output`, the directory with symbolic links resolved, so that every spelling of the
    same output shares one lock and one set of temporary names."""
    directory, base = os.path.split(os.path.abspath(output))
    return os.path.realpath(directory), base


def _remove_stale_temps(output):
    """Remove the temporary files that earlier prepares in the output's directory left when they died (SIGKILL, a
    crash): those named by a PID that no longer runs, or by this process's own (reused; it has made none yet).
    Called under the output's lock, so no live prepare of this output on this machine is writing its own; those of
    another output are removed only if its lock is free as well."""
    directory, base = _place(output)
    pattern = re.compile(r"^\.(.+)\.(\d+)\.(prepare|stdin)\.tmp$")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m or (int(m.group(2)) != os.getpid() and _pid_alive(int(m.group(2)))):
            continue
        try:
            with contextlib.nullcontext() if m.group(1) == base else _OutputLock(os.path.join(directory, m.group(1))):
                os.unlink(os.path.join(directory, name))
        except (CorpusError, OSError):  # another prepare holds that output, or the file went already
            pass


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # someone else's process (or not a PID): keep its files
        return True
    return True


class _OutputLock:
    """The exclusive lock (guards.FileLock) on .OUTPUT.lock beside `output`, held while prepare writes it. A second
    prepare of the same output is refused with CorpusError naming the holder's PID."""

    def __init__(self, output):
        self.output = output
        directory, base = _place(output)
        self.path = os.path.join(directory, f".{base}.lock")
        self.lock = FileLock(self.path)

    def __enter__(self):
        try:
            self.lock.acquire()
        except Busy as exc:
            raise CorpusError(f"output {self.output} is being written by another prepare (PID "
                              f"{exc.holder or 'unknown'}); wait for it to finish or stop it") from None
        except NoLocks as exc:
            raise CorpusError(f"cannot lock {self.path} for {self.output}: {exc.reason}") from None
        except OSError as exc:
            raise CorpusError(f"cannot write {self.output}: cannot create its lock file {self.path} "
                              f"({exc.strerror or exc})") from None
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _Signals(output):
    """prepare's signal guard: SIGINT stops prepare with KeyboardInterrupt (as Python's own handler would), SIGTERM
    and SIGHUP with PrepareInterrupted (their default action would end the process at once, leaving its temporary
    files); raised in the main thread, so that every `finally` on the way out removes its temporary files. Further
    signals are ignored while it cleans up. After `commit()` (the output is complete and about to be renamed into
    place) they are ignored. The previous handlers come back on exit. Outside the main thread nothing is
    installed, nor for a signal this process ignores (nohup, or SIGINT of a background job)."""

    def exception(signum):
        return KeyboardInterrupt() if signum == signal.SIGINT else PrepareInterrupted(signum, output)

    return SignalGuard((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), raise_from=1, exception=exception,
                       then_ignore=True, keep_ignored=True)


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


def _names(inputs):
    return ["stdin" if os.fspath(i) == "-" else os.fspath(i) for i in inputs]


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
                _start_writeback(self.fd, offset, length)
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
