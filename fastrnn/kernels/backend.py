"""The numba backend's Python API: the functions of fastrnn.reference, same signatures and semantics.

The one-layer vanilla RNN without dropout masks takes the fused path: each call prepares arguments (contiguous
int32 tokens, scalars cast to the parameters' dtype, scratch buffers reused across calls of the same shape) and
makes one njit call (lm.py, or pair.py for one to four sequences on two threads). Every other model (gru, lstm, stacked layers, dropout) goes to stack.py, which
composes the per-layer kernels.
"""

import statistics
import time

import numba
import numpy as np

from fastrnn.kernels import lm, optim, pair, stack
from fastrnn.kernels.sync import SYNC_SIZE

SMALL_WORK = 1 << 16  # N*H*H at or below which the recurrent products use hand loops instead of BLAS (and, for
# at most stack.SMALL_ROWS sequences, the other products one BLAS thread); negative: BLAS everywhere; see _small
PARALLEL_SIZE = 1 << 22  # flat buffers at least this long use the parallel (prange) update kernels: below,
# the serial loop is faster because prange threads and the BLAS threads contend for the same cores (measured at
# H=512: 63k chars/s with prange from 65k parameters on, 78k serial)
PAIR_ROWS = 4  # with two or more threads, the fused path at batches of at most this many sequences (and hand-loop
PAIR_MIN_HIDDEN = 96  # recurrences) of at least this hidden size runs pair.py: one thread the recurrences, the
# other the output layer and the weight gradients, pipelined. Measured at 2 threads, us per training step (forward,
# backward, clip, Adam), lm.py vs pair.py in one process: H128 N1 287 vs 271 (fb alone 184 vs 135), H128 N4 840 vs
# 779, H96 N1 235 vs 210, H512 N1 3723 vs 3053; at H64 the hand-over costs more than it saves: N1 126 vs 195, N2
# 202 vs 245, N4 365 vs 385
PROBE_EVERY, MAX_PROBE_EVERY = 64, 4096  # pair.py on two threads or its one-thread order (same bits): the faster
KEEP = 5  # recently (median of the last KEEP calls of each) is used, the other timed again now and then (PairChooser)
HOPELESS = 20  # a probe call this many times slower than the path in use ends the probe
_MAX_WORKSPACES = 4
_workspaces = {}  # (T, N, H, V, dtype) -> scratch arrays, most recently used last


def _workspace(T, N, H, V, dtype):
    key = (T, N, H, V, np.dtype(dtype).str)
    ws = _workspaces.pop(key, None)
    if ws is None:
        if len(_workspaces) >= _MAX_WORKSPACES:
            _workspaces.pop(next(iter(_workspaces)))
        ws = dict(hs=np.empty((T + 1, N, H), dtype),  # (T+1, N, H)
                  logits=np.empty((T * N, V), dtype),  # (T*N, V)
                  dz=np.empty((T, N, H), dtype),  # (T, N, H)
                  tmp=np.empty((N, H), dtype),  # (N, H)
                  acc=np.empty(max(H, V), np.float64),  # (max(H, V),)
                  rowloss=np.empty(T * N, np.float64),  # (T*N,)
                  sync=np.zeros(SYNC_SIZE, np.int64),  # pair.py's progress counters
                  choose={True: PairChooser(), False: PairChooser()})  # by grad
    _workspaces[key] = ws
    return ws


def _params(P):
    dtype = P["Whh"].dtype
    return dtype, [np.ascontiguousarray(P[k], dtype=dtype) for k in ("Wxh", "Whh", "bh", "Why", "by")]


def _tokens(x):
    return np.ascontiguousarray(x, dtype=np.int32)


def _small(N, H):
    """The fused path's `small` level (rnn.py). 1: hand loops for the per-step recurrent products, when
    N*H*H <= SMALL_WORK or at most stack.SMALL_ROWS sequences at any H (OpenBLAS's sgemm repacks all of Whh for
    one or two rows: H512 N1 was 0.52x numpy); 2: also the products over all positions (output layer, dWhh) on
    one BLAS thread, when both hold (measured at 2 threads, us a minibatch of T=50, threaded vs one thread:
    H128 N1 204 vs 169, N2 532 vs 384; H64 N1 even; H128 N4 and H256 N1 even; H64 N8 462 vs 522, N16 845 vs
    1184); 0: BLAS. A negative SMALL_WORK forces 0."""
    if SMALL_WORK < 0:
        return 0
    few = N <= stack.SMALL_ROWS
    if N * H * H <= SMALL_WORK:
        return 2 if few else 1
    return 1 if few else 0


def _paired(N, H, small):
    """True if the fused path runs pair.py (see PAIR_ROWS), on two threads or in its one-thread order."""
    return small >= 1 and N <= PAIR_ROWS and H >= PAIR_MIN_HIDDEN and numba.get_num_threads() >= 2


class PairChooser:
    """Whether to run pair.py on two threads or its one-thread order (lm_forward_backward_alone): the same work,
    the same bits. The two threads hand work to each other every few microseconds, so they need both cores at
    once: with another busy process on a 2-core machine a step took 16-18 ms on two threads against 0.2-0.3 ms on
    one. The faster of the two over their last KEEP timed calls (median) is used. The other is tried again, for
    KEEP calls in a row (its first call after a pause wakes its threads and is slow), after PROBE_EVERY calls, and
    after twice as many each time it loses (up to MAX_PROBE_EVERY), so that a slow probe costs little; a probe
    call HOPELESS times slower than the path in use ends the probe at once. A path's first call (compilation,
    thread start) is not timed."""

    def __init__(self):
        self.times = {True: [], False: []}  # seconds of the latest calls, by "two threads"
        self.started = {True: False, False: False}
        self.calls = 0
        self.interval = self.next_probe = PROBE_EVERY
        self.probe = None  # while probing: (path, calls left, the other path's median)

    def _best(self):
        return statistics.median(self.times[True]) <= statistics.median(self.times[False])

    def two_threads(self):
        """The path for the next call: True for two threads."""
        self.calls += 1
        for path in (True, False):
            if not self.times[path]:
                return path
        if self.probe is None and self.calls >= self.next_probe:
            other = not self._best()
            self.probe = (other, KEEP, statistics.median(self.times[not other]))
        return self.probe[0] if self.probe is not None else self._best()

    def record(self, two, seconds):
        """The time of the call just made on the path two_threads() returned."""
        if not self.started[two]:
            self.started[two] = True
            return
        recent = self.times[two]
        recent.append(seconds)
        del recent[:-KEEP]
        if self.probe is not None:
            path, left, rival = self.probe
            hopeless = seconds > HOPELESS * rival  # e.g. the cores are taken: stop at once
            self.probe = (path, left - 1, rival) if left > 1 and not hopeless else None
            if self.probe is None:
                won = not hopeless and statistics.median(recent) < rival
                self.interval = PROBE_EVERY if won else min(2 * self.interval, MAX_PROBE_EVERY)
                self.next_probe = self.calls + self.interval


def _pair_call(ws, grad, *args):
    """pair.py's kernel on two threads or on this one (ws["choose"]); returns its loss."""
    chooser = ws["choose"][grad]
    two = chooser.two_threads()
    fn = pair.lm_forward_backward_pair if two else pair.lm_forward_backward_alone
    t0 = time.perf_counter()
    loss = fn(ws["sync"], *args, grad)
    chooser.record(two, time.perf_counter() - t0)
    return loss


def _fused(P):
    """True for the one-layer vanilla RNN (the fused single-call path): arch_of(P)[:2] == ("rnn", 1), read from
    Whh's shape and the absence of a second layer without building arch_of's answer (this runs every step)."""
    H, GH = P["Whh"].shape
    return GH == H and "Whh1" not in P


def forward_backward(P, G, x, y, h0, masks=None):
    """Loss and gradients of the language model on one minibatch (see fastrnn.reference).

    P: dict of parameter arrays; G: dict of gradient arrays of the same shapes, overwritten. x, y: (N, T) int
    inputs and targets; h0: (N, S) carried state; masks: (L, T, N, H) dropout masks or None.
    Returns (loss, new state (N, S) new array).
    """
    if masks is not None or not _fused(P):
        return stack.forward_backward(P, G, x, y, h0, masks)
    dtype, (Wxh, Whh, bh, Why, by) = _params(P)
    x, y = _tokens(x), _tokens(y)
    N, T = x.shape
    V, H = Wxh.shape
    ws = _workspace(T, N, H, V, dtype)
    ws["hs"][0] = h0
    outs = [G[k] for k in ("Wxh", "Whh", "bh", "Why", "by")]
    direct = [g if g.flags.c_contiguous and g.dtype == dtype else np.empty(g.shape, dtype) for g in outs]
    small = _small(N, H)
    if _paired(N, H, small):
        loss = _pair_call(ws, True, *direct, ws["hs"], ws["logits"], ws["dz"], ws["tmp"], ws["acc"], ws["rowloss"],
                          x, y, Wxh, Whh, bh, Why, by, dtype.type(1.0 / (T * N)))
    else:
        loss = lm.lm_forward_backward(*direct, ws["hs"], ws["logits"], ws["dz"], ws["tmp"], ws["acc"], ws["rowloss"],
                                      x, y, Wxh, Whh, bh, Why, by, dtype.type(1.0 / (T * N)), small)
    for g, d in zip(outs, direct):
        if g is not d:
            g[...] = d
    return float(loss), ws["hs"][T].copy()


def forward_loss(P, x, y, h0, masks=None):
    """Loss only (evaluation): returns (loss, new state)."""
    if masks is not None or not _fused(P):
        return stack.forward_loss(P, x, y, h0, masks)
    dtype, (Wxh, Whh, bh, Why, by) = _params(P)
    x, y = _tokens(x), _tokens(y)
    N, T = x.shape
    V, H = Wxh.shape
    ws = _workspace(T, N, H, V, dtype)
    ws["hs"][0] = h0
    small = _small(N, H)
    if _paired(N, H, small):
        unused = (Wxh, Whh, bh, Why, by)  # the gradient slots: not written without grad
        loss = _pair_call(ws, False, *unused, ws["hs"], ws["logits"], ws["dz"], ws["tmp"], ws["acc"], ws["rowloss"],
                          x, y, Wxh, Whh, bh, Why, by, dtype.type(1.0 / (T * N)))
    else:
        loss = lm.lm_forward_loss(ws["hs"], ws["logits"], ws["tmp"], ws["rowloss"], x, y, Wxh, Whh, bh, Why, by,
                                  dtype.type(1.0 / (T * N)), small)
    return float(loss), ws["hs"][T].copy()


def step(P, h, token):
    """One generation step: h: (N, S), token: (N,) int. Returns (new state (N, S), logits: (N, V))."""
    if not _fused(P):
        return stack.step(P, h, token)
    dtype, (Wxh, Whh, bh, Why, by) = _params(P)
    h = np.ascontiguousarray(h, dtype=dtype)
    token = np.ascontiguousarray(token, dtype=np.int32).reshape(-1)
    N, H = h.shape
    V = by.shape[0]
    if token.shape[0] != N:
        raise ValueError(f"step: {token.shape[0]} tokens for {N} hidden states")
    if N and (token.min() < 0 or token.max() >= V):
        raise IndexError("token id out of range of the vocabulary")
    h_new = np.empty((N, H), dtype)  # (N, H)
    logits = np.empty((N, V), dtype)  # (N, V)
    lm.lm_step(h_new, logits, h, token, Wxh, Whh, bh, Why, by)
    return h_new, logits


def clip_gradients(g, clip, max_norm):
    """Global-norm scaling (if max_norm > 0) then elementwise clipping to [-clip, clip] (if clip > 0), in place.

    Returns the global norm before clipping (float64 sum of squares).
    """
    fn = optim.clip_parallel if g.shape[0] >= PARALLEL_SIZE else optim.clip_serial
    return float(fn(g, float(clip), float(max_norm)))


def sgd_update(p, g, vel, lr, momentum):
    """SGD with (heavy-ball) momentum: vel = momentum * vel - lr * g; p += vel."""
    (optim.sgd_parallel if p.shape[0] >= PARALLEL_SIZE else optim.sgd_serial)(p, g, vel, float(lr), float(momentum))


def adagrad_update(p, g, mem, lr, eps):
    """Adagrad as min-char-rnn: mem += g^2; p -= lr * g / sqrt(mem + eps)."""
    (optim.adagrad_parallel if p.shape[0] >= PARALLEL_SIZE else optim.adagrad_serial)(p, g, mem, float(lr), float(eps))


def rmsprop_update(p, g, ms, lr, decay, eps):
    """RMSprop as char-rnn: ms = decay * ms + (1 - decay) * g^2; p -= lr * g / (sqrt(ms) + eps)."""
    (optim.rmsprop_parallel if p.shape[0] >= PARALLEL_SIZE else optim.rmsprop_serial)(
        p, g, ms, float(lr), float(decay), 1.0 - decay, float(eps))


def adam_update(p, g, m, v, lr, beta1, beta2, eps, t):
    """Adam (Kingma & Ba) with bias correction; t is the 1-based step number."""
    (optim.adam_parallel if p.shape[0] >= PARALLEL_SIZE else optim.adam_serial)(
        p, g, m, v, float(lr), float(beta1), 1.0 - beta1, float(beta2), 1.0 - beta2, 1.0 / (1.0 - beta1 ** t),
        1.0 / (1.0 - beta2 ** t), float(eps))
