"""Opening a corpus: CORPUS.h5 as written by `prepare`, its splits as read-only memory maps.

A corpus is tokenized once by `prepare` into CORPUS.h5 and read at training time as read-only memory maps, so RAM
does not grow with the corpus:

    /train, /val, /test     (M,) uint8|uint16|uint32 token ids, contiguous and uncompressed (numpy.memmap-able)
    attrs                   fastrnn_corpus=1, format_version, vocab (JSON), config (JSON), sources (JSON)

Splits are taken from the end of the corpus: train is the first 1 - val_frac - test_frac of the tokens, then val,
then test. Tokens are Unicode code points (level 'char') or raw bytes (level 'byte'); the vocabulary is the set of
symbols that occur, sorted by code point, and ids index into it.
"""

import json
import os

import h5py
import numpy as np

from fastrnn.corpus.vocab import Vocab
from fastrnn.errors import ConfigError, CorpusError

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


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
