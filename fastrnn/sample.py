"""Generation: warm the hidden state on a prime text, then sample one character at a time."""

import numpy as np

from fastrnn.errors import ConfigError, VocabError


def probabilities(logits, temperature):
    """Softmax of logits / temperature in float64. logits: (V,)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    return p


def draw(p, rng):
    """One index drawn from the distribution p (V,) with one uniform number from rng."""
    c = np.cumsum(p)
    return int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), len(p) - 1))


def generate(backend, P, vocab, *, prime="", length=200, temperature=1.0, rng=None, dtype=np.float32):
    """Yield `length` generated token ids, one at a time.

    The hidden state starts at zero and is warmed on every character of `prime` (as seed 000 does); the
    distribution after the last prime character gives the first generated character. With an empty prime the
    first input is a newline if the vocabulary has one, else the first symbol, and it is not part of the output.
    """
    if not temperature > 0:
        raise ConfigError(f"--temperature must be positive, got {temperature}")
    if length < 0:
        raise ConfigError(f"--length must be >= 0, got {length}")
    rng = rng if rng is not None else np.random.default_rng()
    if prime:
        ids = vocab.encode(prime)
    else:
        try:
            ids = vocab.encode("\n")[:1]
        except VocabError:
            ids = np.zeros(1, dtype=np.int32)
    H = P["Whh"].shape[0]
    h = np.zeros((1, H), dtype=dtype)  # (1, H)
    logits = None
    for token in ids:
        h, logits = backend.step(P, h, np.array([token], dtype=np.int32))
    for _ in range(length):
        token = draw(probabilities(logits[0], temperature), rng)
        yield token
        h, logits = backend.step(P, h, np.array([token], dtype=np.int32))


def decode_stream(vocab, ids):
    """Yield text pieces for token ids as they come; byte-level tokens are decoded incrementally so a UTF-8
    character split over several tokens comes out whole."""
    if vocab.level == "byte":
        import codecs

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
