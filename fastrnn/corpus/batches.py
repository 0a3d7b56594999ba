"""TBPTT batch streams over a split: contiguous streams that carry the hidden state, or shuffled windows."""

import numpy as np

from fastrnn.errors import ConfigError


class BatchStream:
    """Minibatches of (inputs, targets) over a split of M tokens, for truncated BPTT.

    Default (char-rnn layout): the split is cut into N contiguous streams of S = (M - 1) // N tokens; minibatch
    `index` of an epoch holds, for stream i, tokens[i*S + index*T : ... + T] as inputs and the same shifted by one
    as targets, so consecutive minibatches continue every stream and the hidden state can be carried. An epoch
    is steps_per_epoch = S // T minibatches; every epoch is the same sequence of minibatches.

    shuffle=True: the split is cut into windows of T + 1 tokens (starting every T tokens) and each epoch visits
    them in an order drawn from (seed, epoch); no state carries between minibatches (`carries_state` False).

    `batch(epoch, index)` is random access, which is what an exact resume needs; nothing is copied but the
    N*(T+1) tokens of the minibatch.

    check: optional callable(starts, length) called before a minibatch's tokens are read from `tokens`. The
    split's `Corpus.checker` (a ChunkCheck, which has `read`) reads them itself: it checks each chunk of the split
    the first time it is reached and reads with pread, so a damaged corpus, or one cut short during training, is
    a CorpusError and never SIGBUS.

    rows: optional (lo, hi): `batch` returns only rows lo..hi-1 of every minibatch of the N streams, and reads only
    their tokens (a rank of data-parallel training, fastrnn.distributed); everything else is the N-stream layout.
    """

    def __init__(self, tokens, batch_size, seq_len, *, shuffle=False, seed=0, name="train", check=None, rows=None):
        self.tokens = tokens  # (M,) array, or a corpus's Split
        self.check = check
        self.rows = None if rows is None else slice(int(rows[0]), int(rows[1]))
        self.batch_size, self.seq_len, self.shuffle, self.seed, self.name = int(batch_size), int(seq_len), \
            bool(shuffle), int(seed), name
        N, T, M = self.batch_size, self.seq_len, len(tokens)
        if N <= 0 or T <= 0:
            raise ConfigError(f"batch size and sequence length must be positive (got {N} and {T})")
        if shuffle:
            self.windows = (M - 1) // T
            self.steps_per_epoch = self.windows // N
        else:
            self.stream_len = (M - 1) // N  # S
            self.steps_per_epoch = self.stream_len // T
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the {name} split has {M} tokens, too few for one minibatch of batch size {N} x "
                              f"sequence length {T} (needs at least {N * T + 1}); use a smaller --batch-size or "
                              f"--seq-len, or a larger corpus")
        self._offsets = np.arange(T + 1, dtype=np.int64)  # (T+1,)
        self._perm_epoch, self._perm = None, None

    @property
    def carries_state(self):
        return not self.shuffle

    def starts(self, epoch, index):
        """(N,) int64 start positions of the rows of minibatch `index` in epoch `epoch`."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"minibatch index {index} outside 0..{self.steps_per_epoch - 1}")
        N, T = self.batch_size, self.seq_len
        if not self.shuffle:
            return np.arange(N, dtype=np.int64) * self.stream_len + index * T
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.windows)
            self._perm_epoch = epoch
        return self._perm[index * N: (index + 1) * N].astype(np.int64) * T

    def batch(self, epoch, index):
        """(x, y): (N, T) int32 inputs and targets (targets are inputs shifted by one) of minibatch `index` (the
        block of `rows` only, when given)."""
        starts = self.starts(epoch, index)  # (N,)
        if self.rows is not None:
            starts = starts[self.rows]
        read = getattr(self.check, "read", None)
        if read is not None:
            rows = read(starts, self.seq_len + 1).astype(np.int32)  # (N, T+1)
        else:
            if self.check is not None:
                self.check(starts, self.seq_len + 1)
            pos = starts[:, None] + self._offsets  # (N, T+1)
            rows = np.asarray(self.tokens[pos], dtype=np.int32)  # (N, T+1) reads only these tokens
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])
