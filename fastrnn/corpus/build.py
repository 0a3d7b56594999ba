"""`prepare`: streaming text -> CORPUS.h5 (the format is described in fastrnn.corpus.dataset).

`prepare` reads its inputs twice in bounded chunks (pass 1 finds the vocabulary and the length, pass 2 writes the
ids); standard input is first spooled to a temporary file. Peak memory is a few chunks, whatever the corpus size.

One writer per output, and no partial file whatever stops prepare: its lock, temporary files and signal guard are
output.py's; the file is written by splitfile.py.
"""

import codecs
import contextlib
import os
import sys

import numpy as np

from fastrnn.corpus.dataset import CHECK_CHUNK, info
from fastrnn.corpus.inputs import CHUNK_SIZE, ERRORS, _code_chunks, _spool_stdin, expand_inputs
from fastrnn.corpus.output import OutputLock, prepare_guard, remove_stale_temps, temp_name
from fastrnn.corpus.splitfile import SplitWriter, new_file
from fastrnn.corpus.vocab import LEVELS, Vocab
from fastrnn.errors import ConfigError, CorpusError, VocabError


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
    with prepare_guard(output) as signals, OutputLock(output):
        if os.path.exists(output) and not force:
            raise CorpusError(f"output {output} exists; add --force to overwrite it")
        remove_stale_temps(output)
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


class _Pass1:
    """What the first pass found: the vocabulary, the ids' dtype, the map code -> id (`lut`), the codes left out
    (`skip`, with a given vocabulary and --unknown skip; else None), the tokens and the symbols outside a given
    vocabulary (`outside`)."""

    def __init__(self, vocab, dtype, lut, skip, total, outside):
        self.vocab, self.dtype, self.lut, self.skip, self.total, self.outside = vocab, dtype, lut, skip, total, outside


def _write(inputs, output, out_dir, signals, *, level, val_frac, test_frac, lowercase, letters_only, encoding,
           errors, chunk_size, progress, check_chunk, fixed):
    """prepare's two passes, under its lock; every temporary file is removed on every way out."""
    restore_malloc = _limit_malloc_retention()
    spool = None
    try:
        files = []
        for f in expand_inputs(inputs):
            if f == "-":
                if spool is None:
                    spool = temp_name(output, "stdin")
                    _spool_stdin(spool)
                files.append(spool)
            else:
                if os.path.exists(output) and os.path.samefile(f, output):
                    raise CorpusError(f"output {output} is also an input")
                files.append(f)
        opts = dict(level=level, encoding=encoding, errors=errors, lowercase=lowercase, letters_only=letters_only,
                    chunk_size=chunk_size, progress=progress)

        # pass 1: vocabulary and length
        found = _scan(files, ["stdin" if p == spool else p for p in files], _names(inputs), level, fixed, opts)
        n_val, n_test = int(found.total * val_frac), int(found.total * test_frac)
        sizes = {"train": found.total - n_val - n_test, "val": n_val, "test": n_test}

        # pass 2: ids into the splits
        tmp = temp_name(output, "prepare")
        try:
            # The splits are contiguous datasets allocated up front (no fill) whose ids are written straight into
            # the file at their offsets by a background thread while this one reads and maps the next chunk.
            config = {"level": level, "val_frac": val_frac, "test_frac": test_frac, "lowercase": lowercase,
                      "letters_only": letters_only, "encoding": encoding, "errors": errors}
            if fixed is not None:
                config.update(vocab_from=fixed.source, unknown=fixed.unknown)
                if found.outside:
                    config["skipped" if fixed.unknown == "skip" else "replaced"] = found.outside
            sources = [{"path": "<stdin>" if p == spool else os.path.abspath(p), "bytes": os.path.getsize(p)}
                       for p in files]
            offsets, sum_offsets, bounds = new_file(tmp, found.vocab, config, sources, check_chunk, sizes)
            with SplitWriter(tmp, offsets, bounds, found.dtype, chunk_size + 4, check_chunk, sum_offsets) as writer:
                if _write_ids(writer, files, found, chunk_size, opts) != found.total:
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


def _scan(files, names, given, level, fixed, opts):
    """Pass 1 over `files` (`names`: as the user named them; `given`: the inputs as given): every code counted, the
    vocabulary (the codes that occur, or `fixed`'s) and the tokens. Returns _Pass1."""
    from fastrnn.kernels.textscan import count_codes, utf8_check_count

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
        raise CorpusError(f"the corpus is empty ({', '.join(given)})")
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
    return _Pass1(vocab, dtype, lut, skip, total, outside)


def _write_ids(writer, files, found, chunk_size, opts):
    """Pass 2 over `files`: their ids, mapped with found.lut (_Pass1), queued to `writer` (splitfile.SplitWriter)
    in order. Returns how many."""
    from fastrnn.kernels.textscan import map_codes, utf8_check_map

    lut, skip, dtype = found.lut, found.skip, found.dtype
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
    return pos

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
    return ["stdin" if os.fspath(i) == "-" else os.fspath(i) for i in inputs]


