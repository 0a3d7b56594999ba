"""Evaluation during training: which validation tokens an evaluation scores, and scoring them with progress,
stoppable between minibatches (a signal, the end of --max-time).

The val split is cut into n streams spread evenly over it (n = the training batch size, fewer if the split is
small), as training cuts the train split, and an evaluation scores minibatches 0..K-1 of them, the hidden state
carried from zero. Which K (--eval-tokens):

    auto  (default) K = AUTO_SHARE x --eval-every minibatches, at most all of them: an evaluation scores 8% as
          many tokens as training reads between two evaluations. Scoring a token (forward only) costs at most
          about half of training on it (forward, backward, update), so periodic evaluation takes about 4% of the
          run's time whatever the machine, model or corpus size, and the tokens follow from the configuration
          alone: every evaluation of a run, resumed or not, scores the same tokens, and a run is reproducible.
    all   every minibatch: the whole split.
    N     the split's first N tokens only, cut into n streams, every minibatch of them.
"""

import dataclasses
import math
import time

from fastrnn.corpus import BatchStream
from fastrnn.distributed import SINGLE

AUTO_SHARE = 0.08  # val minibatches per training step between evaluations (--eval-tokens auto)
AUTO_EVERY = 500  # the --eval-every that sizes auto evaluations of a run that evaluates only at the end
EVAL_COST = 0.5  # a minibatch's evaluation over its training step, at most (measured 0.1-0.55; only for estimates)
PROGRESS_INTERVAL = 0.25  # seconds between 'evaluating' events


@dataclasses.dataclass
class ValSet:
    """The tokens an evaluation scores: minibatches 0..batches-1 of `stream`."""

    stream: BatchStream
    batches: int
    split_tokens: int  # tokens in the val split
    mode: str  # --eval-tokens: "auto", "all" or N

    @property
    def tokens(self):
        """Tokens predicted by one evaluation (over all ranks' streams)."""
        return self.batches * self.stream.batch_size * self.stream.seq_len

    def describe(self):
        s = self.stream
        if self.mode == "all" or (self.mode == "auto" and self.batches == s.steps_per_epoch):
            where = "every minibatch of the split"
        elif self.mode == "auto":
            where = (f"{s.batch_size} windows of {self.batches * s.seq_len:,} tokens spread evenly over the split, "
                     f"{self.batches:,} of its {s.steps_per_epoch:,} minibatches")
        else:
            where = f"every minibatch of its first {int(self.mode):,} tokens"
        return (f"validation: {self.tokens:,} of {self.split_tokens:,} val tokens per evaluation, {where} "
                f"(--eval-tokens {self.mode})")


def val_set(tokens, config, check=None, comm=SINGLE):
    """The ValSet of a run's val split `tokens` under config.eval_tokens, or None if the split is too small for a
    minibatch (with several ranks, each reads its block of the streams)."""
    mode = config.eval_tokens
    split_tokens = len(tokens)
    if mode not in ("auto", "all"):
        tokens = tokens[: int(mode)]
    n = min(config.batch_size, (len(tokens) - 1) // config.seq_len)
    if n <= 0:
        return None
    stream = BatchStream(tokens, n, config.seq_len, name="val", check=check,
                         rows=comm.rows(n) if comm.size > 1 else None)
    batches = stream.steps_per_epoch
    if mode == "auto":
        batches = min(batches, max(1, math.ceil(AUTO_SHARE * (config.eval_every or AUTO_EVERY))))
    return ValSet(stream, batches, split_tokens, mode)


def keep_tokens(valset, mode, recorded_mode, recorded_batches):
    """A resumed run's evaluations score the tokens the run's did (`recorded_batches` under --eval-tokens
    `recorded_mode`; auto sizes them from --eval-every, which a resumed run may change) while --eval-tokens is the
    same: `valset` is set to them. Returns the sentence to say if --eval-tokens changed, else None."""
    if recorded_batches and recorded_mode == mode:
        valset.batches = min(recorded_batches, valset.stream.steps_per_epoch)
    elif recorded_batches:
        return (f"--eval-tokens {mode} (the run had {recorded_mode}): evaluations from here on score "
                f"{valset.tokens:,} val tokens, not the earlier ones")
    return None


class Scoring:
    """One evaluation: score(...) returns the mean loss, or None if `stop` ended it first; `seconds` it took,
    `done` minibatches scored, `stopped_by` the reason stop gave, `seconds_per_batch` measured without the first
    minibatch (which may compile the kernels)."""

    def __init__(self, valset, step, emit=None, clock=time.perf_counter):
        self.valset, self.step, self.emit, self.clock = valset, step, emit or (lambda kind, data: None), clock
        self.done, self.seconds, self.stopped_by, self.seconds_per_batch = 0, 0.0, None, None

    def score(self, backend, model, plan=None, comm=SINGLE, stop=None):
        """Minibatches 0..K-1 of the val streams, hidden state carried from zero. With several ranks each scores
        its block of the streams (`stream.rows`) and the sums are reduced: every rank returns the loss of all the
        streams. stop: called before each minibatch, returns a reason to stop (the same on every rank) or None."""
        stream, K = self.valset.stream, self.valset.batches
        lo, hi = comm.rows(stream.batch_size)
        h = model.zero_state(hi - lo)
        total, start = 0.0, self.clock()
        first_done = shown = start
        for index in range(K):
            reason = stop() if stop is not None else None
            if reason is not None:
                self.stopped_by, self.seconds = reason, self.clock() - start
                return None
            if hi > lo:
                x, y = stream.batch(0, index)
                loss, h = backend.forward_loss(model.P, x, y, h, plan=plan)
                total += loss
            self.done = index + 1
            now = self.clock()
            if index == 0:
                first_done = now
            if now - shown >= PROGRESS_INTERVAL and 1 < self.done < K:  # (an ETA needs a minibatch after the first)
                shown = now
                self.progress(now - start, now - first_done)
        end = self.clock()
        self.seconds = end - start
        if K > 1:
            self.seconds_per_batch = (end - first_done) / (K - 1)
        if comm.size == 1:
            return total / K
        share = _array([total * (hi - lo) / stream.batch_size])
        comm.allreduce(share)
        return float(share[0]) / K

    def progress(self, seconds, since_first):
        """An 'evaluating' event: how far this evaluation is, and its ETA from the minibatches after the first."""
        K, per = self.valset.batches, self.valset.stream.batch_size * self.valset.stream.seq_len
        rate = since_first / (self.done - 1) if self.done > 1 else None
        self.emit("evaluating", {"step": self.step, "batches": self.done, "of": K, "tokens": self.done * per,
                                 "total_tokens": self.valset.tokens, "seconds": seconds,
                                 "eta": None if rate is None else rate * (K - self.done)})


def _array(values):
    import numpy as np

    return np.array(values, dtype=np.float64)
