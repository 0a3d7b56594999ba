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

What it earns (a training step with clip and Adam, T=50, 2 threads, fused lm.py / pair.py, median of 9 interleaved
repeats on a 2-core Xeon with AVX-512 and 2 MiB L2): H96 N1 1.07x, H128 N1 1.09-1.11x, H128 N2 1.22x, H256 N1
1.17x, H256 N2 0.87x, H512 N1 0.91x, H512 N2 0.85x. So dispatch.py measures it on each machine and shape and uses
it only where it is at least 1.15x faster (PAIR_MIN_GAIN).

The work and its order are the same whether the roles run on two threads or one after the other on one (`mode`
1, see sync.join; lm_forward_backward_alone calls that directly), so both give the same numbers, bit for bit.
Against lm.py's fused kernel only the cutting of the position products into chunks differs (results agree to
rounding). Arguments are lm.lm_forward_backward's with `sync` (sync.SYNC_SIZE int64) first and `grad` last
(False: loss only; the gradient arguments are then not touched).
"""

from numba import prange

from fastrnn.kernels.blas import gemm_serial
from fastrnn.kernels.jit import kernel, parallel_kernel
from fastrnn.kernels.lm import check_tokens
from fastrnn.kernels.rnn import backward_step, forward_step, scatter_rows
from fastrnn.kernels.softmax_xent import column_sums, softmax_rows
from fastrnn.kernels.sync import COUNT, join, store_release, wait_until

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
        scatter_rows(dWxh, acc, dz, x, t0, t1)
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
