"""Generation: warm the hidden state on a prime text, then sample one character at a time.

Sampling strategies: temperature (divide the logits), top-k (keep the k most probable symbols), top-p (keep the
smallest set of most probable symbols whose probability reaches p), greedy (argmax), and beam search (the most
probable continuation of a given length, seed 002's extension).
"""

import codecs

import numpy as np

from fastrnn.errors import ConfigError, VocabError
from fastrnn.params import arch_of, state_size
from fastrnn.reference import draw, probabilities  # noqa: F401 (part of this module's API)


def check_options(temperature=1.0, top_k=0, top_p=1.0, length=0):
    if not (np.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"--temperature must be a positive number, got {temperature}")
    if top_k < 0:
        raise ConfigError(f"--top-k must be >= 0, got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")
    if length < 0:
        raise ConfigError(f"--length must be >= 0, got {length}")


def _start(backend, P, vocab, prime, dtype):
    """Hidden state and logits after warming on the prime (or on a newline if the prime is empty)."""
    if prime:
        ids = vocab.encode(prime)
    else:
        try:
            ids = vocab.encode("\n")[:1]
        except VocabError:
            ids = np.zeros(1, dtype=np.int32)
    cell, layers, H = arch_of(P)
    h = np.zeros((1, state_size(cell, H, layers)), dtype=dtype)  # (1, S)
    logits = None
    for token in ids:
        h, logits = backend.step(P, h, np.array([token], dtype=np.int32))
    return h, logits


def generate(backend, P, vocab, *, prime="", length=200, temperature=1.0, top_k=0, top_p=1.0, greedy=False,
             rng=None, dtype=np.float32):
    """Yield `length` generated token ids, one at a time.

    The hidden state starts at zero and is warmed on every character of `prime` (as seed 000 does); the
    distribution after the last prime character gives the first generated character. With an empty prime the
    first input is a newline if the vocabulary has one, else the first symbol, and it is not part of the output.
    """
    check_options(temperature, top_k, top_p, length)
    top_k = min(top_k, vocab.size)  # k beyond the vocabulary keeps every symbol (and fits the kernels' integers)
    rng = rng if rng is not None else np.random.default_rng()
    h, logits = _start(backend, P, vocab, prime, dtype)
    yield from backend.generate(P, h, logits, length, temperature, top_k, top_p, greedy, rng)


def beam_search(backend, P, vocab, *, prime="", length=200, beam_width=5, dtype=np.float32):
    """The most probable continuation of `length` symbols found by beam search.

    Keeps the `beam_width` best partial sequences by total log-probability; each step expands every beam by
    every symbol and keeps the best `beam_width`. Returns (token ids: list[int], total log-probability in nats).
    """
    if beam_width < 1:
        raise ConfigError(f"--beam-width must be >= 1, got {beam_width}")
    check_options(length=length)
    h, logits = _start(backend, P, vocab, prime, dtype)
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


def stop_at(pieces, marker):
    """Pass text pieces through until `marker` has been produced (it is included), then stop."""
    if not marker:
        yield from pieces
        return
    seen = ""
    for piece in pieces:
        seen += piece
        i = seen.find(marker)
        if i >= 0:
            yield piece[: len(piece) - (len(seen) - (i + len(marker)))]
            return
        yield piece
        seen = seen[-len(marker):]
