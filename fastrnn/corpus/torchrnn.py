"""Importing a corpus made by torch-rnn's `scripts/preprocess.py`: NAME.h5 (datasets train, val and test of 1-based
token ids, uint8, or uint32 past 255 tokens) and NAME.json (`idx_to_token`, `token_to_idx`), into CORPUS.h5.

torch-rnn numbers its tokens in order of first appearance; fastrnn's vocabulary is sorted by code point, so every id
goes through a lookup table. The splits are kept as they are, read and written in bounded chunks (constant memory),
under the same lock, temporary file, signal handling and checksums as `prepare`. With `--encoding bytes`,
preprocess.py writes the tokens above 127 as "[N]": such a file becomes a byte-level corpus.
"""

import json
import os
import re

import h5py
import numpy as np

from fastrnn.corpus.dataset import CHECK_CHUNK, SPLITS, info
from fastrnn.corpus.output import OutputLock, prepare_guard, remove_stale_temps, temp_name
from fastrnn.corpus.splitfile import SplitWriter, new_file
from fastrnn.corpus.vocab import Vocab
from fastrnn.errors import CorpusError

READ_TOKENS = 4 << 20  # ids read from the torch-rnn file at a time
_BYTE_TOKEN = re.compile(r"^\[(\d+)\]$")


def import_torch_rnn(h5_path, json_path, output, *, force=False, progress=None, chunk=READ_TOKENS,
                     check_chunk=CHECK_CHUNK):
    """Convert torch-rnn's NAME.h5 + NAME.json into a fastrnn corpus at `output`; returns its info dict.

    progress: optional callable(phase, tokens_done, tokens_total)."""
    h5_path, json_path, output = os.fspath(h5_path), os.fspath(json_path), os.fspath(output)
    src = _open_h5(h5_path)
    src.close()
    vocab, torch_to_ours = _vocabulary(json_path)
    if os.path.isdir(output):
        raise CorpusError(f"output {output} is a directory")
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise CorpusError(f"output directory {os.path.dirname(os.path.abspath(output))} does not exist")
    with _open_h5(h5_path) as src:
        splits = {name: _split(src, name, h5_path) for name in SPLITS}
        sizes = {name: d.shape[0] for name, d in splits.items()}
        total = sum(sizes.values())
        if total < 2:
            raise CorpusError(f"{h5_path} holds {total} token(s); a corpus needs at least two")
        with prepare_guard(output) as signals, OutputLock(output):
            if os.path.exists(output) and not force:
                raise CorpusError(f"output {output} exists; add --force to overwrite it")
            if os.path.exists(output) and os.path.samefile(output, h5_path):
                raise CorpusError(f"output {output} is also the input")
            remove_stale_temps(output)
            tmp = temp_name(output, "prepare")
            try:
                _write(tmp, splits, sizes, vocab, torch_to_ours, h5_path, json_path, chunk, check_chunk, progress)
                signals.commit()
                os.replace(tmp, output)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
    return info(output)


def _vocabulary(json_path):
    """(fastrnn Vocab, lut torch id -> fastrnn id) from torch-rnn's JSON (CorpusError if it is not one)."""
    try:
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
    except OSError as exc:
        raise CorpusError(f"cannot read {json_path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CorpusError(f"{json_path} is not JSON ({exc}); give torch-rnn's NAME.h5, then NAME.json") from None
    table = meta.get("idx_to_token") if isinstance(meta, dict) else None
    if not isinstance(table, dict) or not table:
        raise CorpusError(f"{json_path} has no idx_to_token table; it is not a torch-rnn vocabulary")
    try:
        tokens = {int(k): v for k, v in table.items()}
    except ValueError:
        raise CorpusError(f"{json_path}: idx_to_token has a key that is not an integer") from None
    if min(tokens) < 1 or not all(isinstance(v, str) for v in tokens.values()):
        raise CorpusError(f"{json_path}: idx_to_token must map ids from 1 to tokens")
    if max(tokens) >= 2 ** 63:
        raise CorpusError(f"{json_path}: idx_to_token has the id {max(tokens)}, over 2^63 - 1, the largest fastrnn "
                          f"reads (torch-rnn numbers its tokens from 1 up)")
    byte_level = any(_BYTE_TOKEN.match(t) for t in tokens.values())
    codes = {}
    for idx, token in tokens.items():
        m = _BYTE_TOKEN.match(token)
        if byte_level and m and 128 <= int(m.group(1)) <= 255:
            codes[idx] = int(m.group(1))
        elif len(token) == 1 and (not byte_level or ord(token) < 128):
            codes[idx] = ord(token)
        else:
            raise CorpusError(f"{json_path}: token {token!r} (id {idx}) is not one character; fastrnn reads "
                              f"character-level torch-rnn files (not --syllabic ones)")
    if len(set(codes.values())) != len(codes):
        raise CorpusError(f"{json_path}: two ids name the same token")
    vocab = Vocab(codes.values(), "byte" if byte_level else "char")
    return vocab, Lookup({idx: int(np.searchsorted(vocab.codes, code)) for idx, code in codes.items()})


class Lookup:
    """torch-rnn ids -> fastrnn ids, sized by the vocabulary (not by the largest id: an id near 2e9 would need a
    table of 16 GB)."""

    def __init__(self, mapping):
        self.ids = np.array(sorted(mapping), dtype=np.int64)  # (K,) torch ids, ascending
        self.to = np.array([mapping[i] for i in sorted(mapping)], dtype=np.int64)  # (K,) their fastrnn ids
        self.largest = int(self.ids[-1])

    def __call__(self, ids):
        """(fastrnn ids (n,) int64, index of the first id with none, or -1). `ids` in the dataset's own integer
        type: an unsigned id of 2^63 or more is compared as it is, never wrapped to a negative number."""
        out = np.zeros(len(ids), dtype=np.int64)
        bad = np.flatnonzero((ids < 1) | (ids > self.largest))
        if bad.size:
            return out, int(bad[0])
        small = ids.astype(np.int64)  # every id is now within 1 .. largest
        where = np.minimum(np.searchsorted(self.ids, small), len(self.ids) - 1)
        missing = np.flatnonzero(self.ids[where] != small)
        if missing.size:
            return out, int(missing[0])
        out[:] = self.to[where]
        return out, -1


def _open_h5(path):
    if not os.path.isfile(path):
        raise CorpusError(f"{path} does not exist" if not os.path.exists(path) else f"{path} is not a file")
    if not h5py.is_hdf5(path):
        raise CorpusError(f"{path} is not an HDF5 file; give torch-rnn's NAME.h5, then NAME.json")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc}") from None


def _split(f, name, path):
    if "fastrnn_corpus" in f.attrs:
        raise CorpusError(f"{path} is already a fastrnn corpus")
    d = f.get(name)
    if not isinstance(d, h5py.Dataset) or d.ndim != 1 or d.dtype.kind not in "ui":
        raise CorpusError(f"{path} has no 1-D integer dataset {name!r}; it is not a torch-rnn corpus")
    return d


def _write(tmp, splits, sizes, vocab, lut, h5_path, json_path, chunk, check_chunk, progress):
    """The corpus file at `tmp`: the attributes as prepare writes them, then every split mapped chunk by chunk."""
    total = sum(sizes.values())
    config = {"level": vocab.level, "val_frac": sizes["val"] / total, "test_frac": sizes["test"] / total,
              "lowercase": False, "letters_only": False, "encoding": "utf-8", "errors": "strict",
              "from_torch_rnn": os.path.abspath(h5_path)}
    sources = [{"path": os.path.abspath(p), "bytes": os.path.getsize(p)} for p in (h5_path, json_path)]
    offsets, sum_offsets, bounds = new_file(tmp, vocab, config, sources, check_chunk, sizes)
    with SplitWriter(tmp, offsets, bounds, vocab.dtype, chunk, check_chunk, sum_offsets) as writer:
        pos = 0
        for k, name in enumerate(SPLITS):
            d = splits[name]
            for start in range(0, sizes[name], chunk):
                ids = d[start:start + chunk]
                mapped, bad = lut(ids)
                if bad >= 0:
                    raise CorpusError(f"{h5_path}: id {int(ids[bad])} at position {start + bad:,} of "
                                      f"its {name} split is not in {json_path} ({vocab.size} tokens)")
                buf = writer.buffer()
                buf[:len(ids)] = mapped
                writer.write(pos, buf, len(ids))
                pos += len(ids)
                if progress:
                    progress("write", pos, total)
        writer.finish()
