"""The numba backend: the functions of the backend protocol (fastrnn.backend.Backend: plan_for, forward_backward,
forward_loss, profile_step, step, generate, generate_streams, advance_streams, stream_weights, clip_gradients, the
optimizer updates, threads and thread_count) with the signatures and semantics of fastrnn.reference's.

Gradients: forward_backward overwrites G in both backends. Inside, the reference's layer functions add into G
(it zeroes G first), while every numba kernel overwrites the gradient arrays it is given.

Layout: dispatch.py (which path a call takes: the Plan and every threshold, decided from the shape and the
measured answer it is handed), calibrate.py (the measurement: timing the candidate plans of a shape, and the
per-machine cache of the answers), backend.py (the Python API), jit.py (JIT options), mathfn.py (vectorizable
tanh/exp/sigmoid), rnn.py (RNN layer, and the general layer interface), gru.py and lstm.py (GRU and LSTM layers),
softmax_xent.py (output layer), lm.py (the one-layer vanilla RNN as one call), stack.py (any other model: cells,
stacked layers, dropout, layer by layer), sample.py (generation), optim.py (clipping and updates), blas.py (GEMM
through NumPy's OpenBLAS), workspace.py (scratch kept across calls), pools.py (thread counts: numba's and BLAS's);
and textscan.py, the numba loops of corpus preparation (UTF-8 validation, symbol counts). Nothing outside this
package imports numba.

The kernels load on first use of one of these names (PEP 562), so `fastrnn.kernels.pools` stays cheap to import;
the name is then bound in this module, so later uses are plain attribute lookups.
"""

API = ("plan_for", "forward_backward", "forward_loss", "profile_step", "step", "generate", "generate_streams",
       "advance_streams", "stream_weights", "clip_gradients", "sgd_update", "adagrad_update", "rmsprop_update",
       "adam_update", "threads", "thread_count")
__all__ = list(API)


def __getattr__(name):
    if name in API:
        from fastrnn.kernels import backend

        value = globals()[name] = getattr(backend, name)  # later lookups skip this hook (~1.3 us each, per step)
        return value
    raise AttributeError(f"module 'fastrnn.kernels' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(API))
