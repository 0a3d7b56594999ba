"""The backend protocol: the functions a backend offers the rest of fastrnn, and nothing else of it is used.

Two modules implement it: `fastrnn.reference` (NumPy: the definition, every kernel is tested against it) and
`fastrnn.kernels` (numba); `fastrnn.model.get_backend(name)` returns one. Outside a backend nothing imports numba
or sets thread counts: training, evaluation, sampling and serving go through `Backend`.

Arrays: P and G are dicts of parameter and gradient arrays (fastrnn.params layout), x and y (N, T) int token ids,
h0 and h (N, S) carried states (S: per layer h, then c for an lstm), masks (L, T, N, H) dropout masks or None,
g and p flat (P,) buffers. A plan comes from plan_for once per shape and goes with every call of that shape; it
has `path`, `precision`, `refused` (why bf16 products asked for were not granted, or ""), `way` (its name among
the ways the shape can run: a run records it, and plan_for(way=...) makes the same plan again) and `describe()`
(a line for people). The numba backend's plans are fastrnn.kernels.dispatch.Plan.
"""

import contextlib
import os
from typing import Protocol


class Backend(Protocol):
    """What a backend module offers (the methods are its module-level functions; `self` is not theirs)."""

    def plan_for(self, P, N, T, dropout=False, threads=None, precision="float32", way=None):
        """The plan for calls on N sequences of T steps of the model P, with or without dropout masks, on
        `threads` threads (None: the backend's count now), with bf16 recurrent products if asked and possible;
        way: the `way` of a plan made before for this shape (a resumed run's), made again without choosing."""

    def forward_backward(self, P, G, x, y, h0, masks=None, plan=None, clock=None):
        """Loss and gradients of one minibatch: G overwritten; returns (mean loss, new state (N, S)). clock: a
        dict that receives the seconds of each phase, or None."""

    def forward_loss(self, P, x, y, h0, masks=None, plan=None):
        """Loss only (evaluation): returns (mean loss, new state)."""

    def profile_step(self, P, G, x, y, h0, masks=None, plan=None):
        """forward_backward timed by phase: returns (loss, new state, {phase: seconds})."""

    def step(self, P, h, token, plan=None):
        """One generation step of N streams: token (N,) -> (new state (N, S), logits (N, V))."""

    def generate(self, P, h, logits, length, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rng=None):
        """Yield `length` sampled token ids of one stream from its state h (1, S) and logits (1, V), one uniform
        number of `rng` per character."""

    def generate_streams(self, P, h, logits, length, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rngs=None,
                         chunk=64, threads=None):
        """Yield (B, n) blocks of token ids of B streams, `length` per stream in all; stream b draws from rngs[b]
        and gets the tokens it would get alone."""

    def advance_streams(self, P, h, logits, n, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rngs=None,
                        threads=None, weights=None):
        """The next n tokens of B streams, a (B, n) array; h (B, S) and logits (B, V) are updated in place.
        Options may be one value or (B,) values; weights: stream_weights(P), kept by the caller."""

    def stream_weights(self, P):
        """What advance_streams reads of the model, prepared once."""

    def clip_gradients(self, g, clip, max_norm):
        """Global-norm scaling (max_norm > 0) then elementwise clipping (clip > 0), in place; returns the norm
        before clipping."""

    def sgd_update(self, p, g, vel, lr, momentum):
        """SGD with momentum, in place."""

    def adagrad_update(self, p, g, mem, lr, eps):
        """Adagrad, in place."""

    def rmsprop_update(self, p, g, ms, lr, decay, eps):
        """RMSprop, in place."""

    def adam_update(self, p, g, m, v, lr, beta1, beta2, eps, t):
        """Adam with bias correction (t: the 1-based step), in place."""

    def threads(self, n, blas=True):
        """A context: the backend's threads (and, with blas, every BLAS library's) at n inside (None: as they
        are), put back on exit; yields the count used."""

    def thread_count(self):
        """The threads the backend computes on in this thread now (None: it keeps no count of its own)."""


def cores():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def blas_threads(n, blas=True):
    """`threads` of a backend that computes with NumPy alone: BLAS's threads at n (at most the cores; None, or
    blas=False: as they are) inside, put back on exit. Yields the count used (None: not set)."""
    if n is None or not blas:
        yield None if n is None else max(1, min(int(n), cores()))
        return
    from threadpoolctl import threadpool_limits

    n = max(1, min(int(n), cores()))
    with threadpool_limits(limits=n, user_api="blas"):
        yield n


def no_thread_count():
    """`thread_count` of a backend that keeps no count of its own."""
    return None
