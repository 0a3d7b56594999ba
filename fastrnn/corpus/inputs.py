"""Reading the inputs of `prepare` in bounded chunks: expanding paths, spooling standard input, decoding (strict
UTF-8 through a numba validator, anything else through Python's incremental decoders), normalising, and the
errors that name the file and byte offset of bad input."""

import codecs
import os
import re
import sys

import numpy as np

from fastrnn.corpus.vocab import _codepoints
from fastrnn.errors import ConfigError, CorpusError

CHUNK_SIZE = 4 << 20  # bytes of input per chunk
ERRORS = ("strict", "replace", "ignore")
_ASCII_COMPATIBLE = {"utf-8", "ascii", "iso8859-1", "cp1252", "latin-1"}


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


def text_codec(encoding):
    """The codecs name of `encoding`, a text encoding (bytes to str). Raises ConfigError for a name Python does
    not know and for codecs it has that do not decode bytes to text (rot13, base64, zlib, hex, undefined...)."""
    try:
        info = codecs.lookup(encoding)
    except (LookupError, ValueError):  # ValueError: a name with a NUL or an undecodable byte
        raise ConfigError(f"unknown encoding {encoding!r}") from None
    if not getattr(info, "_is_text_encoding", True) or info.name == "undefined":
        raise ConfigError(f"--encoding {encoding} is not a text encoding (it does not decode bytes to text); use "
                          f"one such as utf-8, utf-16, latin-1 or cp1252")
    return info.name


def _looks_text(path):
    try:
        with open(path, "rb") as f:
            return b"\x00" not in f.read(8192)
    except OSError as exc:  # a file of the directory that cannot be read is not silently left out
        raise _read_error(path, exc, 0) from exc


def _read_error(path, exc, offset):
    """The CorpusError for an input whose open or read failed (permissions, an I/O error, a vanished file)."""
    return CorpusError(f"cannot read input {path}: {exc.strerror or exc} (at byte offset {offset})")


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
    """Yield (offset, bytes) chunks of a file. Raises CorpusError if it cannot be read."""
    offset = 0
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise _read_error(path, exc, offset) from exc
    with f:
        while True:
            try:
                data = f.read(chunk_size)
            except OSError as exc:
                raise _read_error(path, exc, offset) from exc
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
    codec = text_codec(encoding)
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
    from fastrnn.kernels.textscan import OK

    buf = np.empty(chunk_size + 4, dtype=np.uint8)  # the bytes of a character cut by the boundary, then a chunk
    view = memoryview(buf)
    pending = 0  # bytes carried at buf[:pending]
    offset = 0  # file offset of buf[pending]
    try:
        f = open(path, "rb", buffering=0)
    except OSError as exc:
        raise _read_error(path, exc, offset) from exc
    with f:
        while True:
            try:
                n = f.readinto(view[pending: pending + chunk_size])
            except OSError as exc:
                raise _read_error(path, exc, offset) from exc
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
    from fastrnn.kernels.textscan import NUL

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
        except ValueError as exc:  # the codec's own refusal (UnicodeError, binascii.Error), without an offset
            raise _undecodable(path, codec, exc, offset - pending) from None
        if wide and "\x00" in text:
            raise CorpusError(f"{path} looks like a binary file: NUL character near byte offset {offset}")
        yield len(data), _codepoints(norm(text))
    pending = len(decoder.getstate()[0])
    try:
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise _invalid(path, codec, exc.reason, os.path.getsize(path) - pending + exc.start) from None
    except ValueError as exc:
        raise _undecodable(path, codec, exc, os.path.getsize(path) - pending) from None
    yield 0, _codepoints(norm(tail))


def _undecodable(path, codec, exc, offset):
    """The CorpusError for a decoder that refuses its input as a whole (no position of a bad byte)."""
    hint = "--encoding"
    if codec in ("utf-16", "utf-32"):
        hint = f"--encoding {codec}-le or {codec}-be for a file without a byte-order mark"
    return CorpusError(f"{path} is not valid {codec} text: {exc} (in the bytes from offset {offset}; use {hint})")


def _spool_stdin(path):
    """Copy standard input to a new file `path` (which the caller names and removes)."""
    where = os.path.dirname(os.path.abspath(path))
    try:
        f = open(path, "xb")
    except OSError as exc:
        raise CorpusError(f"cannot spool standard input into {where}: {exc.strerror or exc}") from exc
    with f:
        while True:
            try:
                data = sys.stdin.buffer.read(CHUNK_SIZE)
            except OSError as exc:
                raise CorpusError(f"cannot read standard input: {exc.strerror or exc}") from exc
            if not data:
                break
            try:
                f.write(data)
            except OSError as exc:  # a full disk
                raise CorpusError(f"cannot spool standard input into {where}: {exc.strerror or exc}") from exc
    return path
