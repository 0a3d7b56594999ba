"""Generation: warm the hidden state on a prime text, then sample one character at a time.

Sampling strategies: temperature (divide the logits), top-k (keep the k most probable symbols), top-p (keep the
smallest set of most probable symbols whose probability reaches p), greedy (argmax), and beam search (the most
probable continuation of a given length, seed 002's extension).
"""

import codecs

import numpy as np

from fastrnn.errors import ConfigError, VocabError
from fastrnn.options import check_sampling
from fastrnn.reference import draw, probabilities  # noqa: F401 (draw: part of this module's API)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b",
            "f": "\f", "v": "\v"}
_HEX = {"x": 2, "u": 4, "U": 8}


def unescape(text, name="--prime"):
    """Backslash escapes as in Python strings: \\n \\t \\r \\0 \\\\ \\' \\" \\a \\b \\f \\v, \\xHH, \\uHHHH,
    \\UHHHHHHHH. Any other backslash sequence is a ConfigError (write \\\\ for a backslash)."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(text):
            raise ConfigError(f"{name} ends in a lone backslash (write \\\\ for a backslash)")
        code = text[i + 1]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        elif code in _HEX:
            digits = text[i + 2:i + 2 + _HEX[code]]
            try:
                if len(digits) != _HEX[code]:
                    raise ValueError
                out.append(chr(int(digits, 16)))
            except (ValueError, OverflowError):
                raise ConfigError(f"{name}: \\{code} needs {_HEX[code]} hex digits, got {digits!r}") from None
            i += 2 + _HEX[code]
        else:
            raise ConfigError(f"{name}: unknown escape \\{code} (write \\\\ for a backslash)")
    return "".join(out)


def next_probs(backend, P, vocab, prime="", k=None, temperature=1.0, dtype=np.float32, warmup=None):
    """The probabilities of the next character after `prime`: [(symbol, p), ...] most probable first, the `k`
    first (all if k is None)."""
    h, logits = _start(backend, P, vocab, prime, dtype, warmup)
    p = probabilities(logits[0], temperature)
    order = np.argsort(-p, kind="stable")[: (k if k else p.size)]
    return [(vocab.symbols[i], float(p[i])) for i in order]


def _start(backend, P, vocab, prime, dtype, warmup=None):
    """Hidden state and logits after warming on the prime. With an empty prime: on `warmup` (token ids of real
    text, e.g. a checkpoint's state['warmup'], not printed) if given, else on a newline."""
    if prime:
        ids = vocab.encode(prime)
    elif warmup is not None and len(warmup):
        ids = np.asarray(warmup, dtype=np.int32)
        if ids.min() < 0 or ids.max() >= vocab.size:
            raise ConfigError("the checkpoint's warm-up text does not fit its vocabulary")
    else:
        try:
            ids = vocab.encode("\n")[:1]
        except VocabError:
            ids = np.zeros(1, dtype=np.int32)
    h = np.zeros((1, P.cell.state_size(P.hidden_size, P.layers)), dtype=dtype)  # (1, S)
    logits = None
    for token in ids:
        h, logits = backend.step(P, h, np.array([token], dtype=np.int32))
    return h, logits


def generate(backend, P, vocab, *, prime="", length=200, temperature=1.0, top_k=0, top_p=1.0, greedy=False,
             rng=None, dtype=np.float32, warmup=None):
    """Yield `length` generated token ids, one at a time.

    The hidden state starts at zero and is warmed on every character of `prime` (as seed 000 does); the
    distribution after the last prime character gives the first generated character. With an empty prime the
    state is warmed on `warmup` (ids of real text; a checkpoint keeps the start of its val split as
    state['warmup']) if given, else on a newline (or the first symbol); neither is part of the output.
    """
    check_sampling(dict(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, length=length))
    top_k = min(top_k, vocab.size)  # k beyond the vocabulary keeps every symbol (and fits the kernels' integers)
    rng = rng if rng is not None else np.random.default_rng()
    h, logits = _start(backend, P, vocab, prime, dtype, warmup)
    yield from backend.generate(P, h, logits, length, temperature, top_k, top_p, greedy, rng)


def stream_seeds(seed, count):
    """The seeds of `count` samples drawn together: seed, seed + 1, ... (sample i of a batch is the sample drawn
    alone with seed + i). Without a seed, a fresh base is drawn from the operating system's entropy."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    return [int(seed) + i for i in range(count)]


def generate_many(backend, P, vocab, *, count, prime="", length=200, temperature=1.0, top_k=0, top_p=1.0,
                  greedy=False, seed=None, dtype=np.float32, threads=None, chunk=64, warmup=None):
    """Yield (count, n) arrays of token ids, `length` per sample in all, for `count` samples drawn together: every
    weight is read once per character for all the samples a thread runs. Sample i draws from
    np.random.default_rng(stream_seeds(seed, count)[i]) and equals generate(..., rng=np.random.default_rng(seed + i))
    token for token."""
    check_sampling(dict(num_samples=count, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                        length=length, seed=seed))
    top_k = min(top_k, vocab.size)  # k beyond the vocabulary keeps every symbol (and fits the kernels' integers)
    rngs = [np.random.default_rng(s) for s in stream_seeds(seed, count)]
    h, logits = _start(backend, P, vocab, prime, dtype, warmup)
    h, logits = np.repeat(h, count, axis=0), np.repeat(logits, count, axis=0)  # (count, S), (count, V)
    yield from backend.generate_streams(P, h, logits, length, temperature, top_k, top_p, greedy, rngs, chunk,
                                        threads)


class TextStream:
    """One sample's text as its ids arrive in blocks: `feed(ids)` returns the next piece of text (byte-level ids
    decoded incrementally, so a UTF-8 character split over blocks comes out whole), cut after `stop_at` once it
    appears; `done` is then True and later blocks give ""."""

    def __init__(self, vocab, stop_at=""):
        self.vocab, self.marker, self.done, self._seen = vocab, stop_at, False, ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace") if vocab.level == "byte" else None

    def feed(self, ids, final=False):
        if self.done:
            return ""
        if self._decoder is not None:
            text = self._decoder.decode(self.vocab.decode_bytes(np.asarray(ids, dtype=np.int32)), final=final)
        else:
            text = "".join(self.vocab.symbols[t] for t in np.asarray(ids).tolist())
        if self.marker:
            seen = self._seen + text
            i = seen.find(self.marker)
            if i >= 0:
                self.done = True
                return text[: len(text) - (len(seen) - (i + len(self.marker)))]
            self._seen = seen[-len(self.marker):]
        return text

    def finish(self):
        """The text held back at the end (an incomplete UTF-8 sequence, replaced)."""
        return self.feed(np.zeros(0, dtype=np.int32), final=True)


def beam_search(backend, P, vocab, *, prime="", length=200, beam_width=5, dtype=np.float32, warmup=None):
    """The most probable continuation of `length` symbols found by beam search.

    Keeps the `beam_width` best partial sequences by total log-probability; each step expands every beam by
    every symbol and keeps the best `beam_width`. Returns (token ids: list[int], total log-probability in nats).
    """
    if beam_width < 1:
        raise ConfigError(f"--beam-width must be >= 1, got {beam_width}")
    check_sampling(dict(length=length))
    h, logits = _start(backend, P, vocab, prime, dtype, warmup)
    V = logits.shape[1]
    scores = np.zeros(1)  # (B,) total log-probabilities
    seqs = np.zeros((1, 0), dtype=np.int32)  # (B, t)
    for _ in range(length):
        z = logits.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (B, V)
        total = (scores[:, None] + logp).ravel()  # (B*V,)
        k = min(beam_width, total.size)
        best = np.argsort(-total, kind="stable")[:k]
        beams, tokens = best // V, (best % V).astype(np.int32)
        scores = total[best]
        seqs = np.concatenate([seqs[beams], tokens[:, None]], axis=1)
        h, logits = backend.step(P, np.ascontiguousarray(h[beams]), tokens)
    return [int(t) for t in seqs[0]], float(scores[0])


def decode_stream(vocab, ids):
    """Yield text pieces for token ids as they come; byte-level tokens are decoded incrementally so a UTF-8
    character split over several tokens comes out whole."""
    if vocab.level == "byte":
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for token in ids:
            piece = decoder.decode(vocab.decode_bytes(np.array([token], dtype=np.int32)))
            if piece:
                yield piece
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
    else:
        for token in ids:
            yield vocab.symbols[token]
