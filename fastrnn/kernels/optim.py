"""Gradient clipping and optimizer updates over the flat buffers (numba), mirroring fastrnn.reference.

Every update is one fused elementwise loop over fixed chunks of CHUNK elements, in order (the clipping norm sums
per-chunk float64 partials in chunk order). The drivers run on one thread: chunks in a prange measured 1.9x faster
for the update alone from 1M values on, but in a training step, beside the BLAS threads, they were 0.70x at an rnn
H512 N64 (329k parameters), 0.97x at a 2-layer lstm H512 (3.3M) and 1.00x at an lstm H1024 (4.5M), so they went. Scalars arrive as Python floats (cheaper to pass
than NumPy scalars: a call is ~3 us faster) and are cast to the buffers' dtype here (`mathfn.cast_like`), as NumPy casts
Python floats in the reference.
"""

import numpy as np
from fastrnn.kernels.jit import kernel
from fastrnn.kernels.mathfn import cast_like

CHUNK = 1 << 14


@kernel
def _sumsq_chunk(g, lo, hi):
    g = g[lo:hi]  # loops from 0 over slices vectorize (no negative-index wraparound check)
    s = 0.0
    for i in range(g.shape[0]):
        v = np.float64(g[i])
        s += v * v
    return s


@kernel
def _sumsq_clip_chunk(g, lo, hi, clip):
    """_sumsq_chunk of the values before clipping, and the elementwise clip to [-clip, clip], in one pass."""
    g = g[lo:hi]
    s = 0.0
    for i in range(g.shape[0]):
        v = g[i]
        w = np.float64(v)
        s += w * w
        v = clip if v > clip else v  # NaN passes through, as np.clip
        v = -clip if v < -clip else v
        g[i] = v
    return s


@kernel
def _ordered_sum(partial):
    s = 0.0
    for c in range(partial.shape[0]):
        s += partial[c]
    return s


@kernel
def _scale_clip_chunk(g, lo, hi, scale, do_scale, clip, do_clip):
    g = g[lo:hi]
    for i in range(g.shape[0]):
        v = g[i]
        if do_scale:
            v = v * scale
        if do_clip:
            v = clip if v > clip else v  # NaN passes through, as np.clip
            v = -clip if v < -clip else v
        g[i] = v


@kernel
def _sgd_chunk(p, g, vel, lo, hi, lr, momentum):
    p, g, vel = p[lo:hi], g[lo:hi], vel[lo:hi]
    lr, momentum = cast_like(lr, p), cast_like(momentum, p)
    for i in range(p.shape[0]):
        u = vel[i] * momentum - lr * g[i]
        vel[i] = u
        p[i] += u


@kernel
def _adagrad_chunk(p, g, mem, lo, hi, lr, eps):
    p, g, mem = p[lo:hi], g[lo:hi], mem[lo:hi]
    lr, eps = cast_like(lr, p), cast_like(eps, p)
    for i in range(p.shape[0]):
        gi = g[i]
        m = mem[i] + gi * gi
        mem[i] = m
        p[i] -= lr * gi / np.sqrt(m + eps)


@kernel
def _rmsprop_chunk(p, g, ms, lo, hi, lr, decay, one_minus_decay, eps):
    p, g, ms = p[lo:hi], g[lo:hi], ms[lo:hi]
    lr, decay, one_minus_decay = cast_like(lr, p), cast_like(decay, p), cast_like(one_minus_decay, p)
    eps = cast_like(eps, p)
    for i in range(p.shape[0]):
        gi = g[i]
        s = ms[i] * decay + one_minus_decay * gi * gi
        ms[i] = s
        p[i] -= lr * gi / (np.sqrt(s) + eps)


@kernel
def _adamw_chunk(p, g, m, v, lo, hi, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, mscale, vscale, eps, shrink):
    """Adam's step on p[lo:hi] (bias-corrected: mscale, vscale) after decoupled weight decay: p first shrinks by
    `shrink` (1 - lr * weight_decay; 1 for Adam itself, exact: the same bits as no shrink)."""
    p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    lr, beta1, one_minus_beta1 = cast_like(lr, p), cast_like(beta1, p), cast_like(one_minus_beta1, p)
    beta2, one_minus_beta2 = cast_like(beta2, p), cast_like(one_minus_beta2, p)
    mscale, vscale, eps, shrink = cast_like(mscale, p), cast_like(vscale, p), cast_like(eps, p), cast_like(shrink, p)
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] * beta1 + one_minus_beta1 * gi
        vi = v[i] * beta2 + one_minus_beta2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * shrink - lr * (mi * mscale) / (np.sqrt(vi * vscale) + eps)


@kernel
def clip_serial(g, clip, max_norm):
    """Global-norm scaling then elementwise clipping of g in place; returns the norm before clipping.
    clip, max_norm: floats. Without norm scaling (max_norm <= 0) the norm and the clip take one pass."""
    n = g.shape[0]
    partial = np.empty(max(1, (n + CHUNK - 1) // CHUNK), np.float64)
    clip = cast_like(clip, g)
    if max_norm <= 0 and clip > 0:
        for c in range(partial.shape[0]):
            partial[c] = _sumsq_clip_chunk(g, c * CHUNK, min(n, (c + 1) * CHUNK), clip)
        return np.sqrt(_ordered_sum(partial))
    for c in range(partial.shape[0]):
        partial[c] = _sumsq_chunk(g, c * CHUNK, min(n, (c + 1) * CHUNK))
    norm = np.sqrt(_ordered_sum(partial))
    scale = np.empty(1, g.dtype)
    scale[0] = max_norm / norm if max_norm > 0 and norm > max_norm else 1.0
    do_scale = max_norm > 0 and norm > max_norm
    if do_scale or clip > 0:
        _scale_clip_chunk(g, 0, n, scale[0], do_scale, clip, clip > 0)
    return norm


@kernel
def sgd_serial(p, g, vel, lr, momentum):
    _sgd_chunk(p, g, vel, 0, p.shape[0], lr, momentum)


@kernel
def adagrad_serial(p, g, mem, lr, eps):
    _adagrad_chunk(p, g, mem, 0, p.shape[0], lr, eps)


@kernel
def rmsprop_serial(p, g, ms, lr, decay, one_minus_decay, eps):
    _rmsprop_chunk(p, g, ms, 0, p.shape[0], lr, decay, one_minus_decay, eps)


@kernel
def adam_serial(p, g, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, mscale, vscale, eps):
    _adamw_chunk(p, g, m, v, 0, p.shape[0], lr, beta1, one_minus_beta1, beta2, one_minus_beta2, mscale, vscale, eps,
                 1.0)


@kernel
def adamw_serial(p, g, m, v, bounds, decays, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, mscale, vscale, eps,
                 shrink):
    """AdamW (Loshchilov & Hutter 2019) over the segments [bounds[k], bounds[k + 1]) of the flat buffers: those with
    decays[k] (the weight matrices) shrink by `shrink` = 1 - lr * weight_decay before Adam's step, the others
    (biases) take Adam's step alone."""
    for k in range(decays.shape[0]):
        _adamw_chunk(p, g, m, v, bounds[k], bounds[k + 1], lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                     mscale, vscale, eps, shrink if decays[k] else 1.0)
