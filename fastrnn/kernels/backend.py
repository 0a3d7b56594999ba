"""The numba backend's Python API: the backend protocol (fastrnn.backend.Backend), with fastrnn.reference's
signatures and semantics, plus the plan.

Every call that runs a model takes a dispatch.Plan (`plan=`), made once per shape by `plan_for` (or `plan`, from
the shape): the training loop makes its plans at the start and passes them. Without one, the call makes the
plan for its shape on numba's current thread count. A plan is dispatch.plan's decision, handed the answer of the
measurement of the shape's candidates (calibrate.measured, timing `training_step`s) unless measuring is off.

The plan's path decides: "fused" (the one-layer rnn without dropout masks) prepares arguments (contiguous int32
tokens, scalars in the parameters' dtype, scratch kept across calls) and makes one njit call (lm.py); "layers"
goes to stack.py, which composes the per-layer kernels.
"""

import time

import numpy as np

from fastrnn.dropout import make_masks
from fastrnn.kernels import calibrate, dispatch, lm, optim, stack, workspace as scratch
from fastrnn.kernels.pools import thread_count, threads  # noqa: F401 (the protocol's threads and thread_count)
from fastrnn.kernels.workspace import Grads
from fastrnn.params import model_layout, state_size

RNN_NAMES = ("Wxh", "Whh", "bh", "Why", "by")


def plan_for(P, N, T, dropout=False, threads=None, precision="float32", way=None):
    """The dispatch.Plan for calls on N sequences of T steps of the model P (with dropout masks if `dropout`), on
    `threads` threads (None: numba's current count), with bf16 recurrent products if precision is "bf16" and the
    CPU and shape allow it (`plan`); `way`: the candidate a run recorded (Plan.way), taken without choosing."""
    threads = thread_count() if threads is None else threads
    return plan(P.cell.name, P.layers, N, T, P.hidden_size, P["by"].shape[0], dropout, threads, P["Whh"].dtype,
                precision=precision, way=way)


def plan(cell, layers, N, T, H, V, dropout, threads, dtype, *, measure=None, precision="float32", way=None):
    """The dispatch.Plan of a shape on this machine: dispatch.plan handed the measured answer (calibrate.measured:
    the shape's candidates timed once per machine, then cached) unless `measure` is False (None: unless
    FASTRNN_CALIBRATE=0) or `way` names the candidate to take (nothing is measured then)."""
    if measure is None:
        measure = calibrate.enabled()
    answer = calibrate.measured(cell, int(layers), int(N), int(T), int(H), int(V), bool(dropout),
                                max(1, int(threads)), np.dtype(dtype).name, training_step) \
        if measure and way is None else None
    return dispatch.plan(cell, layers, N, T, H, V, dropout, threads, dtype, measured=answer, precision=precision,
                         way=way)


def training_step(p):
    """A function running one training step (forward_backward) of a random model of plan p's shape, as p says:
    what calibrate times."""
    rng = np.random.default_rng(0)
    layout = model_layout(p.cell, p.V, p.H, p.layers)
    P = layout.views(layout.init(rng, p.dtype, 1.0 / np.sqrt(p.H)))
    G = layout.views(layout.zeros(p.dtype))
    x, y = (rng.integers(0, p.V, size=(p.N, p.T)).astype(np.int32) for _ in range(2))
    h0 = np.zeros((p.N, state_size(p.cell, p.H, p.layers)), p.dtype)
    masks = make_masks(rng, 0.5 if p.dropout else 0.0, p.layers, p.T, p.N, p.H, p.dtype)
    return lambda: forward_backward(P, G, x, y, h0, masks, plan=p)


def _check(plan, P, N, T, masks):
    """The plan made for the call's shape and model (cheap: this runs every step)."""
    H = P.hidden_size
    shape = (N, T, H, P["by"].shape[0], masks is not None, P["Whh"].dtype.name, P.cell.name, P.layers)
    if (plan.N, plan.T, plan.H, plan.V, plan.dropout, plan.dtype, plan.cell, plan.layers) != shape:
        raise ValueError(f"the plan ({plan.cell} x {plan.layers}, N={plan.N} T={plan.T} H={plan.H}) was made for "
                         f"another shape than this call's (N={N} T={T} H={H})")


def _plan(P, x, masks, plan):
    N, T = np.shape(x)
    if plan is None:
        return plan_for(P, N, T, masks is not None)
    _check(plan, P, N, T, masks)
    return plan


def _fused_workspace(T, N, H, V, dtype):
    def build():
        return dict(hs=np.empty((T + 1, N, H), dtype),  # (T+1, N, H)
                    logits=np.empty((T * N, V), dtype),  # (T*N, V)
                    dz=np.empty((T, N, H), dtype),  # (T, N, H)
                    tmp=np.empty((N, H), dtype),  # (N, H)
                    acc=np.empty(max(H, V), np.float64),  # (max(H, V),)
                    rowloss=np.empty(T * N, np.float64))  # (T*N,)

    return scratch.cached(("fused", T, N, H, V, np.dtype(dtype).str), build)


def _fused_args(P, x, y, h0):
    """The fused kernels' arguments: (dtype, parameters, tokens x and y, the workspace with hs[0] = h0)."""
    dtype = P["Whh"].dtype
    params = [np.ascontiguousarray(P[k], dtype=dtype) for k in RNN_NAMES]
    x, y = np.ascontiguousarray(x, dtype=np.int32), np.ascontiguousarray(y, dtype=np.int32)
    N, T = x.shape
    V, H = params[0].shape
    ws = _fused_workspace(T, N, H, V, dtype)
    ws["hs"][0] = h0
    return dtype, params, x, y, ws


def forward_backward(P, G, x, y, h0, masks=None, plan=None, clock=None):
    """Loss and gradients of the language model on one minibatch (see fastrnn.reference).

    P: dict of parameter arrays; G: dict of gradient arrays of the same shapes, overwritten. x, y: (N, T) int
    inputs and targets; h0: (N, S) carried state; masks: (L, T, N, H) dropout masks or None; plan: the
    dispatch.Plan for this shape (None: made here). clock: a dict that receives the seconds of each phase (see
    profile_step), or None. Returns (loss, new state (N, S) new array).
    """
    plan = _plan(P, x, masks, plan)
    if plan.path == "layers":
        return stack.forward_backward(P, G, x, y, h0, masks, plan, clock)
    t0 = time.perf_counter()
    dtype, params, x, y, ws = _fused_args(P, x, y, h0)
    N, T = x.shape
    grads = Grads(G, RNN_NAMES, dtype)
    loss = lm.lm_forward_backward(*grads.direct, ws["hs"], ws["logits"], ws["dz"], ws["tmp"], ws["acc"],
                                  ws["rowloss"], x, y, *params, dtype.type(1.0 / (T * N)), plan.loops)
    grads.copy_back()
    if clock is not None:
        clock["forward_backward"] = time.perf_counter() - t0
    return float(loss), ws["hs"][T].copy()


def forward_loss(P, x, y, h0, masks=None, plan=None):
    """Loss only (evaluation): returns (loss, new state)."""
    plan = _plan(P, x, masks, plan)
    if plan.path == "layers":
        return stack.forward_loss(P, x, y, h0, masks, plan)
    dtype, params, x, y, ws = _fused_args(P, x, y, h0)
    N, T = x.shape
    loss = lm.lm_forward_loss(ws["hs"], ws["logits"], ws["tmp"], ws["rowloss"], x, y, *params,
                              dtype.type(1.0 / (T * N)), plan.loops)
    return float(loss), ws["hs"][T].copy()


def profile_step(P, G, x, y, h0, masks=None, plan=None):
    """forward_backward as training runs it, timed by phase: returns (loss, new state, {phase: seconds}). The
    phases are those the plan's path has: forward, output and backward layer by layer, or forward_backward as
    one call on the fused path."""
    clock = {}
    loss, state = forward_backward(P, G, x, y, h0, masks, plan, clock)
    return loss, state, clock


def step(P, h, token, plan=None):
    """One generation step: h: (N, S), token: (N,) int. Returns (new state (N, S), logits: (N, V))."""
    token = np.ascontiguousarray(token, dtype=np.int32).reshape(-1)
    N = np.shape(h)[0]
    if token.shape[0] != N:
        raise ValueError(f"step: {token.shape[0]} tokens for {N} states")
    plan = _plan(P, token.reshape(N, 1), None, plan)
    if plan.path == "layers":
        return stack.step(P, np.asarray(h), token, plan)
    dtype = P["Whh"].dtype
    Wxh, Whh, bh, Why, by = (np.ascontiguousarray(P[k], dtype=dtype) for k in RNN_NAMES)
    h = np.ascontiguousarray(h, dtype=dtype)
    H, V = h.shape[1], by.shape[0]
    if N and (token.min() < 0 or token.max() >= V):
        raise IndexError("token id out of range of the vocabulary")
    h_new = np.empty((N, H), dtype)  # (N, H)
    logits = np.empty((N, V), dtype)  # (N, V)
    lm.lm_step(h_new, logits, h, token, Wxh, Whh, bh, Why, by)
    return h_new, logits


# ---------------------------------------------------------------------------------------------------------------
# generation


def sample_params(P):
    """The arguments Wx0, Wxp, Whp, bh (tuples over the layers), Whyp, by, cell (kernels.sample.Streams: the
    cell's kernel and each layer's extras) of sample_streams: the matrices it multiplies packed into tile panels
    once (tiles.pack)."""
    from fastrnn.kernels.sample import Streams
    from fastrnn.kernels.tiles import no_pack, pack

    cell, L = P.cell, P.layers
    if cell.numba.sample_streams is None:
        from fastrnn.errors import ConfigError

        raise ConfigError(f"the {cell.name} cell has no numba generation kernel: generate with --backend numpy")
    names = [cell.layer_names(l) for l in range(L)]
    Wx0 = np.ascontiguousarray(P[names[0][0]])
    Wxp = tuple(no_pack(Wx0) if l == 0 else pack(np.ascontiguousarray(P[n[0]])) for l, n in enumerate(names))
    Whp = tuple(pack(np.ascontiguousarray(P[n[1]])) for n in names)
    bh = tuple(np.ascontiguousarray(P[n[2]]) for n in names)
    extras = tuple(np.ascontiguousarray(cell.numba.sample_extras(tuple(P[k] for k in n)), dtype=Wx0.dtype)
                   for n in names)
    streams = Streams(cell.numba.sample_streams, extras)
    return Wx0, Wxp, Whp, bh, pack(np.ascontiguousarray(P["Why"])), np.ascontiguousarray(P["by"]), streams


def stream_weights(P):
    """What advance_streams reads of the model, prepared once (sample_params: the products' tile panels)."""
    return sample_params(P)


def advance_streams(P, h, logits, n, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rngs=None, threads=None,
                    weights=None):
    """Generate the next n tokens of B streams: a (B, n) int32 array. h: (B, S) C-contiguous and logits: (B, V),
    the streams' states and next-character logits, are updated in place; stream b draws n uniform numbers from
    rngs[b] (one per character). temperature, top_k, top_p: one value for all the streams, or (B,) values, one
    per stream. `weights`: stream_weights(P), if the caller keeps it across calls. A stream's tokens depend only
    on its own state, options and generator, so streams may join and leave between calls."""
    from fastrnn.kernels.sample import sample_streams

    B = np.shape(h)[0]
    rngs = list(rngs) if rngs is not None else [np.random.default_rng() for _ in range(B)]
    if len(rngs) != B:
        raise ValueError(f"advance_streams: {len(rngs)} generators for {B} streams")
    if not (h.flags.c_contiguous and logits.flags.c_contiguous):
        raise ValueError("advance_streams: h and logits must be C-contiguous (they are updated in place)")
    state = h.reshape(B, P.layers, -1, P.hidden_size)  # a view: sample_streams updates h
    groups = min(B, thread_count() if threads is None else max(1, int(threads)))
    uniforms = np.zeros((B, n)) if greedy else np.stack([g.random(n) for g in rngs]).reshape(B, n)
    block = np.empty((B, n), dtype=np.int32)
    options = [per_stream(v, B, dtype, name) for v, dtype, name in
               ((temperature, np.float64, "temperature"), (top_k, np.int64, "top_k"), (top_p, np.float64, "top_p"))]
    sample_streams(block, state, logits, uniforms, *(weights or sample_params(P)), *options, bool(greedy),
                   max(1, groups))
    return block


def per_stream(value, B, dtype, name):
    """(B,) array of `dtype`: a sampling option given once for all B streams, or as B values."""
    a = np.asarray(value, dtype=dtype)
    if a.ndim == 0:
        return np.full(B, a, dtype=dtype)
    if a.shape != (B,):
        raise ValueError(f"advance_streams: {name} has {a.size} values for {B} streams")
    return np.ascontiguousarray(a)


def generate_streams(P, h, logits, length, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rngs=None,
                     chunk=64, threads=None):
    """Yield (B, n) arrays of sampled token ids, `length` per stream in all, from the states h: (B, S) and their
    logits: (B, V) (after the prime); stream b draws its uniform numbers from rngs[b] (one per character, as
    fastrnn.reference.generate_streams). The streams run on up to `threads` threads (default: numba's count), in
    runs of `chunk` characters per kernel call (advance_streams); stream b's tokens are those it gets alone."""
    B = np.shape(h)[0]
    rngs = list(rngs) if rngs is not None else [np.random.default_rng() for _ in range(B)]
    h, logits = np.array(h, order="C"), np.array(logits, order="C")  # copies: updated in place
    weights = stream_weights(P)
    done = 0
    while done < length:
        n = min(chunk, length - done)
        yield advance_streams(P, h, logits, n, temperature, top_k, top_p, greedy, rngs, threads, weights)
        done += n


def generate(P, h, logits, length, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rng=None, chunk=64):
    """Yield `length` sampled token ids from the state h: (1, S) and its logits: (1, V) (after the prime), any
    model, runs of `chunk` characters per kernel call; the same draws and the same use of rng (one uniform number
    per character) as fastrnn.reference.generate."""
    rng = rng if rng is not None else np.random.default_rng()
    for block in generate_streams(P, h, logits, length, temperature, top_k, top_p, greedy, [rng], chunk, 1):
        yield from block[0].tolist()


# ---------------------------------------------------------------------------------------------------------------
# clipping and optimizers over the flat buffers (kernels/optim.py)


def clip_gradients(g, clip, max_norm):
    """Global-norm scaling (if max_norm > 0) then elementwise clipping to [-clip, clip] (if clip > 0), in place.

    Returns the global norm before clipping (float64 sum of squares).
    """
    return float(optim.clip_serial(g, float(clip), float(max_norm)))


def sgd_update(p, g, vel, lr, momentum):
    """SGD with (heavy-ball) momentum: vel = momentum * vel - lr * g; p += vel."""
    optim.sgd_serial(p, g, vel, float(lr), float(momentum))


def adagrad_update(p, g, mem, lr, eps):
    """Adagrad as min-char-rnn: mem += g^2; p -= lr * g / sqrt(mem + eps)."""
    optim.adagrad_serial(p, g, mem, float(lr), float(eps))


def rmsprop_update(p, g, ms, lr, decay, eps):
    """RMSprop as char-rnn: ms = decay * ms + (1 - decay) * g^2; p -= lr * g / (sqrt(ms) + eps)."""
    optim.rmsprop_serial(p, g, ms, float(lr), float(decay), 1.0 - decay, float(eps))


def adam_update(p, g, m, v, lr, beta1, beta2, eps, t):
    """Adam (Kingma & Ba) with bias correction; t is the 1-based step number."""
    optim.adam_serial(
        p, g, m, v, float(lr), float(beta1), 1.0 - beta1, float(beta2), 1.0 - beta2, 1.0 / (1.0 - beta1 ** t),
        1.0 / (1.0 - beta2 ** t), float(eps))
