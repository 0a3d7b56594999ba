"""Training straight from text: `fastrnn train book.txt` (a text file or a directory of them) prepares
the text once, with prepare's defaults and checks, into a corpus in fastrnn's cache directory
(<cache>/corpora/NAME-KEY.h5, see fastrnn.cachedir), and later runs on the same text reuse it while the text is
unchanged: KEY hashes each input file's absolute path, size and modification time, the corpus format and
prepare's defaults, so an edited file is prepared anew. A prepared corpus (`fastrnn prepare`) stays the way for
the options prepare has and train does not (--val-frac, --level, --lowercase, --encoding...).

Several processes asking for the same text at once (the ranks of `mpiexec -n K fastrnn train book.txt`, two runs
started together) prepare it once: one holds the corpus's lock while it prepares, the others wait for it and
reuse what it wrote.
"""

import contextlib
import hashlib
import json
import os
import time

import h5py

from fastrnn import cachedir
from fastrnn.corpus.build import prepare
from fastrnn.corpus.dataset import FORMAT_VERSION
from fastrnn.corpus.inputs import expand_inputs
from fastrnn.errors import CorpusError
from fastrnn.guards import FileLock, NoLocks


def is_text_input(path):
    """True if `path` is a directory or a file that is not HDF5 (so not a corpus, nor a checkpoint): text that
    train prepares itself. A missing path is not (train says it is missing)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return True
    if not os.path.isfile(path):
        return False
    try:
        return not h5py.is_hdf5(path)
    except OSError:
        return False


def key_of(inputs, vocab=None):
    """The cache key of `inputs` (paths of files or directories): a hash of every file they name (absolute path,
    size, modification time in ns), the corpus format, prepare's defaults and the given vocabulary, if any."""
    digest = hashlib.sha256(f"format {FORMAT_VERSION}; prepare defaults\n".encode())
    if vocab is not None:
        digest.update(f"vocab {vocab.level} {vocab.codes.tolist()}\n".encode())
    for name in expand_inputs([os.fspath(p) for p in inputs]):
        st = os.stat(name)
        digest.update(json.dumps([os.path.abspath(name), st.st_size, st.st_mtime_ns]).encode() + b"\n")
    return digest.hexdigest()[:16]


def cached_corpus(inputs, say=None, vocab_from=None):
    """The path of the corpus prepared from the text `inputs` (a list of files or directories): the cached one if
    the text is unchanged, else prepared now (prepare's defaults, the same checks and errors). `say` (a callable,
    or None) gets one line: what was prepared, or which corpus is reused. vocab_from: a checkpoint or run
    directory whose vocabulary tokenizes the text (fine-tuning; a symbol outside it is an error)."""
    inputs = [os.fspath(p) for p in inputs]
    options = {}
    if vocab_from is not None:
        from fastrnn.runinfo import vocab_of

        vocab = vocab_of(vocab_from)
        options = dict(vocab=vocab, vocab_from=os.fspath(vocab_from), level=vocab.level)
    first = os.path.basename(os.path.normpath(inputs[0])) or "corpus"
    stem = os.path.splitext(first)[0] or first
    folder = os.path.join(cachedir.root(), "corpora")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise CorpusError(f"cannot create the corpus cache {folder} ({exc.strerror or exc}); prepare the text with "
                          f"`fastrnn prepare` instead") from None
    out = os.path.join(folder, f"{stem}-{key_of(inputs, options.get('vocab'))}.h5")
    named = " ".join(inputs) if len(inputs) <= 3 else f"{inputs[0]} and {len(inputs) - 1} more"
    with _held(out + ".wait"):
        if os.path.exists(out):
            if say:
                say(f"corpus: {named} prepared earlier, unchanged since: {out}")
            return out
        t0 = time.perf_counter()
        try:
            facts = prepare(inputs, out, **options)
        except CorpusError as exc:  # its hints name prepare's options, which train does not have
            raise CorpusError(f"{exc}; train prepares text with prepare's defaults: for other options make the "
                              f"corpus with `fastrnn prepare`") from None
    if say:
        say(f"corpus: prepared {named} into {out} ({facts['total_tokens']:,} tokens, {facts['vocab_size']} symbols, "
            f"{time.perf_counter() - t0:.1f} s; prepare's defaults); later runs reuse it while the text is "
            f"unchanged")
    return out


@contextlib.contextmanager
def _held(path):
    """An exclusive lock (guards.FileLock) on `path` for the block, waiting while another process holds it (it is
    preparing the same corpus)."""
    lock = FileLock(path, wait=True)
    try:
        lock.acquire()
    except NoLocks as exc:
        raise CorpusError(f"cannot lock {path} in the corpus cache ({exc.reason}); prepare the text with "
                          f"`fastrnn prepare` instead") from None
    except OSError as exc:
        raise CorpusError(f"cannot create {path} in the corpus cache ({exc.strerror or exc}); prepare the text "
                          f"with `fastrnn prepare` instead") from None
    try:
        yield
    finally:
        lock.release()
