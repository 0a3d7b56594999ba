"""Scoring text with a trained model: mean nats per character, bits per character and perplexity, streaming.

Every character after the first is predicted from all before it: one stream, the hidden state carried from
window to window (as training carries it from minibatch to minibatch), so a text of any size is scored in constant
memory. Sources: a split of a prepared corpus (`split_blocks`) or text files read in the model's vocabulary
(`file_blocks`; several files are one stream, in order, as `prepare` concatenates them).
"""

import math
import os

import numpy as np

from fastrnn.errors import ConfigError, CorpusError, VocabError

WINDOW = 1024  # characters per forward pass
READ_CHARS = 1 << 20  # characters (or bytes) read from a file at a time
UNKNOWN = ("error", "skip")


def split_blocks(corpus, split, block=1 << 20):
    """Yield (ids, 0) blocks of a corpus split ((M,) token ids, no skipped characters), read with pread (Corpus.read:
    a corpus cut short meanwhile is a CorpusError)."""
    n = corpus.split(split).size
    if n < 2:
        raise CorpusError(f"the {split} split of {corpus.path} has {n} tokens; scoring needs at least 2")
    for start in range(0, n, block):
        yield corpus.read(split, start, block).astype(np.int32), 0


def file_blocks(vocab, paths, encoding="utf-8", unknown="error"):
    """Yield (ids, skipped) blocks of text files in the vocabulary `vocab` (its level: characters decoded with
    `encoding`, or raw bytes). unknown='error': a character outside the vocabulary is a VocabError naming the file
    and the character's position; 'skip': it is left out and counted in `skipped`."""
    if unknown not in UNKNOWN:
        raise ConfigError(f"--unknown must be one of {', '.join(UNKNOWN)}, got {unknown!r}")
    lut = np.full(int(vocab.codes.max()) + 1, -1, dtype=np.int64)  # code -> id, -1 outside the vocabulary
    lut[vocab.codes] = np.arange(vocab.size)
    for path in paths:
        if os.path.isdir(path):
            raise ConfigError(f"{path} is a directory; give the text files to score")
        position = 0
        try:
            if vocab.level == "byte":
                f = open(path, "rb")
            else:
                f = open(path, encoding=encoding, errors="strict", newline="")
        except OSError as exc:
            raise CorpusError(f"cannot read {path}: {exc.strerror or exc}") from None
        with f:
            while True:
                try:
                    data = f.read(READ_CHARS)
                except UnicodeError as exc:  # also a UTF-16 file without its byte-order mark
                    raise CorpusError(f"{path} is not valid {encoding} text near character {position:,} "
                                      f"({getattr(exc, 'reason', None) or exc})") from None
                except OSError as exc:
                    raise CorpusError(f"cannot read {path}: {exc.strerror or exc}") from None
                if not data:
                    break
                if vocab.level == "byte":
                    codes = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
                else:
                    codes = np.frombuffer(data.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
                ids = np.full(codes.shape, -1, dtype=np.int64)
                inside = codes < lut.size
                ids[inside] = lut[codes[inside]]
                bad = np.flatnonzero(ids < 0)
                if bad.size and unknown == "error":
                    c = int(codes[bad[0]])
                    what = f"byte 0x{c:02X}" if vocab.level == "byte" else f"character {chr(c)!r} (U+{c:04X})"
                    raise VocabError(f"{what} at {'byte' if vocab.level == 'byte' else 'character'} "
                                     f"{position + int(bad[0]):,} of {path} is not in the model's vocabulary "
                                     f"({vocab.size} symbols); --unknown skip scores the rest")
                position += codes.size
                yield ids[ids >= 0].astype(np.int32), int(bad.size)


def score(backend, P, blocks, dtype, window=WINDOW):
    """Mean loss over a stream of (ids, skipped) blocks. Returns {'loss': nats/char, 'bpc': bits/char,
    'perplexity', 'chars': characters predicted, 'skipped': characters left out}."""
    h = np.zeros((1, P.cell.state_size(P.hidden_size, P.layers)), dtype=dtype)  # (1, S)
    plans = {}
    total, count, skipped = 0.0, 0, 0
    prev = None  # the last token of the stream so far: the input that predicts the next block's first
    for ids, dropped in blocks:
        skipped += dropped
        if ids.size == 0:
            continue
        seq = ids if prev is None else np.concatenate([np.array([prev], dtype=np.int32), ids])
        prev = int(seq[-1])
        for start in range(0, seq.size - 1, window):
            x = np.ascontiguousarray(seq[start:start + window][: seq.size - 1 - start][None])  # (1, T)
            y = np.ascontiguousarray(seq[start + 1:start + 1 + x.shape[1]][None])  # (1, T)
            T = x.shape[1]
            if T not in plans:
                plans[T] = backend.plan_for(P, 1, T)
            loss, h = backend.forward_loss(P, x, y, h, plan=plans[T])
            total += float(loss) * T
            count += T
    if count == 0:
        raise CorpusError("nothing to score: the text has fewer than 2 characters in the model's vocabulary")
    loss = total / count
    return {"loss": loss, "bpc": loss / math.log(2), "perplexity": math.exp(min(loss, 700.0)), "chars": count,
            "skipped": skipped}
