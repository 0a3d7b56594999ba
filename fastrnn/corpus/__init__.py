"""Corpora: streaming text -> HDF5 tokenization, the vocabulary, splits read with pread and TBPTT batch streams.

    vocab.py     Vocab, token_dtype, LEVELS
    inputs.py    reading inputs in bounded chunks: expand_inputs, decoding, normalising (CHUNK_SIZE, ERRORS)
    build.py     prepare: text -> CORPUS.h5 in two streaming passes
    splitfile.py writing a CORPUS.h5: its splits allocated up front, the ids written by a background thread
    output.py    prepare's output kept safe: its lock, temporary files and signal guard (PrepareInterrupted)
    torchrnn.py  prepare --from-torch-rnn: torch-rnn's NAME.h5 and NAME.json -> CORPUS.h5
    fromtext.py  train TEXT: the corpus prepared once into fastrnn's cache
    dataset.py   the CORPUS.h5 format; Corpus, Split, open_corpus, info (FORMAT_VERSION, SPLITS)
    batches.py   BatchStream

Imports run one way: inputs and dataset import vocab; splitfile imports dataset; build and torchrnn import
splitfile, output and the modules below them; fromtext imports build; batches imports none of them. The names
below are the public API.
"""

from fastrnn.corpus.batches import BatchStream
from fastrnn.corpus.build import UNKNOWN, prepare
from fastrnn.corpus.dataset import FORMAT_VERSION, SPLITS, Corpus, Split, info, open_corpus
from fastrnn.corpus.inputs import CHUNK_SIZE, ERRORS, expand_inputs
from fastrnn.corpus.vocab import LEVELS, Vocab, token_dtype

__all__ = ["BatchStream", "CHUNK_SIZE", "Corpus", "ERRORS", "FORMAT_VERSION", "LEVELS", "SPLITS", "Split", "UNKNOWN",
           "Vocab", "expand_inputs", "info", "open_corpus", "prepare", "token_dtype"]
