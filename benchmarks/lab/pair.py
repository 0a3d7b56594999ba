"""The one-layer vanilla RNN's loss and gradients for one or a few sequences, pipelined over two threads.

At batch 1 the step is two chains of T small matrix-vector products (hs[t] @ Whh forward, dz[t+1] @ Whh.T
backward, ~1 us each at H128) with the products over all positions (output layer, softmax, dWhy, dWhh) between
and after them. One thread (the chain, `me` 0) runs the recurrences exactly as lm.py does; the other (the side,
`me` 1) runs everything else as soon as its inputs exist, a chunk of about 8 positions at a time:

    chain:  forward t = 0..T-1 ............ | wait OUT = T | backward t = T-1..0 ...............
    side:       output chunk 0, 1, ... (each once FWD covers it) | dWhy, dby | dWhh, dbh, dWxh per chunk
                                                                              (each once BWD covers it)

They hand over through progress counters in `sync` (sync.py: release/acquire atomics, spin with pause and
sched_yield). Splitting the recurrent products themselves over the two threads does not pay: two threads
streaming weights from cache at the same time each run at about half speed.

What it earned, fused lm.py / this (a training step with clip and Adam, T=50, 2 threads, median of 9 interleaved
repeats): on a 2-core Zen 3 (512 KiB L2) 1.06-1.22x from H96 to H512 at N1-N4; on a 2-core Xeon (AVX-512, 2 MiB
L2), against fastrnn's fused step as it is now: H96 N1 0.95x, H128 N1 1.07x, H128 N2 0.97x, H256 N1 0.92x, H256 N2
0.88x, H512 N1 0.91x. Below the 15% that would pay for two busy cores and this much code, it left fastrnn for this
folder (`python -m benchmarks.lab.pair_vs_fused` measures it again).

The work and its order are the same whether the roles run on two threads or one after the other on one (`mode`
1, see sync.join; lm_forward_backward_alone calls that directly), so both give the same numbers, bit for bit.
Against lm.py's fused kernel only the cutting of the position products into chunks differs (results agree to
rounding). Arguments are lm.lm_forward_backward's with `sync` (sync.SYNC_SIZE int64) first and `grad` last
(False: loss only; the gradient arguments are then not touched).
"""

import numpy as np
from numba import prange

from benchmarks.lab.sync import COUNT, join, store_release, wait_until
from fastrnn.kernels.blas import gemm_serial
from fastrnn.kernels.jit import kernel, parallel_kernel
from fastrnn.kernels.lm import check_tokens
from fastrnn.kernels.rnn import backward_step, forward_step
from fastrnn.kernels.softmax_xent import column_sums, softmax_rows

FWD, OUT, BWD = COUNT, COUNT + 16, COUNT + 32  # progress counters in sync (128 bytes apart): forward steps done
# (chain), time steps of output done (side), backward steps done counting from the end (chain)
CHUNK_ROWS = 8  # positions per chunk of the side's work (measured at H128 N1: 4, 8 and 16 within noise, 8 best)


@kernel
def _wait(sync, idx, value, mode):
    """Spin until sync[idx] >= value (the partner's progress); no-op alone (mode 1: the work is already done)."""
    if mode == 2:
        wait_until(sync, idx, value)


@kernel
def _publish(sync, idx, value, mode):
    if mode == 2:
        store_release(sync, idx, value)


@kernel
def _chunk(T, N):
    """Time steps per chunk of the side's work: about CHUNK_ROWS positions, at least 1 step."""
    return max(1, min(T, (CHUNK_ROWS + N - 1) // N))


@kernel
def _chain_forward(sync, mode, hs, tmp, x, Wxh, Whh, bh):
    """hs[t+1] = tanh(Wxh[x[:, t]] + hs[t] @ Whh + bh) for t = 0..T-1 (as lm.py, hand loops), publishing FWD =
    t+1 after each step."""
    for t in range(hs.shape[0] - 1):
        forward_step(hs, tmp, x, Wxh, Whh, bh, True, t)
        _publish(sync, FWD, t + 1, mode)


@kernel
def _side_forward(sync, mode, hs, logits, dz, rowloss, y, Why, by, scale, grad):
    """Output layer chunk by chunk as the forward pass publishes it: logits, softmax cross-entropy, dlogits
    (in place) and dz rows = dlogits @ Why.T; publishes OUT = steps done."""
    T = hs.shape[0] - 1
    N, H = hs.shape[1], hs.shape[2]
    R = T * N
    h2 = hs[1:].reshape(R, H)
    d2 = dz.reshape(R, H)
    C = _chunk(T, N)
    for t0 in range(0, T, C):
        t1 = min(T, t0 + C)
        _wait(sync, FWD, t1, mode)
        r0, r1 = t0 * N, t1 * N
        gemm_serial(logits[r0:r1], h2[r0:r1], False, Why, False, 1.0, 0.0)
        softmax_rows(logits, rowloss, by, y, scale, grad, r0, r1)
        if grad:
            gemm_serial(d2[r0:r1], logits[r0:r1], False, Why, True, 1.0, 0.0)
        _publish(sync, OUT, t1, mode)


@kernel
def _chain_backward(sync, mode, dz, tmp, hs, Whh):
    """Backpropagation through time once the output side is done (OUT = T), as lm.py (hand loops); publishes
    BWD = number of steps done (from the end)."""
    T = dz.shape[0]
    _wait(sync, OUT, T, mode)
    for t in range(T - 1, -1, -1):
        backward_step(dz, tmp, hs, Whh, True, t)
        _publish(sync, BWD, T - t, mode)


@kernel
def _scatter_rows(dWxh, acc, dz, x, t0, t1):
    """For t = t0..t1-1 and each sequence n: dWxh[x[n, t]] += dz[t, n] and acc += dz[t, n] (float64 acc), in
    position order (a chunk of the positions: the side thread follows the backward pass)."""
    N, H = dz.shape[1], dz.shape[2]
    for t in range(t0, t1):
        for n in range(N):
            row = dz[t, n]
            dw = dWxh[x[n, t]]
            for j in range(H):
                acc[j] += row[j]
                dw[j] += row[j]


@kernel
def _side_backward(sync, mode, dWxh, dWhh, dbh, dWhy, dby, hs, logits, dz, acc, x):
    """dWhy, dby (the output side is done); then dWhh, dbh and dWxh chunk by chunk as the backward pass
    publishes them (last chunk first, so the sums run in that fixed order)."""
    T, N, H = dz.shape
    R = T * N
    gemm_serial(dWhy, hs[1:].reshape(R, H), True, logits, False, 1.0, 0.0)
    column_sums(dby, logits, acc)
    for j in range(H):
        acc[j] = 0.0
    dWxh[:, :] = 0
    C = _chunk(T, N)
    last = (T - 1) // C * C
    for t0 in range(last, -1, -C):
        t1 = min(T, t0 + C)
        _wait(sync, BWD, T - t0, mode)
        rows = (t1 - t0) * N
        gemm_serial(dWhh, hs[t0:t1].reshape(rows, H), True, dz[t0:t1].reshape(rows, H), False, 1.0,
                    0.0 if t0 == last else 1.0)
        _scatter_rows(dWxh, acc, dz, x, t0, t1)
    for j in range(H):
        dbh[j] = acc[j]


@kernel
def _work(me, mode, sync, dWxh, dWhh, dbh, dWhy, dby, hs, logits, dz, tmp, acc, rowloss,
          x, y, Wxh, Whh, bh, Why, by, scale, grad):
    """Thread `me`'s role (mode 2: 0 the recurrences, 1 the output side), or everything in order (mode 1)."""
    if mode == 1 or me == 0:
        _chain_forward(sync, mode, hs, tmp, x, Wxh, Whh, bh)
    if mode == 1 or me == 1:
        _side_forward(sync, mode, hs, logits, dz, rowloss, y, Why, by, scale, grad)
    if grad:
        if mode == 1 or me == 0:
            _chain_backward(sync, mode, dz, tmp, hs, Whh)
        if mode == 1 or me == 1:
            _side_backward(sync, mode, dWxh, dWhh, dbh, dWhy, dby, hs, logits, dz, acc, x)


@kernel
def _mean(rowloss):
    total = 0.0
    for r in range(rowloss.shape[0]):
        total += rowloss[r]
    return total / rowloss.shape[0]


@parallel_kernel
def lm_forward_backward_pair(sync, dWxh, dWhh, dbh, dWhy, dby, hs, logits, dz, tmp, acc, rowloss,
                             x, y, Wxh, Whh, bh, Why, by, scale, grad):
    """The step on two threads (see the module docstring); returns the mean loss in nats."""
    check_tokens(x, y, Wxh.shape[0])
    sync[:] = 0
    for me in prange(2):
        mode = join(sync, me)
        if mode > 0:
            _work(me, mode, sync, dWxh, dWhh, dbh, dWhy, dby, hs, logits, dz, tmp, acc, rowloss,
                  x, y, Wxh, Whh, bh, Why, by, scale, grad)
    return _mean(rowloss)


@kernel
def lm_forward_backward_alone(sync, dWxh, dWhh, dbh, dWhy, dby, hs, logits, dz, tmp, acc, rowloss,
                              x, y, Wxh, Whh, bh, Why, by, scale, grad):
    """The same work on the calling thread only (both roles in turn); returns the mean loss in nats."""
    check_tokens(x, y, Wxh.shape[0])
    _work(0, 1, sync, dWxh, dWhh, dbh, dWhy, dby, hs, logits, dz, tmp, acc, rowloss,
          x, y, Wxh, Whh, bh, Why, by, scale, grad)
    return _mean(rowloss)


class PairStep:
    """forward_backward of the one-layer rnn (fastrnn.reference's signature) through the kernels above, on two
    threads or in their one-thread order, whichever ran faster lately (chooser.TimingChooser; the same bits)."""

    def __init__(self):
        self.workspaces = {}  # (T, N, H, V, dtype) -> scratch arrays and a chooser per grad
        self.used = []  # True (two threads) or False per call, for tests

    def _workspace(self, T, N, H, V, dtype):
        from benchmarks.lab.chooser import TimingChooser
        from benchmarks.lab.sync import SYNC_SIZE

        key = (T, N, H, V, np.dtype(dtype).str)
        if key not in self.workspaces:
            self.workspaces[key] = dict(
                hs=np.empty((T + 1, N, H), dtype), logits=np.empty((T * N, V), dtype), dz=np.empty((T, N, H), dtype),
                tmp=np.empty((N, H), dtype), acc=np.empty(max(H, V)), rowloss=np.empty(T * N),
                sync=np.zeros(SYNC_SIZE, np.int64), choose={True: TimingChooser(), False: TimingChooser()})
        return self.workspaces[key]

    def __call__(self, P, G, x, y, h0, grad=True):
        """Loss and gradients (G overwritten if grad); returns (loss, the new state (N, H) as a new array)."""
        import time

        dtype = P["Whh"].dtype
        names = ("Wxh", "Whh", "bh", "Why", "by")
        params = [np.ascontiguousarray(P[k], dtype=dtype) for k in names]
        x, y = np.ascontiguousarray(x, dtype=np.int32), np.ascontiguousarray(y, dtype=np.int32)
        N, T = x.shape
        V, H = params[0].shape
        ws = self._workspace(T, N, H, V, dtype)
        ws["hs"][0] = h0
        outs = [G[k] for k in names] if grad else params  # without grad the gradient slots are not written
        chooser = ws["choose"][grad]
        two = chooser.choose()
        fn = lm_forward_backward_pair if two else lm_forward_backward_alone
        t0 = time.perf_counter()
        loss = fn(ws["sync"], *outs, ws["hs"], ws["logits"], ws["dz"], ws["tmp"], ws["acc"], ws["rowloss"], x, y,
                  *params, dtype.type(1.0 / (T * N)), grad)
        chooser.record(two, time.perf_counter() - t0)
        self.used.append(two)
        return float(loss), ws["hs"][T].copy()
