"""Output layer: affine logits and softmax cross-entropy, fused (numba), mirroring fastrnn.reference.

Letters: N batch, T time, H hidden, V vocabulary; rows of the (T*N, V) logits are positions in time-major order,
row t*N + n is sequence n at time t.
"""

import numpy as np

from fastrnn.kernels import mathfn
from fastrnn.kernels.blas import gemm, gemm_on
from numba import prange

from fastrnn.kernels.jit import kernel, parallel_kernel


@kernel
def softmax_row(z, by, target, scale, grad):
    """One position: z (V,) in: logits without the bias; out (if grad): (softmax - onehot(target)) * scale.
    Returns -log p(target) as float64."""
    V = z.shape[0]
    m = z[0] + by[0]
    for v in range(V):
        z[v] += by[v]
        m = max(m, z[v])
    s = scale - scale  # a zero of the logits dtype
    zt = z[target] - m
    for v in range(V):
        e = mathfn.exp(z[v] - m)
        z[v] = e
        s += e
    loss = np.log(s) - zt
    if grad:
        k = scale / s
        for v in range(V):
            z[v] *= k
        z[target] -= scale
    return loss


@kernel
def softmax_rows(logits, rowloss, by, y, scale, grad, r0, r1):
    """softmax_row on rows r0..r1-1 of logits (row r = t*N + n has target y[n, t]); rowloss[r] = its loss."""
    N = y.shape[0]
    for r in range(r0, r1):
        rowloss[r] = softmax_row(logits[r], by, y[r % N, r // N], scale, grad)


@kernel
def softmax_xent(logits, rowloss, by, y, scale, grad):
    """Bias, softmax and cross-entropy in one pass per row, in place.

    logits: (T*N, V) in: hs @ Why without the bias; out (if grad): dlogits = (softmax - onehot(y)) * scale.
    rowloss: (T*N,) float64 out, -log p(target) per row; by: (V,); y: (N, T) int32 targets; scale: 1/(T*N) in the
    logits' dtype. Returns the mean loss (fixed-order float64 sum of rowloss).
    """
    R = logits.shape[0]
    softmax_rows(logits, rowloss, by, y, scale, grad, 0, R)
    return mean_loss(rowloss)


@parallel_kernel
def softmax_xent_split(logits, rowloss, by, y, scale, grad, groups):
    """softmax_xent as `groups` blocks of rows, one per numba thread: each row is computed as in softmax_xent and
    the mean is the same fixed-order sum, so the result does not depend on `groups`."""
    R = logits.shape[0]
    for q in prange(groups):
        softmax_rows(logits, rowloss, by, y, scale, grad, (q * R) // groups, ((q + 1) * R) // groups)
    return mean_loss(rowloss)


@kernel
def softmax_xent_on(logits, rowloss, by, y, scale, grad, groups):
    """softmax_xent (groups <= 1) or softmax_xent_split over `groups` numba threads."""
    if groups > 1:
        return softmax_xent_split(logits, rowloss, by, y, scale, grad, groups)
    return softmax_xent(logits, rowloss, by, y, scale, grad)


@kernel
def mean_loss(rowloss):
    """The mean of rowloss: (R,) float64, summed in row order."""
    R = rowloss.shape[0]
    total = 0.0
    for r in range(R):
        total += rowloss[r]
    return total / R


@kernel
def affine_backward(dW, db, dx, dout, x, W, acc, groups=0):
    """dW: (H, V) = x.T @ dout, db: (V,) = column sums of dout (overwritten); dx: (T*N, H) = dout @ W.T.

    dout: (T*N, V); x: (T*N, H); W: (H, V); acc: (V,) float64 scratch; groups: blas.gemm_on's.
    """
    gemm_on(dW, x, True, dout, False, 1.0, 0.0, groups)
    gemm_on(dx, dout, False, W, True, 1.0, 0.0, groups)
    column_sums(db, dout, acc)


@kernel
def column_sums(out, rows, acc):
    """out: (C,) = the column sums of rows: (R, C), accumulated in float64 in row order (acc: (>= C,) scratch)."""
    R, C = rows.shape
    for c in range(C):
        acc[c] = 0.0
    for r in range(R):
        row = rows[r]
        for c in range(C):
            acc[c] += row[c]
    for c in range(C):
        out[c] = acc[c]
