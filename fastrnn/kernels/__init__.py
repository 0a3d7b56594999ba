"""The numba backend: the functions of fastrnn.reference (plan_for, forward_backward, forward_loss, profile_step,
step, generate, generate_streams, advance_streams, stream_weights, clip_gradients and the optimizer updates) with
the same signatures and semantics.

Gradients: forward_backward overwrites G in both backends. Inside, the reference's layer functions add into G
(it zeroes G first), while every numba kernel overwrites the gradient arrays it is given.

Layout: dispatch.py (which path a call takes: the Plan, every threshold, the measured choices), backend.py (the
Python API), jit.py (JIT options), mathfn.py (vectorizable tanh/exp/sigmoid), rnn.py (RNN layer, and the general
layer interface), gru.py and lstm.py (GRU and LSTM layers), softmax_xent.py (output layer), lm.py (the one-layer
vanilla RNN as one call), stack.py (any other model: cells, stacked layers, dropout, layer by layer), sample.py
(generation), optim.py (clipping and updates), blas.py (GEMM through NumPy's OpenBLAS), workspace.py (scratch
kept across calls), threads.py (thread counts).

The kernels load on first use of one of these names (PEP 562), so `fastrnn.kernels.threads` stays cheap to import;
the name is then bound in this module, so later uses are plain attribute lookups.
"""

API = ("plan_for", "forward_backward", "forward_loss", "profile_step", "step", "generate", "generate_streams",
       "advance_streams", "stream_weights", "clip_gradients", "sgd_update", "adagrad_update", "rmsprop_update",
       "adam_update")
__all__ = list(API)


def __getattr__(name):
    if name in API:
        from fastrnn.kernels import backend

        value = globals()[name] = getattr(backend, name)  # later lookups skip this hook (~1.3 us each, per step)
        return value
    raise AttributeError(f"module 'fastrnn.kernels' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(API))
